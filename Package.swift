// swift-tools-version: 6.0
import PackageDescription

// Dependencies point one way:
//   executables -> VMM / VMConfig / Control -> Devices, Storage, Boot, KVM, X86Emulator
//   -> Hypervisor -> GuestMemory.   Only KVM (and VMDCore) see CKVM's KVM part; X86Emulator uses only its host atomics (chostatomics.h).  Devices never import KVM.
let package = Package(
    name: "swiftvmm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vmm", targets: ["VMMTool"]),
        .executable(name: "vmd", targets: ["VMDTool"]),
        .executable(name: "vmctl", targets: ["VMCTLTool"]),
        .executable(name: "kvm-exit-bench", targets: ["KVMExitBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C for KVM: <linux/kvm.h> constants, ioctl shims, eventfd.
        .target(name: "CKVM"),
        // C for the software CPU: host atomics on raw guest-RAM pointers (LOCK-prefixed
        // read-modify-writes, page-table A/D bits), which Synchronization cannot do.
        .target(name: "GuestMemory"),
        .target(name: "Hypervisor", dependencies: ["GuestMemory"]),
        .target(name: "KVM", dependencies: ["CKVM", "Hypervisor", "GuestMemory"]),
        // Benchmark 8(a): exits/s through the KVM layer (bench/kvm-exits.sh).
        .executableTarget(name: "KVMExitBench", dependencies: ["KVM", "Hypervisor", "GuestMemory"]),
        // The software CPU is optimized even in debug builds: an unoptimized interpreter is too
        // slow to boot Linux in the test suite (see docs/emulator.md).
        .target(name: "X86Emulator", dependencies: ["Hypervisor", "GuestMemory", "CKVM"],
                swiftSettings: [.unsafeFlags(["-O", "-enforce-exclusivity=unchecked", "-wmo", "-num-threads", "2"])]),
        // Benchmark driver for bench/emulator-callgrind.sh (a fixed guest loop, no threads).
        .executableTarget(name: "EmulatorBench", dependencies: ["X86Emulator", "Hypervisor", "GuestMemory"]),
        // System zlib (zlib1g-dev) through a module map only: inflates compressed qcow2 clusters
        // (Storage) and checksums the state stream's sections (VMM).
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .target(name: "Storage", dependencies: ["CZlib"]),
        // Test helper: writes to a qcow2 image until killed (crash-consistency test).
        .executableTarget(name: "StorageCrashWriter", dependencies: ["Storage"]),
        // Benchmark driver for bench/storage-qcow2.sh.
        .executableTarget(name: "StorageBench", dependencies: ["Storage"]),
        .target(name: "Devices", dependencies: [
            "GuestMemory", "Hypervisor", "Storage", .product(name: "Logging", package: "swift-log"),
        ]),
        // Host networking (docs/networking.md): taps, and links, bridges, VRFs and addresses
        // through rtnetlink. Pure system calls, no guest code.
        .target(name: "HostNet"),
        // Services inside a VM's network path (local interfaces' DHCP): pure packet code plus
        // the backend that puts them between the virtio-net device and the tap.
        .target(name: "LocalNet", dependencies: ["Devices"]),
        .target(name: "Boot", dependencies: ["GuestMemory", "Hypervisor"]),
        .target(name: "VMConfig"),
        .target(name: "Control", dependencies: ["VMConfig"]),
        .target(name: "VMM", dependencies: [
            "KVM", "X86Emulator", "Hypervisor", "GuestMemory", "Devices", "Storage", "Boot", "LocalNet", "HostNet",
            "CZlib",     // crc32 for the state stream's section checksums
            "Control",   // UnixSocket, for the vsock's host sockets
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "VMMTool", dependencies: [
            "VMM", "X86Emulator", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // vmd's logic as a library (docs/vmd.md): file access as a VM's owner, ...
        .target(name: "VMDCore", dependencies: ["CKVM", "Storage", "VMConfig", "Control"]),
        .executableTarget(name: "VMDTool", dependencies: [
            "VMM", "VMConfig", "Control", "Storage", "VMDCore", "LocalNet", "HostNet",
            "X86Emulator",   // X86CPULevel, for vm.conf's cpu-level
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "VMCTLTool", dependencies: [
            "Control", "VMConfig", "Storage",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "GuestMemory", "Hypervisor", "Storage", "HostNet"]),
        .testTarget(name: "HostNetTests", dependencies: ["HostNet"]),
        .testTarget(name: "LocalNetTests", dependencies: ["LocalNet", "Devices", "HostNet"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "GuestMemory", "Hypervisor"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "Hypervisor", "GuestMemory"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "StorageCrashWriter"]),
        .testTarget(name: "VMConfigTests", dependencies: ["VMConfig"],
                    resources: [.copy("Golden")]),
        .testTarget(name: "ControlTests", dependencies: ["Control", "VMConfig"]),
        // Runs the built vmd and vmctl binaries (stand-in guests; real guests when /dev/kvm works).
        .testTarget(name: "VMDTests", dependencies: ["Control", "VMConfig", "VMDCore", "Storage", "CKVM"]),
        // vmd's rules in-process: no processes, no sleeps.
        .testTarget(name: "VMDCoreTests", dependencies: ["VMDCore", "VMConfig", "Control"]),
        .testTarget(name: "X86EmulatorTests", dependencies: ["X86Emulator", "Hypervisor", "GuestMemory", "Devices", "Boot"]),
        .testTarget(name: "VMMTests", dependencies: [
            "VMM", "VMMTool", "X86Emulator", "Devices", "Hypervisor", "GuestMemory", "Boot", "Storage", "KVM",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "IntegrationTests", dependencies: ["VMM", "VMMTool", "Boot", "Hypervisor", "GuestMemory", "Devices", "HostNet", "Control"]),
    ],
    swiftLanguageModes: [.v6]
)

import Testing
import Foundation
import GuestMemory
import Hypervisor
import KVM

/// Builds the freestanding guests in guests/ (make) and runs the ones that need no
/// firmware tables straight on the KVM layer, with a minimal exit handler: COM1 output,
/// the debug-exit port, and all-ones for anything else. The VMM's integration tests run
/// every guest through the whole machine.
@Suite("Test guests on the KVM layer", .enabled(if: kvmUsable, "needs a usable /dev/kvm"))
struct GuestKernelTests {
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs `make` in guests/ once per process; returns the build directory.
    static let buildDirectory: Result<URL, GuestBuildError> = {
        let guests = repoRoot.appendingPathComponent("guests")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/make")
        p.arguments = ["-s", "-C", guests.path]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return .failure(GuestBuildError(message: "cannot run make: \(error)")) }
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            return .failure(GuestBuildError(message: "make -C guests failed:\n" + String(decoding: out, as: UTF8.self)))
        }
        return .success(guests.appendingPathComponent("build"))
    }()

    struct GuestBuildError: Error, CustomStringConvertible { let message: String; var description: String { message } }

    struct Outcome { var console = ""; var debugExit: UInt32?; var end = "" }

    /// Loads an ELF's PT_LOAD segments (both classes); returns the entry point.
    static func loadELF(_ bytes: [UInt8], into memory: GuestMemory) throws -> UInt64 {
        func u16(_ o: Int) -> UInt64 { UInt64(bytes[o]) | UInt64(bytes[o + 1]) << 8 }
        func u32(_ o: Int) -> UInt64 { u16(o) | u16(o + 2) << 16 }
        func u64(_ o: Int) -> UInt64 { u32(o) | u32(o + 4) << 32 }
        guard bytes.count > 64, bytes[0..<4] == [0x7F, 0x45, 0x4C, 0x46] else { throw GuestBuildError(message: "not ELF") }
        let is64 = bytes[4] == 2
        let entry = is64 ? u64(24) : u32(24)
        let phoff = Int(is64 ? u64(32) : u32(28))
        let phentsize = Int(u16(is64 ? 54 : 42)), phnum = Int(u16(is64 ? 56 : 44))
        for i in 0..<phnum {
            let ph = phoff + i * phentsize
            guard u32(ph) == 1 else { continue }  // PT_LOAD
            let off = Int(is64 ? u64(ph + 8) : u32(ph + 4))
            let paddr = is64 ? u64(ph + 24) : u32(ph + 12)
            let filesz = Int(is64 ? u64(ph + 32) : u32(ph + 16))
            let memsz = Int(is64 ? u64(ph + 40) : u32(ph + 20))
            try memory.fill(0, at: paddr, length: memsz)
            try memory.write(bytes: Array(bytes[off..<(off + filesz)]), at: paddr)
        }
        return entry
    }

    func run(_ name: String) throws -> Outcome {
        let dir = try Self.buildDirectory.get()
        let elf = try [UInt8](Data(contentsOf: dir.appendingPathComponent("\(name).elf")))
        let m = try TestMachine(ram: 16 << 20)
        let entry = try Self.loadELF(elf, into: m.memory)
        // A PVH start_info at 0x6000 with a command line at 0x6100.
        try m.memory.write(UInt32(0x336E_C578), at: 0x6000)
        try m.memory.write(UInt32(1), at: 0x6004)
        try m.memory.write(UInt64(0x6100), at: 0x6018)
        try m.memory.write(bytes: Array("kvm-layer-test".utf8) + [0], at: 0x6100)
        let vcpu = try m.vm.makeVCPU(index: 0)
        var state = try m.protectedModeState(entry: entry)
        state.regs.rbx = 0x6000
        try vcpu.setState(state)

        var outcome = Outcome()
        var bytes: [UInt8] = []
        let deadline = Date().addingTimeInterval(20)
        loop: for _ in 0..<2_000_000 {
            let exit = try vcpu.run()
            switch exit {
            case let .io(io):
                if io.isWrite {
                    if io.port == 0x3F8 {
                        for i in 0..<io.count { bytes.append(io.data.load(fromByteOffset: i * io.size, as: UInt8.self)) }
                    } else if io.port == 0xF4 {
                        outcome.debugExit = UInt32(io.data.load(as: UInt8.self))
                        outcome.end = "debug-exit"
                        break loop
                    } else if io.port == 0x64 && io.data.load(as: UInt8.self) == 0xFE {
                        outcome.end = "reset"
                        break loop
                    }
                } else {
                    let value: UInt8 = io.port == 0x3FD ? 0x60 : (io.port == 0x64 ? 0 : 0xFF)
                    for i in 0..<(io.size * io.count) { io.data.storeBytes(of: value, toByteOffset: i, as: UInt8.self) }
                }
            case let .mmio(mmio):
                if !mmio.isWrite { for i in 0..<mmio.size { mmio.data.storeBytes(of: 0xFF, toByteOffset: i, as: UInt8.self) } }
            case .interrupted:
                continue
            case let .shutdown(reason):
                outcome.end = "shutdown: \(reason)"
                break loop
            default:
                outcome.end = "\(exit)"
                break loop
            }
            if Date() > deadline { outcome.end = "timeout"; break }
        }
        outcome.console = String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\r\n", with: "\n")
        return outcome
    }

    @Test("guests/longmode.elf: enters long mode itself, port I/O, string I/O, LAPIC/IOAPIC MMIO")
    func longMode() throws {
        let o = try run("longmode")
        #expect(o.end == "debug-exit", "\(o.end)\n\(o.console)")
        #expect(o.debugExit == 0, "\(o.console)")
        #expect(o.console.contains("longmode: hello from 64-bit long mode"))
        #expect(o.console.contains("cmdline: \"kvm-layer-test\""))
        #expect(o.console.contains("cpuid: hypervisor \"SwiftVMM-KVM\""))
        #expect(o.console.contains("string I/O: rep outsb reached the console"))
        #expect(o.console.contains("SUMMARY: 8 tests, 0 failures"), "\(o.console)")
        #expect(!o.console.contains("FAIL"), "\(o.console)")
    }

    @Test("guests/i386.elf: 32-bit protected mode with PIT interrupts through the PIC")
    func i386() throws {
        let o = try run("i386")
        #expect(o.end == "debug-exit", "\(o.end)\n\(o.console)")
        #expect(o.debugExit == 0, "\(o.console)")
        #expect(o.console.contains("PASS: PIT: "), "\(o.console)")
    }

    @Test("guests/triplefault.elf ends in a shutdown exit, guests/reset.elf pulses the reset line")
    func faults() throws {
        let t = try run("triplefault")
        #expect(t.console.contains("about to triple-fault"))
        #expect(t.end.hasPrefix("shutdown: the guest triple-faulted"), "\(t.end)")
        let r = try run("reset")
        #expect(r.end == "reset", "\(r.end)")
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Boot
import Devices
import GuestMemory
import Hypervisor
import KVM
import X86Emulator
import Logging

/// One virtual machine built from a `MachineConfig`: guest RAM, the backend (KVM or the
/// software CPU), the buses with every device (`MachineMap`), the loaded kernel, one
/// thread per vCPU, the console. Lifecycle: `init` (build, load) → `start()` →
/// `pause()`/`resume()` any number of times → `stop(_:)` or a guest event → `wait()`.
public final class Machine: @unchecked Sendable {
    public typealias BackendFactory = @Sendable (GuestMemory, MachineConfig, AcceleratorChoice) throws -> any VirtualMachineBackend

    public let config: MachineConfig
    public let kernelKind: KernelKind
    public let accelerator: AcceleratorChoice
    public let memory: GuestMemory
    public let backend: any VirtualMachineBackend
    public let bus = IOBus()
    public let deviceLock = DeviceLock()
    /// The device side of pause: every device thread's work passes it (QuiesceGate.swift).
    public let quiesceGate = QuiesceGate()
    public let events = MachineEvents()
    public let console: Console
    public let devices: MachineDevices
    /// The virtio functions (rng, disks, console) on the PCI host: MachineVirtio.swift.
    public let virtio: VirtioMachineSet
    /// KVM only: the event thread serving virtio notifies through ioeventfds, and the
    /// irqfd-based MSI path (VirtioEventLoop.swift); nil on other backends or when unavailable.
    public let virtioEventLoop: VirtioEventLoop?
    public let msiRouter: MSIRouter?
    /// The thread moving host frames into the virtio-net receive queues (nil without
    /// network interfaces): MachineNet.swift.
    public let networkPump: VirtioNetPump?
    /// The thread serving the vsock's host socket (nil without `--vsock`): VsockHost.swift.
    public let vsockPump: VsockHostPump?
    public let handler: ExitHandler
    public let runner: MachineRunner
    /// Where the loader put the kernel, initrd and firmware tables (nil for a firmware boot).
    public let bootResult: BootResult?
    private let log: Logger
    private var rtcTimer: DeviceTimer?
    /// The software CPU's interrupt glue (nil on KVM): MachineEmulator.swift.
    let emulatorGlue: EmulatorMachineGlue?

    /// The console's pty path when the console is `.pty`.
    public var consolePath: String? { console.path }

    public init(config: MachineConfig, log: Logger = Logger(label: "vmm"),
                host: HostCapabilities? = nil, backendFactory: BackendFactory? = nil) throws {
        self.config = config
        self.log = log
        try config.validateSettings()

        var image: KernelImage?
        var firmwareImage: FirmwareImage?
        if config.restoringKernelKind != nil {
            // Restoring: the stream holds RAM as the kernel left it; nothing to read.
        } else if config.bootsFirmware {
            firmwareImage = try FirmwareImage(path: config.firmwarePath ?? FirmwareImage.defaultPath)
        } else { do {
            if let passed = config.passedFiles {
                guard let kernelFD = passed.kernel else {
                    throw VMMError.machine("the files passed to the machine do not match its configuration")
                }
                image = try KernelImage(bytes: readAllAndClose(fd: kernelFD, path: config.kernelPath,
                                                               check: { [path = config.kernelPath] in try KernelImage.checkHead($0, path: path) },
                                                               unreadable: VMMError.kernelUnreadable),
                                        path: config.kernelPath)
            } else {
                image = try KernelImage(path: config.kernelPath)
            }
        } catch let BootError.unreadableFile(path, reason) {
            throw VMMError.kernelUnreadable(path: path, reason: reason == "not a regular file" ? "it is not a regular file" : reason)
        } catch BootError.notAKernel {
            throw VMMError.notAKernel(path: config.kernelPath)
        } }
        let kind = config.restoringKernelKind ?? image.map { KernelKind($0.format, isLinux: $0.isLinux) } ?? .firmware
        kernelKind = kind
        let restoring = config.restoringKernelKind != nil
        if let passed = config.passedFiles {
            // A restored machine reads no kernel or initrd: none may be passed.
            let initrdMatches = restoring ? passed.initrd == nil && passed.kernel == nil
                                          : (passed.initrd == nil) == (config.initrdPath == nil)
            guard passed.disks.count == config.diskPaths.count, initrdMatches,
                  (passed.cdrom == nil) == (config.cdromPath == nil) else {
                throw VMMError.machine("the files passed to the machine do not match its configuration")
            }
        } else {
            if !restoring, let initrd = config.initrdPath {
                _ = try readHead(path: initrd, count: 1, unreadable: VMMError.initrdUnreadable)
            }
            for disk in config.diskPaths {
                _ = try readHead(path: disk, count: 1, unreadable: VMMError.diskUnreadable)
            }
        }
        if let cdrom = config.cdromPath {
            guard config.bootsFirmware else {
                throw VMMError.unsupported("a CD-ROM (-r) is booted by the firmware; it cannot be combined with a kernel (-k)")
            }
            try Machine.checkISO(path: cdrom, fd: config.passedFiles?.cdrom)
        }

        try config.vsock?.checkHostPath()

        let hostCaps = host ?? HostCapabilities.probe(emulatorAvailable: Machine.emulatorAvailable)
        accelerator = try AcceleratorChoice.choose(requested: config.accelerator, kernel: kind, host: hostCaps)
        log.info("accelerator \(accelerator.backend.rawValue): \(accelerator.reason)")
        if accelerator.backend == .emulator {
            let level = config.cpuLevel ?? .default
            guard level.runsOnThisHost else {
                throw VMMError.machine("cpu-level \(level) needs a host CPU with AVX2, FMA and F16C (the software CPU runs their float operations on the host)")
            }
            log.info("software CPU level \(level)")
        } else if let level = config.cpuLevel {
            log.warning("--cpu-level \(level) applies to the software CPU only; under KVM the guest sees the CPUID KVM offers")
        }

        memory = try GuestMemory(layout: firmwareImage?.memoryLayout(ramSize: config.memorySize)
                                 ?? PhysicalMap.ramLayout(ramSize: config.memorySize))
        backend = try (backendFactory ?? Machine.defaultBackend)(memory, config, accelerator)
        console = try Console(sink: config.console)
        let emulatorVM = backend as? EmulatorVirtualMachine
        let guestMemory = memory
        devices = try MachineMap.build(bus: bus, interrupts: backend.interrupts, events: events,
                                       console: console, memorySize: config.memorySize, vcpus: config.vcpus,
                                       userspaceIRQChip: emulatorVM.map { _ in UserspaceIRQChip() },
                                       firmware: firmwareImage.map { _ in FirmwareConfig(memory: guestMemory) },
                                       firmwareLog: log.logLevel <= .debug ? { [log] in log.debug("firmware: \($0)") } : nil)
        let fast = Machine.virtioFastPaths(backend: backend, gate: quiesceGate, log: log)
        msiRouter = fast.router
        virtioEventLoop = fast.loop
        virtio = try Machine.attachVirtio(config: config, host: devices.pciHost, memory: memory,
                                          interrupts: fast.router ?? backend.interrupts, console: console, log: log)
        fast.loop?.attach(virtio.all)
        networkPump = virtio.networks.isEmpty ? nil
            : try VirtioNetPump(models: virtio.networkModels, devices: virtio.networks, gate: quiesceGate, log: log)
        if let model = virtio.vsockModel, let device = virtio.vsock, let vsock = config.vsock {
            vsockPump = try VsockHostPump(model: model, device: device, path: vsock.path, gate: quiesceGate, log: log)
            log.info("virtio-vsock: guest CID \(vsock.guestCID), host socket \(vsock.path)")
        } else {
            vsockPump = nil
        }
        if let firmwareImage, let fwcfg = devices.firmwareConfig {
            let diskSlots = virtio.blocks.indices.map { VirtioMachineSet.firstDiskSlot + $0 }
            // -B net: the first local interface with a boot file boots through iPXE's ROM.
            let netIndex = config.bootDevice == .net ? config.networkInterfaces.firstIndex { $0.local?.netBoot != nil } : nil
            try FirmwareSetup.populate(fwcfg, ramSize: config.memorySize, vcpus: config.vcpus,
                                       pciRoutes: devices.pciRoutes,
                                       bootOrder: FirmwareSetup.bootOrder(diskSlots: diskSlots,
                                                                          cdromSlot: virtio.scsi.map { _ in VirtioMachineSet.cdromSlot },
                                                                          first: config.bootDevice,
                                                                          netSlot: netIndex.map { VirtioMachineSet.firstNetworkSlot + $0 }))
            if netIndex != nil {
                let path = config.netBootROMPath ?? FirmwareSetup.defaultNetBootROM
                let rom = try FirmwareSetup.optionROM(path: path)
                try fwcfg.addFile(FirmwareSetup.romFileName(vendor: VirtioPCIDevice.vendorID, device: 0x1040 + VirtioDeviceType.network.rawValue), rom)
                log.info("network boot: option ROM \(path) (\(rom.count) bytes) for virtio-net\(netIndex!)")
            }
            try firmwareImage.install(into: memory)
            bootResult = nil
            log.debug("firmware \(firmwareImage.path) (\(firmwareImage.bytes.count) bytes) at 0x\(String(firmwareImage.base, radix: 16))")
        } else if let image {
            let boot: BootResult
            let initrd = try config.initrdPath.map { path in
                if let fd = config.passedFiles?.initrd {
                    return try readAllAndClose(fd: fd, path: path, unreadable: VMMError.initrdUnreadable)
                }
                do { return try readFile(path) } catch let BootError.unreadableFile(p, reason) {
                    throw VMMError.initrdUnreadable(path: p, reason: reason)
                }
            }
            boot = try BootLoader.load(image: image, initrd: initrd, initrdPath: config.initrdPath,
                                       cmdline: Machine.effectiveCmdline(config.cmdline, kind: kind),
                                       memory: memory, vcpus: config.vcpus,
                                       pciRoutes: devices.pciRoutes)
            bootResult = boot
            log.debug("loaded \(image.format) kernel \(config.kernelPath), entry rip 0x\(String(boot.cpuState.regs.rip, radix: 16))")
        } else if restoring {
            bootResult = nil
        } else {
            throw VMMError.machine("no kernel and no firmware to boot")
        }
        // A firmware boot starts vCPU 0 at the reset vector (the backend's power-on state).
        let entry: X86CPUState? = bootResult?.cpuState

        var vcpus: [any VirtualCPU] = []
        for i in 0..<config.vcpus {
            vcpus.append(try backend.createVCPU(index: i, startState: i == 0 ? .runnable : .waitingForSIPI))
        }
        if let vm = emulatorVM, let chip = devices.irqChip {
            emulatorGlue = EmulatorMachineGlue(vm: vm, chip: chip)
        } else {
            emulatorGlue = nil
        }
        handler = ExitHandler(bus: bus, deviceLock: deviceLock, events: events)
        runner = MachineRunner(vcpus: vcpus, handler: handler, initialStates: entry.map { [0: $0] } ?? [:])
    }

    /// Whether this build has the software CPU backend.
    public static let emulatorAvailable = true

    static func defaultBackend(memory: GuestMemory, config: MachineConfig,
                               choice: AcceleratorChoice) throws -> any VirtualMachineBackend {
        switch choice.backend {
        case .kvm, .auto:
            do {
                let system = try KVMSystem()
                guard config.vcpus <= system.maxVCPUs else {
                    throw VMMError.invalidCPUCount(config.vcpus, maximum: min(system.maxVCPUs, MachineConfig.maximumVCPUs))
                }
                return try system.createVirtualMachine(
                    memory: memory, configuration: KVMVirtualMachine.Configuration(vcpuCount: config.vcpus))
            } catch let error as KVMError {
                if case .notAvailable = error { throw VMMError.kvmUnavailable(error.description.replacingPrefix("KVM is not available: ")) }
                throw VMMError.machine("cannot create the KVM virtual machine: \(error)")
            }
        case .emulator:
            return EmulatorMachineGlue.makeBackend(memory: memory, cpuLevel: config.cpuLevel ?? .default)
        }
    }

    /// A Linux kernel without a command line gets `console=ttyS0`, so its console is COM1.
    static func effectiveCmdline(_ cmdline: String, kind: KernelKind) -> String {
        cmdline.isEmpty && kind.isLinux ? "console=ttyS0" : cmdline
    }

    /// Starts the vCPU threads and the console input.
    public func start() throws {
        // vCPUs first: the guest's first instruction should not wait for helper threads.
        try runner.start()
        try virtioEventLoop?.start()
        try networkPump?.start()
        try vsockPump?.start()
        let lock = deviceLock, gate = quiesceGate, devices = self.devices, events = self.events
        // MachineDevices is @unchecked Sendable: its chips are touched only under the lock.
        // The same thread polls the PIT when it is ours (software CPU).
        let timer = try DeviceTimer(lock: lock, gate: gate, clock: .host, name: "rtc-timer",
                                    deadline: {
                                        let r = devices.rtc.nextDeadline(), p = devices.pit?.nextDeadline()
                                        guard let r else { return p }
                                        return p.map { min($0, r) } ?? r
                                    },
                                    fire: {
                                        let now = DeviceClock.host.monotonicNanoseconds()
                                        if let d = devices.rtc.nextDeadline(), d <= now { devices.rtc.poll() }
                                        if let pit = devices.pit, let d = pit.nextDeadline(), d <= now { pit.poll() }
                                    })
        rtcTimer = timer
        devices.rtcWritten.action = { [weak timer] in timer?.wake() }
        try console.startInput(deliver: { bytes in
            gate.pass { lock.withLock { devices.consoleInput(bytes) } }
        }, detach: {
            events.request(.stopped(reason: "console detached with Ctrl-]"))
        })
    }

    /// The consistent stop: parks every vCPU with its pending I/O completed, then closes
    /// the quiesce gate, so once this returns nothing touches guest memory or device state
    /// until `resume()` (docs/snapshot.md, "Pausing"). Call pause/resume from one control
    /// thread at a time.
    public func pause() {
        runner.pause()
        quiesceGate.close()
    }

    /// Undoes `pause()`: device threads first, then the vCPUs.
    public func resume() {
        quiesceGate.open()
        runner.resume()
    }

    public var state: MachineRunner.State { runner.state }

    /// Presses the ACPI power button (PM1_STS PWRBTN_STS, SCI on IRQ 9 when the guest
    /// enabled it): an ACPI guest shuts down, ending the run with `.poweredOff`. A guest
    /// that ignores the button keeps running; see `stop(reason:)` to force.
    public func pressPowerButton() {
        let pm = devices.acpiPM
        deviceLock.withLock { pm.pressPowerButton() }
    }

    /// Whether the guest enabled the power button's SCI (PM1_EN PWRBTN_EN): a hint that a
    /// press will be heard.
    public var powerButtonEnabled: Bool {
        let pm = devices.acpiPM
        return deviceLock.withLock { pm.enable & ACPIPMBlock.powerButtonEnable != 0 }
    }

    /// Asks the machine to stop (the first outcome requested wins).
    public func stop(reason: String) { runner.stop(.stopped(reason: reason)) }

    /// Waits for the machine to stop; returns how it ended. Stops the console input.
    public func wait() -> MachineOutcome {
        let outcome = runner.wait()
        // Paused or not, the device threads must reach their exits to be joined.
        quiesceGate.dissolve()
        console.close()
        rtcTimer?.stop()
        rtcTimer = nil
        virtioEventLoop?.stop()
        networkPump?.stop()
        vsockPump?.stop()
        return outcome
    }

    /// `start()` then `wait()`.
    public func run() throws -> MachineOutcome {
        try start()
        return wait()
    }
}

extension String {
    func replacingPrefix(_ prefix: String) -> String {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
    }
}

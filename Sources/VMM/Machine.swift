#if canImport(Glibc)
import Glibc
#endif
import Devices
import GuestMemory
import Hypervisor
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
    public let events = MachineEvents()
    public let console: Console
    public let devices: MachineDevices
    public let handler: ExitHandler
    public let runner: MachineRunner
    private let log: Logger

    /// The console's pty path when the console is `.pty`.
    public var consolePath: String? { console.path }

    public init(config: MachineConfig, log: Logger = Logger(label: "vmm"),
                host: HostCapabilities? = nil, backendFactory: BackendFactory? = nil) throws {
        self.config = config
        self.log = log
        try config.validateSettings()

        let head = try readHead(path: config.kernelPath, count: 8192, unreadable: VMMError.kernelUnreadable)
        guard let kind = KernelKind.identify(head) else { throw VMMError.notAKernel(path: config.kernelPath) }
        kernelKind = kind
        if let initrd = config.initrdPath {
            _ = try readHead(path: initrd, count: 1, unreadable: VMMError.initrdUnreadable)
        }
        for disk in config.diskPaths {
            _ = try readHead(path: disk, count: 1, unreadable: VMMError.diskUnreadable)
        }

        let hostCaps = host ?? HostCapabilities.probe(emulatorAvailable: Machine.emulatorAvailable)
        accelerator = try AcceleratorChoice.choose(requested: config.accelerator, kernel: kind, host: hostCaps)
        log.info("accelerator \(accelerator.backend.rawValue): \(accelerator.reason)")

        memory = try GuestMemory(layout: PhysicalMap.ramLayout(ramSize: config.memorySize))
        backend = try (backendFactory ?? Machine.defaultBackend)(memory, config, accelerator)
        console = try Console(sink: config.console)
        devices = try MachineMap.build(bus: bus, interrupts: backend.interrupts, events: events,
                                       console: console, memorySize: config.memorySize)
        let entry = try Machine.loadKernel(config: config, memory: memory)

        var vcpus: [any VirtualCPU] = []
        for i in 0..<config.vcpus {
            vcpus.append(try backend.createVCPU(index: i, startState: i == 0 ? .runnable : .waitingForSIPI))
        }
        handler = ExitHandler(bus: bus, deviceLock: deviceLock, events: events)
        runner = MachineRunner(vcpus: vcpus, handler: handler, initialStates: entry.map { [0: $0] } ?? [:])
    }

    /// Whether this build has the software CPU backend.
    public static let emulatorAvailable = false

    static func defaultBackend(memory: GuestMemory, config: MachineConfig,
                               choice: AcceleratorChoice) throws -> any VirtualMachineBackend {
        throw VMMError.acceleratorUnavailable("the \(choice.backend.rawValue) backend is not wired into this build yet")
    }

    static func loadKernel(config: MachineConfig, memory: GuestMemory) throws -> X86CPUState? {
        nil
    }

    /// Starts the vCPU threads and the console input.
    public func start() throws {
        let lock = deviceLock, devices = self.devices, events = self.events
        try console.startInput(deliver: { bytes in
            lock.withLock { devices.consoleInput?(bytes) }
        }, detach: {
            events.request(.stopped(reason: "console detached with Ctrl-]"))
        })
        try runner.start()
    }

    /// Parks every vCPU; returns when all are parked.
    public func pause() { runner.pause() }
    public func resume() { runner.resume() }
    public var state: MachineRunner.State { runner.state }

    /// Asks the machine to stop (the first outcome requested wins).
    public func stop(reason: String) { runner.stop(.stopped(reason: reason)) }

    /// Waits for the machine to stop; returns how it ended. Stops the console input.
    public func wait() -> MachineOutcome {
        let outcome = runner.wait()
        console.close()
        return outcome
    }

    /// `start()` then `wait()`.
    public func run() throws -> MachineOutcome {
        try start()
        return wait()
    }
}

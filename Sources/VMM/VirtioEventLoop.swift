#if canImport(Glibc)
import Glibc
#endif
import Devices
import Hypervisor
import KVM
import Logging
import Synchronization

/// The KVM fast paths for virtio (docs/virtio.md, "Threads, locks and the KVM fast paths"):
///
/// - **ioeventfd**: when a device's notify regions are (re)programmed (DRIVER_OK, reset), one
///   MMIO ioeventfd per queue notify address is registered (each queue has its own address,
///   notify_off_multiplier 4, so no datamatch) and stale ones are unregistered. The kernel
///   completes the guest's notify write without an exit to user space; this loop's thread
///   (a pthread blocked in poll(2) over the eventfds) reads the eventfd and calls `device.notify(queue:)`.
/// - **irqfd**: `MSIRouter` wraps the VM's interrupt controller; each distinct MSI
///   (address, data) the devices raise gets a KVM GSI route and an irqfd, and later raises
///   of the same message are an eventfd write. Reprogramming the MSI-X table produces a new
///   (address, data) pair, hence a new route; routes are capped and anything that fails
///   falls back to `signalMSI` (KVM_SIGNAL_MSI).
///
/// If a registration fails, the MMIO exit path (`barWrite`) still reaches the same code.
///
/// A notify runs one pass of at most a ring's worth of chains; when chains are left, the
/// device's `onMorePending` signals the queue's own eventfd, so a guest that keeps refilling
/// one queue gets one pass per poll round, interleaved with every other queue and with the
/// quiesce gate (pause), instead of holding this thread.
public final class VirtioEventLoop: @unchecked Sendable {
    private struct Entry {
        let device: VirtioPCIDevice
        let queue: Int
        let region: VirtioNotifyRegion
        let eventfd: EventFD
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]      // registration order -> registration
        var nextToken: UInt64 = 1
        var running = false
    }

    private let vm: KVMVirtualMachine
    private let log: Logger
    private let gate: QuiesceGate
    /// Wakes the thread to stop or to pick up changed registrations.
    private let wakeFD: EventFD
    private let state = Mutex(State())
    private var thread: HostThread?
    private let notifyCount = Atomic<UInt64>(0)
    private let registrationFailures = Atomic<UInt64>(0)

    /// Notifies delivered through an ioeventfd (i.e. without an MMIO exit to user space).
    public var notifiesViaEventFD: UInt64 { notifyCount.load(ordering: .relaxed) }
    /// ioeventfd registrations that failed (those queues keep using MMIO exits).
    public var failedRegistrations: UInt64 { registrationFailures.load(ordering: .relaxed) }
    /// How many ioeventfds are registered now.
    public var registeredNotifies: Int { state.withLock { $0.entries.count } }

    /// - gate: the machine's quiesce gate; each notify passes it (a paused machine's
    ///   notifies wait in their eventfds).
    public init(vm: KVMVirtualMachine, log: Logger, gate: QuiesceGate) throws {
        self.vm = vm
        self.log = log
        self.gate = gate
        do {
            wakeFD = try EventFD()
        } catch {
            throw VMMError.machine("cannot create the virtio event loop: \(error)")
        }
    }

    deinit {
        stop()
        for entry in state.withLock({ Array($0.entries.values) }) { unregister(entry) }
    }

    /// Hooks every device's notify-region changes to this loop (call before the guest runs).
    public func attach(_ devices: [VirtioPCIDevice]) {
        for device in devices {
            // Runs on a vCPU thread with the device lock held: takes only this loop's lock.
            device.onNotifyRegionsChanged = { [weak self, weak device] regions in
                guard let self, let device else { return }
                self.update(device: device, regions: regions)
            }
            // A pass that stopped at its budget (a ring's worth) continues in the next poll
            // round, after the other ready queues and through the gate again.
            device.onMorePending = { [weak self, weak device] queue in
                guard let self, let device else { return false }
                return self.requeue(device: device, queue: queue)
            }
        }
    }

    /// Signals the eventfd of `device`'s `queue`, if it has one; false otherwise.
    func requeue(device: VirtioPCIDevice, queue: Int) -> Bool {
        let entry = state.withLock { s in
            s.entries.values.first { $0.device === device && $0.queue == queue }
        }
        guard let entry else { return false }
        entry.eventfd.signal()
        return true
    }

    /// Makes the registrations for `device` match `regions`.
    func update(device: VirtioPCIDevice, regions: [VirtioNotifyRegion]) {
        state.withLock { s in
            let mine = s.entries.filter { $0.value.device === device }
            for (token, entry) in mine where !regions.contains(entry.region) {
                s.entries[token] = nil
                unregister(entry)
            }
            let kept = Set(s.entries.values.filter { $0.device === device }.map { $0.region.address })
            for region in regions where !kept.contains(region.address) {
                guard region.address < UInt64.max - 8 else { continue }
                do {
                    let efd = try EventFD()
                    try vm.registerIOEventFD(efd, space: .mmio, address: region.address, length: region.length)
                    let token = s.nextToken
                    s.nextToken += 1
                    s.entries[token] = Entry(device: device, queue: region.queue, region: region, eventfd: efd)
                } catch {
                    registrationFailures.add(1, ordering: .relaxed)
                    log.warning("\(device.pciName) queue \(region.queue): no ioeventfd at 0x\(String(region.address, radix: 16)) (MMIO exits are used): \(error)")
                }
            }
        }
        wakeFD.signal()
    }

    private func unregister(_ entry: Entry) {
        try? vm.unregisterIOEventFD(entry.eventfd, space: .mmio, address: entry.region.address, length: entry.region.length)
    }

    /// Starts the event thread.
    public func start() throws {
        let already = state.withLock { s -> Bool in
            defer { s.running = true }
            return s.running
        }
        guard !already else { return }
        thread = try HostThread(name: "virtio-events") { [self] in run() }
    }

    /// Stops and joins the event thread (idempotent).
    public func stop() {
        let wasRunning = state.withLock { s -> Bool in
            defer { s.running = false }
            return s.running
        }
        guard wasRunning else { return }
        wakeFD.signal()
        thread?.join()
        thread = nil
    }

    private func run() {
        while true {
            // The set of eventfds to wait on: rebuilt whenever wakeFD fires.
            let (running, entries) = state.withLock { s in
                (s.running, s.entries.sorted { $0.key < $1.key }.map { $0.value })
            }
            guard running else { return }
            var fds = [pollfd(fd: wakeFD.fd, events: Int16(POLLIN), revents: 0)]
            fds += entries.map { pollfd(fd: $0.eventfd.fd, events: Int16(POLLIN), revents: 0) }
            while true {
                // SAFETY: poll writes only the revents fields of the fds.count entries.
                let n = fds.withUnsafeMutableBufferPointer { buf in
                    poll(buf.baseAddress, nfds_t(buf.count), -1)
                }
                if n < 0 {
                    if errno == EINTR { continue }
                    log.error("virtio event loop: poll failed: \(String(cString: strerror(errno)))")
                    return
                }
                for (i, entry) in entries.enumerated() where fds[i + 1].revents & Int16(POLLIN) != 0 {
                    // An entry unregistered meanwhile has a drained, unregistered eventfd:
                    // consume() returns nil (non-blocking) and nothing happens.
                    guard let count = entry.eventfd.consume(), count > 0 else { continue }
                    notifyCount.add(1, ordering: .relaxed)
                    // Without this loop's lock: notify takes the device lock.
                    gate.pass { entry.device.notify(queue: entry.queue) }
                }
                if fds[0].revents != 0 {
                    _ = wakeFD.consume()
                    break
                }
            }
        }
    }
}

/// An `InterruptController` that sends MSIs through irqfds on KVM GSI routes (one route
/// per distinct (address, data) message, at most `maximumRoutes`), falling back to the
/// wrapped controller's `signalMSI` when a route or irqfd cannot be set up. INTx goes
/// straight to the wrapped controller.
public final class MSIRouter: InterruptController, @unchecked Sendable {
    public static let maximumRoutes = 64

    private struct Key: Hashable { let address: UInt64; let data: UInt32 }
    private enum Route { case irqfd(EventFD), fallback }

    private let vm: KVMVirtualMachine
    private let log: Logger
    private let routes = Mutex([Key: Route]())
    private let irqfdCount = Atomic<UInt64>(0)

    /// MSIs delivered by an irqfd write (rather than KVM_SIGNAL_MSI).
    public var interruptsViaIRQFD: UInt64 { irqfdCount.load(ordering: .relaxed) }

    public init(vm: KVMVirtualMachine, log: Logger) {
        self.vm = vm
        self.log = log
    }

    deinit {
        // The VM's routes and irqfds go away with the VM fd; nothing to undo here.
    }

    public func setIRQ(_ gsi: UInt32, level: Bool) { vm.setIRQ(gsi, level: level) }

    public func signalMSI(address: UInt64, data: UInt32) {
        let key = Key(address: address, data: data)
        let route = routes.withLock { table -> Route in
            if let r = table[key] { return r }
            guard table.count < Self.maximumRoutes else { return .fallback }
            let r: Route
            do {
                let efd = try EventFD()
                let gsi = try vm.allocateMSIRoute(address: address, data: data)
                do {
                    try vm.registerIRQFD(efd, gsi: gsi)
                } catch {
                    try? vm.releaseMSIRoute(gsi: gsi)
                    throw error
                }
                r = .irqfd(efd)
            } catch {
                log.warning("MSI 0x\(String(address, radix: 16))/0x\(String(data, radix: 16)): no irqfd route (KVM_SIGNAL_MSI is used): \(error)")
                r = .fallback
            }
            table[key] = r
            return r
        }
        switch route {
        case let .irqfd(efd):
            irqfdCount.add(1, ordering: .relaxed)
            efd.signal()
        case .fallback:
            vm.signalMSI(address: address, data: data)
        }
    }
}

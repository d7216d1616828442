#if canImport(Glibc)
import Glibc
#endif
import Devices
import HostNet
import KVM
import LocalNet
import Logging
import Synchronization

/// Where one guest network interface is attached on the host.
public enum NetworkAttachment: Sendable {
    /// A tap interface this process creates: a fixed name ("tap3"), a pattern with "%d",
    /// or nil for the next free tapN. It is brought up and vanishes with the VM.
    case tap(name: String?)
    /// An already open tap (or datagram socket) descriptor, e.g. passed by vmd. The machine
    /// takes ownership of it.
    case fileDescriptor(Int32)
    /// A backend object (tests).
    case backend(any NetworkBackend)
}

/// One guest network interface (virtio-net): `vmm --net`, vm.conf's `interface`.
public struct NetworkInterfaceConfig: Sendable {
    public var attachment: NetworkAttachment
    /// Six bytes; nil for a stable generated fe:e1:ba:d0:xx:xx address.
    public var mac: [UInt8]?
    /// Drop guest frames whose source MAC is not `mac` (vm.conf `locked lladdr`).
    public var lockedMAC = false
    /// A local interface (vm.conf `local interface`, `vmctl start -L`): the VM's network
    /// path answers the guest's DHCP with this lease (LocalInterfaceBackend).
    public var local: LocalLease?

    public init(attachment: NetworkAttachment, mac: [UInt8]? = nil, lockedMAC: Bool = false, local: LocalLease? = nil) {
        self.attachment = attachment; self.mac = mac; self.lockedMAC = lockedMAC; self.local = local
    }

    /// Parses `vmm --net`: `tap`, `tap:NAME`, `fd:N`, each optionally followed by
    /// `,mac=xx:xx:xx:xx:xx:xx` and `,locked` (drop frames the guest sends from another MAC).
    public init(parsing text: String) throws {
        var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let kind = parts.removeFirst()
        var mac: [UInt8]?
        for option in parts {
            if option == "locked" { lockedMAC = true; continue }
            guard option.hasPrefix("mac="), let m = Self.parseMAC(String(option.dropFirst(4))) else {
                throw NetworkConfigError.invalidSpec(text, why: "unknown option '\(option)' (mac=xx:xx:xx:xx:xx:xx or locked)")
            }
            guard m[0] & 1 == 0 else { throw NetworkConfigError.invalidSpec(text, why: "the MAC is a multicast address") }
            mac = m
        }
        if kind == "tap" {
            attachment = .tap(name: nil)
        } else if kind.hasPrefix("tap:") {
            let name = String(kind.dropFirst(4))
            guard InterfaceName.isValid(name) else {
                throw NetworkConfigError.invalidSpec(text, why: "'\(name)' is not an interface name (1-15 characters, no '/', ':' or spaces)")
            }
            attachment = .tap(name: name)
        } else if kind.hasPrefix("fd:"), let fd = Int32(kind.dropFirst(3)), fd >= 0 {
            attachment = .fileDescriptor(fd)
        } else {
            throw NetworkConfigError.invalidSpec(text, why: "expected tap, tap:NAME or fd:N")
        }
        self.mac = mac
    }

    /// xx:xx:xx:xx:xx:xx with one or two hex digits per byte.
    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard (1...2).contains(p.count), let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    public static func formatMAC(_ mac: [UInt8]) -> String {
        mac.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
    }
}

public enum NetworkConfigError: Error, Equatable, CustomStringConvertible {
    case invalidSpec(String, why: String)
    case tooManyInterfaces(Int, maximum: Int)
    case hostInterface(index: Int, reason: String)

    public var description: String {
        switch self {
        case let .invalidSpec(text, why): return "network interface '\(text)' is not valid: \(why)"
        case let .tooManyInterfaces(n, maximum): return "\(n) network interfaces requested; a VM has at most \(maximum)"
        case let .hostInterface(i, reason): return "network interface \(i): \(reason)"
        }
    }
}

extension Machine {
    /// TUNSETOFFLOAD for what the guest's driver accepted.
    @Sendable static func setTapOffloads(_ fd: Int32, _ offloads: NetworkOffloads) -> Bool {
        TapInterface.setOffloads(fd, TapInterface.Offloads(rawValue: offloads.rawValue))
    }

    /// Opens each interface's backend (creating taps) and picks its MAC.
    static func networkSpecs(config: MachineConfig, log: Logger) throws -> [VirtioNetSpec] {
        guard config.networkInterfaces.count <= VirtioMachineSet.maximumNetworkInterfaces else {
            throw NetworkConfigError.tooManyInterfaces(config.networkInterfaces.count,
                                                       maximum: VirtioMachineSet.maximumNetworkInterfaces)
        }
        var specs: [VirtioNetSpec] = []
        for (i, interface) in config.networkInterfaces.enumerated() {
            var backend: any NetworkBackend
            switch interface.attachment {
            case let .tap(name):
                do {
                    let tap = try TapInterface.open(name: name ?? "tap%d", virtioHeader: true)
                    backend = FileDescriptorNetworkBackend(fd: tap.fd, name: "tap \(tap.name)", virtioHeader: true,
                                                           offloadControl: Self.setTapOffloads)
                    try HostInterfaces.setUp(tap.name, true)
                } catch {
                    throw NetworkConfigError.hostInterface(index: i, reason: "\(error)")
                }
            case let .fileDescriptor(fd):
                guard fcntl(fd, F_GETFD) >= 0 else {
                    throw NetworkConfigError.hostInterface(index: i, reason: "descriptor \(fd) is not open")
                }
                // A tap vmd opened with the virtio-net header, or anything else (a socketpair).
                let header = TapInterface.hasVirtioHeader(fd)
                backend = FileDescriptorNetworkBackend(fd: fd, virtioHeader: header, offloadControl: header ? Self.setTapOffloads : nil)
            case let .backend(b):
                backend = b
            }
            let mac = interface.mac ?? VirtioNet.generatedMAC(seed: "\(config.kernelPath)/\(backend.name)/\(i)")
            if let lease = interface.local {
                do {
                    backend = try LocalInterfaceBackend(inner: backend, lease: lease)
                } catch {
                    throw NetworkConfigError.hostInterface(index: i, reason: "\(error)")
                }
                log.info("virtio-net\(i): local interface, guest \(lease.link.guest), router \(lease.link.host)")
            }
            log.info("virtio-net\(i): \(NetworkInterfaceConfig.formatMAC(mac)) on \(backend.name)")
            specs.append(VirtioNetSpec(mac: mac, backend: backend, lockedMAC: interface.lockedMAC))
        }
        return specs
    }
}

/// The network thread: waits (poll(2)) until a backend has a frame for the guest and moves
/// it into the guest's receive buffers (`VirtioNet.pollBackend`). A device that cannot take
/// frames (no receive buffers posted, or not started by the driver) is not polled until it
/// asks for frames again (`onReceiveSpace`), with a 100 ms recheck as a safety net, so a
/// guest that stops reading costs no CPU and the tap queue holds the excess.
/// It also runs the backends' timers (`NetworkBackend.serviceTimers`), sleeping no longer
/// than the next one. Transmit needs no thread: it runs on the notify (vCPU or ioeventfd
/// thread).
public final class VirtioNetPump: @unchecked Sendable {
    private let models: [VirtioNet]
    private let devices: [VirtioPCIDevice]
    private let wake: EventFD
    private let running = Atomic<Bool>(false)
    private let wakeups = Atomic<UInt64>(0)
    private var thread: HostThread?
    private let log: Logger
    private let gate: QuiesceGate

    /// Times the thread found a backend readable (for tests and metrics).
    public var readableWakeups: UInt64 { wakeups.load(ordering: .relaxed) }

    /// - gate: the machine's quiesce gate; each round of moving frames passes it.
    init(models: [VirtioNet], devices: [VirtioPCIDevice], gate: QuiesceGate, log: Logger) throws {
        self.models = models
        self.devices = devices
        self.gate = gate
        self.log = log
        do {
            wake = try EventFD()
        } catch {
            throw VMMError.machine("cannot create the network thread's eventfd: \(error)")
        }
        for model in models {
            model.onReceiveSpace = { [wake] in wake.signal() }
        }
    }

    deinit {
        stop()
        for model in models { model.onReceiveSpace = nil }
    }

    func start() throws {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread = try HostThread(name: "virtio-net") { [self] in run() }
    }

    func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        wake.signal()
        thread?.join()
        thread = nil
    }

    private func run() {
        var idle = [Bool](repeating: false, count: models.count)
        while running.load(ordering: .acquiring) {
            var fds = [pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)]
            var which: [Int] = []
            for (i, model) in models.enumerated() where !idle[i] {
                for fd in [model.backend.pollDescriptor, model.backend.wakeDescriptor].compactMap({ $0 }) {
                    fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                    which.append(i)
                }
            }
            var timeout: Int32 = idle.contains(true) ? 100 : -1
            // Backends' timers (a local interface's unsolicited router advertisements):
            // what is due now is queued (and shows on its wake descriptor), the sleep ends
            // by the next one.
            let now = ContinuousClock.now
            for model in models {
                guard let due = model.backend.serviceTimers(now: now) else { continue }
                let c = (due - now).components
                let ms = Int32(clamping: max(0, c.seconds) * 1000 + max(0, c.attoseconds) / 1_000_000_000_000_000 + 1)
                timeout = timeout < 0 ? ms : min(timeout, ms)
            }
            // SAFETY: poll writes only the revents fields of the fds.count entries.
            let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeout) }
            if n < 0 {
                if errno == EINTR { continue }
                log.error("virtio-net thread: poll failed: \(String(cString: strerror(errno)))")
                return
            }
            if n == 0 || fds[0].revents != 0 {
                _ = wake.consume()
                idle = idle.map { _ in false }   // recheck every device
            }
            var ready = Set<Int>()
            for (k, i) in which.enumerated() where fds[k + 1].revents != 0 { ready.insert(i) }
            gate.pass {
                for i in ready.sorted() {
                    wakeups.add(1, ordering: .relaxed)
                    let model = models[i], device = devices[i]
                    let before = device.withLock(processing: nil) { model.framesTaken }
                    device.withLock(processing: VirtioNet.receiveQueue) {}
                    let after = device.withLock(processing: nil) { model.framesTaken }
                    // No frame taken although one waits: the device cannot take frames now.
                    if after == before { idle[i] = true }
                }
            }
        }
    }
}

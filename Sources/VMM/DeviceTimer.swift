import Devices

/// A thread that fires device timers (the RTC's periodic/update/alarm interrupts) at their
/// deadlines, under the device lock. Deadlines are re-read after every `wake()` (call it
/// after a guest write that may change them) and at least once a second. Each look at the
/// deadlines passes the machine's quiesce gate, so a paused machine's timers wait.
final class DeviceTimer: @unchecked Sendable {
    private let control = ConditionLock()
    private var stopping = false
    private var woken = false
    private var thread: HostThread?

    /// - deadline: the next deadline in `clock` monotonic nanoseconds (nil: none); called
    ///   with the device lock held.
    /// - fire: called with the device lock held once `deadline` has passed.
    init(lock: DeviceLock, gate: QuiesceGate, clock: DeviceClock, name: String,
         deadline: @escaping @Sendable () -> UInt64?, fire: @escaping @Sendable () -> Void) throws {
        thread = try HostThread(name: name) { [self] in
            while true {
                let next = gate.pass {
                    lock.withLock { () -> UInt64? in
                        if let d = deadline(), d <= clock.monotonicNanoseconds() {
                            fire()
                            return deadline()
                        }
                        return deadline()
                    }
                }
                let now = clock.monotonicNanoseconds()
                let wait = min(1.0, next.map { $0 > now ? Double($0 - now) / 1e9 : 0 } ?? 1.0)
                let stop: Bool = control.withLock {
                    if !stopping && !woken && wait > 0 { control.wait(seconds: wait) }
                    woken = false
                    return stopping
                }
                if stop { return }
            }
        }
    }

    func wake() {
        control.withLock { woken = true; control.broadcast() }
    }

    func stop() {
        control.withLock { stopping = true; control.broadcast() }
        thread?.join()
        thread = nil
    }
}

/// Forwards port accesses to `device` and calls `afterWrite` after each write (used to
/// re-arm the device timer when the guest reprograms the RTC).
final class WriteNotifyingPorts: PortIODevice {
    let device: any PortIODevice
    let afterWrite: () -> Void
    init(_ device: any PortIODevice, afterWrite: @escaping () -> Void) { self.device = device; self.afterWrite = afterWrite }
    func ioRead(offset: UInt16, size: Int) -> UInt32 { device.ioRead(offset: offset, size: size) }
    func ioWrite(offset: UInt16, size: Int, value: UInt32) {
        device.ioWrite(offset: offset, size: size, value: value)
        afterWrite()
    }
}

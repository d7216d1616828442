import Foundation
import Boot
import Devices
import GuestMemory
import Hypervisor
@testable import X86Emulator

/// A minimal PC around the software CPU for booting Linux in tests, before (and apart
/// from) the VMM: 8259 PIC + 8254 PIT + IOAPIC (through `UserspaceIRQChip`), RTC, COM1 with
/// captured output. The real machine lives in the VMM; this harness exists to prove the CPU.
final class LinuxBootHarness: APICMessageSink, ExternalInterruptSource, EOIListener, @unchecked Sendable {
    let memory: GuestMemory
    let vm: EmulatorVirtualMachine
    let vcpu: EmulatorVCPU
    let bus = IOBus()
    let chip: UserspaceIRQChip
    var pit: I8254!
    var serial: NS8250!
    var rtc: MC146818!
    private(set) var console: [UInt8] = []
    let consoleLock = NSLock()

    init(memorySize: UInt64 = 256 << 20) throws {
        memory = try GuestMemory(layout: PhysicalMap.ramLayout(ramSize: memorySize))
        vm = EmulatorVirtualMachine(memory: memory)
        vcpu = try vm.createEmulatorVCPU(index: 0, startState: .runnable)
        chip = UserspaceIRQChip()
        chip.ioapic.sink = self
        vm.setLegacyInterruptSink(chip)
        vm.setExternalInterruptSource(self)
        vm.setEOIListener(self)
        chip.pic.onOutputChange = { [weak self] _ in self?.vm.notifyExternalInterrupt() }
        try chip.pic.map(on: bus)
        try chip.ioapic.map(on: bus)
        pit = I8254(irq: IRQLine(controller: vm.interrupts, gsi: 0))
        try pit.map(on: bus)
        serial = NS8250(irq: IRQLine(controller: vm.interrupts, gsi: 4)) { [weak self] byte in
            guard let self else { return }
            self.consoleLock.lock(); self.console.append(byte); self.consoleLock.unlock()
        }
        try bus.mapPorts(serial, name: "com1", base: 0x3F8, count: 8)
        rtc = MC146818(ramSize: memorySize, irq: IRQLine(controller: vm.interrupts, gsi: 8))
        try bus.mapPorts(rtc, name: "rtc", base: 0x70, count: 2)
    }

    var consoleText: String {
        consoleLock.lock(); defer { consoleLock.unlock() }
        return String(decoding: console, as: UTF8.self)
    }

    // MARK: glue

    func deliver(_ m: APICMessage) {
        guard let mode = X86Emulator.APICDeliveryMode(rawValue: m.deliveryMode.rawValue) else { return }
        vm.deliverInterrupt(vector: m.vector, destination: m.destination, logical: m.logicalDestination,
                            mode: mode, levelTriggered: m.levelTriggered)
    }
    func hasPendingInterrupt() -> Bool { chip.pic.pendingInterrupt() }
    func acknowledgeInterrupt() -> UInt8 { chip.pic.acknowledge() }
    func endOfInterrupt(vector: UInt8) { chip.ioapic.endOfInterrupt(vector: vector) }

    // MARK: boot

    func load(kernel: String, initrd: String, cmdline: String) throws {
        let result = try BootLoader.load(kernel: kernel, initrd: initrd, cmdline: cmdline, memory: memory, vcpus: 1)
        try vcpu.setState(result.cpuState)
    }

    enum Outcome { case marker, halted, shutdown(String), timeout, failure(String) }

    /// Runs until `marker` shows on the console, the CPU stops, or `seconds` pass.
    func run(until marker: String, seconds: Double) -> Outcome {
        let deadline = Date().addingTimeInterval(seconds)
        // A ticker thread kicks the vCPU so the PIT is polled on time.
        let stop = NSLock(); nonisolated(unsafe) var stopped = false
        let ticker = Thread { [vcpu] in
            while true {
                stop.lock(); let s = stopped; stop.unlock()
                if s { return }
                usleep(1000)
                vcpu.kick()
            }
        }
        ticker.start()
        defer { stop.lock(); stopped = true; stop.unlock() }
        var markerCheck = 0
        while true {
            if let dl = pit.nextDeadline(), dl <= HostClock.nanoseconds() { pit.poll() }
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch { return .failure("\(error)") }
            switch exit {
            case let .io(io):
                if io.isWrite {
                    let v = io.size == 1 ? UInt32(io.data.load(as: UInt8.self)) : (io.size == 2 ? UInt32(io.data.load(as: UInt16.self)) : io.data.load(as: UInt32.self))
                    bus.portWrite(io.port, size: io.size, value: v)
                } else {
                    let v = bus.portRead(io.port, size: io.size)
                    io.data.storeBytes(of: UInt64(v), as: UInt64.self)
                }
            case let .mmio(m):
                if m.isWrite { bus.mmioWrite(m.address, size: m.size, value: m.data.load(as: UInt64.self)) }
                else { m.data.storeBytes(of: bus.mmioRead(m.address, size: m.size), as: UInt64.self) }
            case .interrupted:
                markerCheck += 1
                if markerCheck % 16 == 0 {
                    if markerCheck % 2048 == 0, let path = ProcessInfo.processInfo.environment["SWIFTVMM_BOOT_LOG"] {
                        try? consoleText.write(toFile: path, atomically: true, encoding: .utf8)
                    }
                    if consoleText.contains(marker) { return .marker }
                    if Date() > deadline { return .timeout }
                }
            case .halt:
                if consoleText.contains(marker) { return .marker }
                return .halted
            case let .shutdown(reason):
                return .shutdown(reason)
            case let .failure(why):
                return .failure(why)
            default:
                return .failure("unexpected exit \(exit)")
            }
        }
    }
}

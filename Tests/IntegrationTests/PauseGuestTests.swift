#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GuestMemory
import Hypervisor
import Testing
import Synchronization
import VMM

/// The consistent stop on running guests (docs/snapshot.md, "Pausing"): while paused,
/// guest memory and every vCPU's registers stay exactly as they were, across events that
/// prove the machine's other threads wanted to run; resume continues; the counting guest's
/// port read-backs never see a value lost or doubled by a pause landing on its exits.
@Suite struct PauseGuestTests {
    static let kvmUsable = HostCapabilities.probeKVM() == nil

    @Test func aPausedSoftwareCPUGuestDoesNotChange() throws { try pauseCountingGuest(.emulator) }

    @Test(.enabled(if: kvmUsable, "KVM is not usable here"))
    func aPausedKVMGuestDoesNotChange() throws { try pauseCountingGuest(.kvm) }

    @Test func pausingDuringHeavyVirtioIOOnTheSoftwareCPU() throws { try pauseDuringDiskBench(.emulator) }

    @Test(.enabled(if: kvmUsable, "KVM is not usable here"))
    func pausingDuringHeavyVirtioIOOnKVM() throws { try pauseDuringDiskBench(.kvm) }

    // MARK: the counting guest

    func pauseCountingGuest(_ accel: Accelerator) throws {
        let kernel = try Harness.testGuest("counter")
        let capture = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, memorySize: 32 << 20,
                                                        accelerator: accel, console: capture.sink))
        try machine.start()
        defer {
            machine.stop(reason: "test over")
            _ = machine.wait()
        }
        #expect(waitUntil { capture.text.contains("count 2\r\n") }, "\(capture.text)")
        let page = try #require(Self.pageAddress(capture.text))
        #expect(try machine.memory.read(UInt64.self, at: page) == 0x2152_4554_4E55_4F43)

        let rounds = 20
        var frozen = 0, resumed = 0
        for _ in 0..<rounds {
            let heldBefore = machine.quiesceGate.heldArrivals
            machine.pause()
            #expect(machine.state == .paused)
            let regs = try machine.runner.onEachPausedVCPU { cpu in CPUState(try cpu.registers(), try cpu.specialRegisters()) }
            let ram = RAMImage(machine.memory)
            let count = try machine.memory.read(UInt64.self, at: page + 8)
            // The device timer (the guest's RTC ticks at 1024 Hz) arrives at the gate and waits.
            let held = machine.quiesceGate.waitForHeldArrivals(atLeast: heldBefore + 1, seconds: 20)
            let regsAfter = try machine.runner.onEachPausedVCPU { cpu in CPUState(try cpu.registers(), try cpu.specialRegisters()) }
            let ramDiff = ram.firstDifference(machine.memory)
            #expect(held > heldBefore, "no device thread was seen at the gate")
            #expect(regsAfter == regs, "registers changed while paused")
            #expect(ramDiff == nil, "guest RAM changed while paused at 0x\(String(ramDiff ?? 0, radix: 16))")
            if held > heldBefore && regsAfter == regs && ramDiff == nil { frozen += 1 }
            machine.resume()
            if waitUntil({ (try? machine.memory.read(UInt64.self, at: page + 8)) ?? 0 > count }) { resumed += 1 }
        }
        #expect(frozen == rounds)
        #expect(resumed == rounds)
        #expect(try machine.memory.read(UInt64.self, at: page + 24) == 0, "a scratch read-back saw a wrong value")

        // Many quick rounds without checks: the guest keeps counting, nothing is lost.
        for _ in 0..<200 {
            machine.pause()
            machine.resume()
        }
        let lines = try machine.memory.read(UInt64.self, at: page + 16)
        #expect(waitUntil { capture.text.contains("count \(lines + 2)\r\n") })
        machine.pause()
        #expect(try machine.memory.read(UInt64.self, at: page + 24) == 0)
        let printed = Self.countLines(capture.text)
        #expect(printed == Array(1...max(1, printed.count)).map(UInt64.init), "count lines are consecutive")
        machine.resume()
    }

    static func pageAddress(_ text: String) -> UInt64? {
        guard let r = text.range(of: "counter: page at 0x") else { return nil }
        let hex = text[r.upperBound...].prefix { $0.isHexDigit }
        return UInt64(hex, radix: 16)
    }

    static func countLines(_ text: String) -> [UInt64] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            guard line.hasPrefix("count ") else { return nil }
            return UInt64(line.dropFirst(6).prefix { $0.isNumber })
        }
    }

    // MARK: heavy virtio I/O

    /// The virtio-test guest reads a 256 MiB disk in batches of four 256 KiB requests
    /// (`bench`), on KVM through ioeventfds served by the virtio event thread. The test
    /// pauses and resumes it over and over: while paused RAM does not change across a round
    /// trip to the vCPU threads, and the guest still reads every byte and exits cleanly.
    /// (64 MiB was too little once the software CPU got faster: on a loaded host the guest
    /// finished after two or three pauses.)
    static let benchDiskSize: Int = 256 << 20

    func pauseDuringDiskBench(_ accel: Accelerator) throws {
        let kernel = try Harness.buildGuest(script: "build-virtio-test.sh", arguments: [VirtioGuestTests.kernelPath])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pause-io-\(accel)-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let disk = dir.appendingPathComponent("disk.img").path
        #expect(FileManager.default.createFile(atPath: disk, contents: nil))
        let fd = open(disk, O_WRONLY)
        #expect(ftruncate(fd, Self.benchDiskSize) == 0)
        close(fd)
        let output = ConsoleCapture()
        let machine = try Machine(config: MachineConfig(kernelPath: kernel, cmdline: "bench", memorySize: 32 << 20,
                                                        diskPaths: [disk], accelerator: accel, console: output.sink))
        try machine.start()
        var rounds = 0, frozen = 0
        func progress() -> UInt64 {
            machine.handler.ioExits.load(ordering: .relaxed) &+ machine.handler.mmioExits.load(ordering: .relaxed)
                &+ machine.quiesceGate.completedPasses
        }
        while machine.state != .stopped && rounds < 10_000 {
            let before = progress()
            machine.pause()
            guard machine.state == .paused else { break }   // the guest finished meanwhile
            rounds += 1
            let ram = RAMImage(machine.memory)
            let ok = (try? machine.runner.onEachPausedVCPU { $0.index }) != nil
            if ok && ram.matches(machine.memory) { frozen += 1 }
            machine.resume()
            _ = waitUntil { progress() > before || machine.state == .stopped }
        }
        let outcome = machine.wait()
        #expect(outcome == .debugExit(status: 1), "\(outcome)\n\(output.text)")
        #expect(output.text.contains("bench: read \(Self.benchDiskSize) bytes"), "\(output.text)")
        #expect(rounds > 3, "the guest finished before it could be paused a few times")
        #expect(frozen == rounds)
    }
}

struct CPUState: Equatable, Sendable {
    var regs: X86Registers
    var sregs: X86SpecialRegisters
    init(_ regs: X86Registers, _ sregs: X86SpecialRegisters) { self.regs = regs; self.sregs = sregs }
}

/// A copy of all guest RAM, to compare later.
struct RAMImage {
    let copies: [[UInt8]]

    init(_ memory: GuestMemory) {
        // SAFETY: each region's host mapping is `size` bytes and lives as long as `memory`.
        copies = memory.regions.map { region in
            [UInt8](unsafeUninitializedCapacity: region.size) { buf, count in
                memcpy(buf.baseAddress!, region.host, region.size)
                count = region.size
            }
        }
    }

    /// The guest-physical address of the first byte that differs, nil when none does.
    func firstDifference(_ memory: GuestMemory) -> UInt64? {
        for (copy, region) in zip(copies, memory.regions) {
            // SAFETY: the region's host mapping is `size` bytes.
            let now = UnsafeRawBufferPointer(start: region.host, count: region.size)
            let diff: Int? = copy.withUnsafeBytes { old in
                for page in stride(from: 0, to: region.size, by: 4096) {
                    let n = min(4096, region.size - page)
                    guard memcmp(old.baseAddress! + page, now.baseAddress! + page, n) != 0 else { continue }
                    return (page..<page + n).first { old[$0] != now[$0] }
                }
                return nil
            }
            if let diff { return region.guestBase + UInt64(diff) }
        }
        return nil
    }

    func matches(_ memory: GuestMemory) -> Bool {
        zip(copies, memory.regions).allSatisfy { copy, region in
            copy.count == region.size && copy.withUnsafeBytes { memcmp($0.baseAddress!, region.host, region.size) == 0 }
        }
    }
}

/// Polls `condition` (every 2 ms) until it holds or `seconds` pass.
func waitUntil(seconds: Double = 60, _ condition: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

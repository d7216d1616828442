#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

// MARK: - Run

/// What stopped a slice of execution inside the CPU.
public enum X86StopReason: Equatable {
    /// A port or MMIO access for the VMM (see `X86CPU.takeExit`).
    case exit
    /// HLT with no interrupt able to wake the CPU before `wakeDeadline`.
    case halted
    /// Triple fault: see `shutdownReason`.
    case shutdown
    /// The instruction budget ran out.
    case budget
    /// Something asked the loop to stop (`attention`).
    case attention
}

extension X86CPU {
    /// Executes one instruction (or delivers one interrupt/exception).
    @inline(__always)
    func step() {
        let exitsBefore = exitCount
        do {
            let len = try decodeCached()
            nextRIP = (rip &+ UInt64(len)) & ipMask
            try execute()
            rip = nextRIP
            instructions &+= 1
        } catch {
            handle(error, exitsBefore: exitsBefore)
        }
    }

    @inline(never)
    func handle(_ error: X86Fault, exitsBefore: Int) {
        switch error {
        case .needsExit:
            // Keep only the read that needs the VMM (the last entry); writes queued by
            // this instruction are redone when it runs again.
            if let last = pendingExits.last {
                pendingExits.removeSubrange(exitsBefore..<pendingExits.count)
                pendingExits.append(last)
            }
        case let .exception(vector, code):
            if pendingExits.count > exitsBefore { pendingExits.removeSubrange(exitsBefore..<pendingExits.count) }
            if EmulatorTrace.settings.exceptions { traceException(vector, code) }
            raiseException(vector, code)
        case .shutdown:
            break
        }
    }

    /// Delivers an exception for the instruction at RIP, escalating to #DF and triple fault.
    func raiseException(_ vector: UInt8, _ code: UInt32?) {
        interruptShadow = false
        do {
            try deliverInterrupt(vector, errorCode: code, software: false, returnIP: rip)
        } catch {
            guard case let .exception(v2, _) = error else { return }
            if vector == Vec.df {
                tripleFault("exception \(v2) while delivering a double fault")
                return
            }
            do {
                try deliverInterrupt(Vec.df, errorCode: 0, software: false, returnIP: rip)
            } catch {
                tripleFault("exception \(v2) while delivering exception \(vector), then a fault delivering #DF")
            }
        }
    }

    func tripleFault(_ why: String) {
        shutdownReason = "triple fault at RIP 0x\(String(rip, radix: 16)) (CS 0x\(String(seg[SReg.cs].selector, radix: 16))): \(why)"
    }

    /// Checks for a deliverable external interrupt and delivers it. Returns true if one was
    /// delivered (which also wakes the CPU from HLT).
    @inline(__always)
    func pollInterrupts() -> Bool {
        if apic.inboxFlag.load(ordering: .acquiring) { mergeInbox() }
        if nmiPending {
            nmiPending = false
            halted = false
            raiseInterrupt(Vec.nmi)
            return true
        }
        if !interruptsEnabled || interruptShadow { return false }
        if let v = apic.deliverableVector() {
            apic.acknowledge(v)
            halted = false
            raiseInterrupt(v)
            return true
        }
        // LINT0 first: once the guest masks it (IOAPIC mode) ExtINT stays pending without
        // touching the PIC object (no reference counting on the per-instruction path).
        if extINTPending, lint0AcceptsPIC {
            if let pic = extInt, pic.hasPendingInterrupt() {
                let v = pic.acknowledgeInterrupt()
                halted = false
                raiseInterrupt(v)
                return true
            }
            extINTPending = false
        }
        return false
    }

    /// `extINTPending && lint0AcceptsPIC` from stored fields only (the per-instruction check).
    @inline(__always) var picMayInterrupt: Bool {
        extINTPending && (apic.baseMSR & (1 << 11) == 0 || apic.lvtLint0 & 0x1_0700 == 0x700)
    }

    var lint0AcceptsPIC: Bool {
        if !apic.enabled { return true }
        return apic.lvtLint0 & 0x10000 == 0 && (apic.lvtLint0 >> 8) & 7 == 7
    }

    func mergeInbox() {
        let box = apic.drainInbox()
        for w in 0..<8 where box.irr[w] != 0 {
            apic.irr[w] |= box.irr[w]
            apic.irrAny = true
            apic.tmr[w] = (apic.tmr[w] & ~box.irr[w]) | (box.levelTriggered[w] & box.irr[w])
        }
        if box.nmi { nmiPending = true }
        if box.extINT { extINTPending = true }
        if box.initRequest { initPending = true }
        if let s = box.sipiVector { sipiPending = s }
    }

    func raiseInterrupt(_ vector: UInt8) {
        do {
            try deliverInterrupt(vector, errorCode: nil, software: false, returnIP: rip)
        } catch {
            if case let .exception(v, c) = error { raiseException(v, c) }
        }
    }

    /// What the attention word announced (see `LocalAPIC.attention`): clears the word, then
    /// looks at every source in the order the loop used to poll them after an instruction
    /// (queued exit, PAUSE yield, kick, interrupts, shutdown, HLT). Returns why to stop, or
    /// nil to go on. An early return leaves sources unexamined: `run(budget:)` calls this
    /// unconditionally on entry, so they are seen on the next slice.
    @inline(never)
    func serviceAttention() -> X86StopReason? {
        _ = apic.attention.exchange(0, ordering: .sequentiallyConsistent)
        if exitCount != 0 { return .exit }
        // PAUSE with several vCPUs ends the slice right after it retires. Honouring it
        // at a later check instead phase-locked with short spin loops: SeaBIOS's BSP
        // releases and retakes its SMP lock in an 8-instruction loop, so its slice always
        // ended with the lock held and the AP never got it.
        if yieldRequested { yieldRequested = false; return .attention }
        if kickRequested.load(ordering: .acquiring) { return .attention }
        if mayInterrupt { _ = pollInterrupts() }
        if shutdownReason != nil { return .shutdown }
        if halted { return .halted }
        // Still pending but not deliverable yet (interrupt shadow, TPR/PPR, IRR below 16):
        // look again after the next instruction, as the loop always did.
        if mayInterrupt { apic.attention.bitwiseOr(LocalAPIC.attentionPoll, ordering: .relaxed) }
        return nil
    }

    /// Something could be delivered: an IRR bit or a PIC that may have a vector (IF=1),
    /// an NMI, or mail from other threads.
    @inline(__always) var mayInterrupt: Bool {
        (interruptsEnabled && (apic.irrAny || picMayInterrupt)) || nmiPending || apic.inboxFlag.load(ordering: .acquiring)
    }

    /// Runs until an exit, HLT, shutdown, attention or `budget` instructions.
    ///
    /// Per instruction the loop tests one word (`apic.attention`); the LAPIC timer and RIP
    /// profiling are looked at every 2048 instructions.
    public func run(budget: Int) -> X86StopReason {
        pausesInSlice = 0
        if let stop = serviceAttention() { return stop }
        switch tier {
        case .block: return runBlockTier(budget: budget)
        case .jit: return runJITTier(budget: budget)
        case .interp: break
        }
        let apic = self.apic
        var left = budget
        while left > 0 {
            if apic.timerDeadline != 0 { apic.checkTimer(now: HostClock.nanoseconds()) }
            if let p = ripProfile, instructions &- profiledAt >= 2048 { profiledAt = instructions; p.sample(rip, cpl: cpl) }
            var chunk = min(left, 2048)
            left &-= chunk
            while chunk > 0 {
                interruptShadow = false
                step()
                chunk &-= 1
                if apic.attention.load(ordering: .relaxed) != 0, let stop = serviceAttention() { return stop }
            }
        }
        return .budget
    }
}

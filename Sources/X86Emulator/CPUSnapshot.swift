import Hypervisor

// Saving and restoring the software CPU's complete architectural state (docs/snapshot.md).
// Taken only at an instruction boundary with no exit pending (the machine is paused, so
// `EmulatorVCPU.completePendingExit()` ran): the decoder state, the TLB and the decoded
// instruction cache are not state, they are rebuilt.

/// One software vCPU's state as plain values.
public struct X86CPUSnapshot: Codable, Sendable, Equatable {
    public var gpr: [UInt64]            // 16, encoding order rax, rcx, rdx, rbx, rsp, ...
    public var rip: UInt64
    public var rflags: UInt64
    /// ES, CS, SS, DS, FS, GS with their descriptor caches, then TR and LDTR.
    public var segments: [X86Segment]
    public var gdtr: X86DescriptorTable
    public var idtr: X86DescriptorTable
    public var cr: [UInt64]             // cr0, cr2, cr3, cr4
    public var efer: UInt64
    public var dr: [UInt64]             // 8
    public var xcr0: UInt64
    /// star, lstar, cstar, sfmask, kernelGSBase, sysenterCS/ESP/EIP, pat, tscAux, mtrrDefType, miscEnable,
    /// tscAdjust (the last is absent in streams written before it existed).
    public var msrs: [UInt64]
    /// The guest TSC at the snapshot (restored as an offset to the new host clock).
    public var tsc: UInt64
    public var xmm: [UInt64]            // 32 quadwords
    /// The YMM registers' upper halves (bits 255:128, 32 quadwords); nil in snapshots
    /// from before AVX (restored as zero).
    public var ymmHigh: [UInt64]?
    public var mxcsr: UInt32
    /// x87 (and MMX, which aliases its mantissas): fcw, fsw, ftw, fop, fcs, fds, fip, fdp.
    public var x87Control: [UInt64]
    public var x87Mantissa: [UInt64]    // 8, physical order
    public var x87Exponent: [UInt16]    // 8
    public var interruptShadow: Bool
    public var halted: Bool
    public var nmiPending: Bool
    public var initPending: Bool
    public var sipiPending: UInt8?
    public var waitingForSIPI: Bool
    public var apic: LocalAPICSnapshot
}

/// A local APIC's registers, timer and interrupts not yet taken.
public struct LocalAPICSnapshot: Codable, Sendable, Equatable {
    public var id: UInt32
    public var baseMSR: UInt64
    public var tpr: UInt32, svr: UInt32, ldr: UInt32, dfr: UInt32, esr: UInt32
    public var irr: [UInt32], isr: [UInt32], tmr: [UInt32]
    public var icrLow: UInt32, icrHigh: UInt32
    /// timer, thermal, perf, lint0, lint1, error, cmci.
    public var lvt: [UInt32]
    public var initialCount: UInt32, divideConfig: UInt32
    /// Nanoseconds since the timer was armed, and until its next event (nil: none).
    public var timerElapsed: UInt64
    public var timerRemaining: UInt64?
    public var tscDeadline: UInt64
    /// Posted from other threads and not yet drained.
    public var inboxIRR: [UInt32], inboxLevel: [UInt32]
    public var inboxNMI: Bool, inboxINIT: Bool, inboxSIPI: UInt8?, inboxExtINT: Bool
}

public enum CPUSnapshotError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    public var description: String {
        switch self { case .malformed(let what): return "the saved vCPU state is malformed: \(what)" }
    }
}

extension LocalAPIC {
    func snapshot(now: UInt64) -> LocalAPICSnapshot {
        let box = inbox.withLock { $0 }
        return LocalAPICSnapshot(
            id: id, baseMSR: baseMSR, tpr: tpr, svr: svr, ldr: ldr, dfr: dfr, esr: esr,
            irr: irr, isr: isr, tmr: tmr, icrLow: icrLow, icrHigh: icrHigh,
            lvt: [lvtTimer, lvtThermal, lvtPerf, lvtLint0, lvtLint1, lvtError, lvtCMCI],
            initialCount: initialCount, divideConfig: divideConfig,
            timerElapsed: now > timerStart ? now - timerStart : 0,
            timerRemaining: timerDeadline == 0 ? nil : (timerDeadline > now ? timerDeadline - now : 0),
            tscDeadline: tscDeadline,
            inboxIRR: box.irr, inboxLevel: box.levelTriggered, inboxNMI: box.nmi, inboxINIT: box.initRequest,
            inboxSIPI: box.sipiVector, inboxExtINT: box.extINT)
    }

    func restore(_ s: LocalAPICSnapshot, now: UInt64) {
        id = s.id; baseMSR = s.baseMSR
        tpr = s.tpr; svr = s.svr; ldr = s.ldr; dfr = s.dfr; esr = s.esr
        irr = s.irr; isr = s.isr; tmr = s.tmr
        irrAny = irr.contains { $0 != 0 }
        icrLow = s.icrLow; icrHigh = s.icrHigh
        lvtTimer = s.lvt[0]; lvtThermal = s.lvt[1]; lvtPerf = s.lvt[2]; lvtLint0 = s.lvt[3]
        lvtLint1 = s.lvt[4]; lvtError = s.lvt[5]; lvtCMCI = s.lvt[6]
        initialCount = s.initialCount; divideConfig = s.divideConfig
        timerStart = now &- s.timerElapsed
        timerDeadline = s.timerRemaining.map { max(1, now &+ $0) } ?? 0
        tscDeadline = s.tscDeadline
        inbox.withLock { box in
            box = APICInbox(irr: s.inboxIRR, levelTriggered: s.inboxLevel, nmi: s.inboxNMI,
                            initRequest: s.inboxINIT, sipiVector: s.inboxSIPI, extINT: s.inboxExtINT)
        }
        inboxFlag.store(true, ordering: .releasing)
        noteAttention()
    }

    static func validate(_ s: LocalAPICSnapshot) throws {
        guard [s.irr, s.isr, s.tmr, s.inboxIRR, s.inboxLevel].allSatisfy({ $0.count == 8 }), s.lvt.count == 7 else {
            throw CPUSnapshotError.malformed("local APIC register arrays have the wrong size")
        }
    }
}

extension X86CPU {
    /// The complete state. Call on the vCPU's thread or while it is parked.
    public func snapshot() -> X86CPUSnapshot {
        let now = HostClock.nanoseconds()
        let f = fpu
        return X86CPUSnapshot(
            gpr: (0..<16).map { r[$0] }, rip: rip, rflags: rflags,
            segments: (0..<6).map { seg[$0] } + [tr, ldtr], gdtr: gdtr, idtr: idtr,
            cr: [cr0, cr2, cr3, cr4], efer: efer, dr: dr, xcr0: xcr0,
            msrs: [star, lstar, cstar, sfmask, kernelGSBase, sysenterCS, sysenterESP, sysenterEIP,
                   pat, tscAux, mtrrDefType, miscEnable, tscAdjust],
            tsc: readTSC(),
            xmm: (0..<32).map { xmm[$0] }, ymmHigh: (32..<64).map { xmm[$0] }, mxcsr: mxcsr,
            x87Control: [UInt64(f.fcw), UInt64(f.fsw), UInt64(f.ftw), UInt64(f.fop), UInt64(f.fcs), UInt64(f.fds), f.fip, f.fdp],
            x87Mantissa: (0..<8).map { f.mant[$0] }, x87Exponent: (0..<8).map { f.sexp[$0] },
            interruptShadow: interruptShadow, halted: halted, nmiPending: nmiPending,
            initPending: initPending, sipiPending: sipiPending, waitingForSIPI: false,
            apic: apic.snapshot(now: now))
    }

    /// Replaces the whole state with `s` (checked first: nothing changes on a malformed one).
    public func restore(_ s: X86CPUSnapshot) throws {
        guard s.gpr.count == 16, s.segments.count == 8, s.cr.count == 4, s.dr.count == 8, (12...13).contains(s.msrs.count),
              s.xmm.count == 32, (s.ymmHigh?.count ?? 32) == 32, s.x87Control.count == 8, s.x87Mantissa.count == 8, s.x87Exponent.count == 8 else {
            throw CPUSnapshotError.malformed("register arrays have the wrong size")
        }
        try LocalAPIC.validate(s.apic)
        let now = HostClock.nanoseconds()
        for i in 0..<16 { r[i] = s.gpr[i] }
        for i in 0..<6 { seg[i] = s.segments[i] }
        tr = s.segments[6]; ldtr = s.segments[7]; gdtr = s.gdtr; idtr = s.idtr
        cr0 = s.cr[0]; cr2 = s.cr[1]; cr3 = s.cr[2]; cr4 = s.cr[3]; efer = s.efer
        dr = s.dr; xcr0 = s.xcr0
        let m = s.msrs
        star = m[0]; lstar = m[1]; cstar = m[2]; sfmask = m[3]; kernelGSBase = m[4]
        sysenterCS = m[5]; sysenterESP = m[6]; sysenterEIP = m[7]; pat = m[8]; tscAux = m[9]
        mtrrDefType = m[10]; miscEnable = m[11]
        tscAdjust = m.count > 12 ? m[12] : 0   // streams before IA32_TSC_ADJUST have 12
        tscOffset = Int64(bitPattern: s.tsc) &- Int64(bitPattern: now)
        for i in 0..<32 { xmm[i] = s.xmm[i]; xmm[32 + i] = s.ymmHigh?[i] ?? 0 }
        mxcsr = s.mxcsr
        var f = X87State()
        let c = s.x87Control
        f.fcw = UInt16(truncatingIfNeeded: c[0]); f.fsw = UInt16(truncatingIfNeeded: c[1])
        f.ftw = UInt8(truncatingIfNeeded: c[2]); f.fop = UInt16(truncatingIfNeeded: c[3])
        f.fcs = UInt16(truncatingIfNeeded: c[4]); f.fds = UInt16(truncatingIfNeeded: c[5]); f.fip = c[6]; f.fdp = c[7]
        for i in 0..<8 { f.mant[i] = s.x87Mantissa[i]; f.sexp[i] = s.x87Exponent[i] }
        fpu = f
        apic.restore(s.apic, now: now)
        rip = s.rip
        rflags = s.rflags
        interruptShadow = s.interruptShadow
        nmiPending = s.nmiPending; initPending = s.initPending; sipiPending = s.sipiPending
        halted = s.halted
        pendingExits = []
        replayValid = false
        extINTPending = true
        flushTLB()
        updateMode()
    }
}

extension EmulatorVCPU {
    /// The vCPU's complete state (the machine must be paused, or the vCPU not started).
    public func snapshot() -> X86CPUSnapshot {
        var s = cpu.snapshot()
        s.waitingForSIPI = waitingForSIPI
        return s
    }

    /// Restores a state from `snapshot()` before the vCPU first runs.
    public func restore(_ s: X86CPUSnapshot) throws {
        try cpu.restore(s)
        waitingForSIPI = s.waitingForSIPI
    }
}

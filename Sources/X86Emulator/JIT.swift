#if canImport(Glibc)
import Glibc
#endif

// MARK: - JIT tier (SWIFTVMM_CPU_TIER=jit)

/// What the JIT knows about one block-cache slot (same index as `BlockCache`): nothing
/// yet (counting runs), compiled (code valid for one cache generation), or unsupported.
struct JITEntry {
    enum State: UInt8 { case counting, compiled, unsupported }
    var code: UnsafeRawPointer? = nil
    var generation: UInt32 = 0
    var runs: UInt16 = 0
    var state = State.counting
    /// Guest instructions and bytes the compiled prefix covers.
    var count: UInt8 = 0
    var byteLength: UInt8 = 0
    var flagsIn = false
    var flagsOut = false
    /// The byte offset of the block-ending JMP/Jcc, `noBranch` without one.
    var branchStart: UInt8 = JITEntry.noBranch
    static let noBranch: UInt8 = 0xFF
    /// The code treats the stack as flat and 32-bit (SS base 0, B = 1): it runs only while
    /// that holds (the block key does not include SS).
    var stack32 = false
}

/// The generated code's C signature (see `JITCompiler`).
typealias JITFunction = @convention(c) (UnsafeMutablePointer<UInt64>, UnsafeMutablePointer<UInt64>) -> UInt64

/// Per-vCPU JIT state: one entry per block slot, the code cache and the call context.
final class JITState {
    /// Runs of a block before it is compiled: `SWIFTVMM_JIT_THRESHOLD`, default 4 (0 =
    /// compile at first sight).
    static let defaultThreshold: Int = {
        if let p = getenv("SWIFTVMM_JIT_THRESHOLD"), let n = Int(String(cString: p)), n >= 0 { return min(n, 60000) }
        return 4
    }()

    /// At most this many blocks compiled per vCPU: `SWIFTVMM_JIT_LIMIT` (default: no
    /// limit). A debugging aid: bisecting the limit finds the first block whose compiled
    /// code makes a guest go wrong; `SWIFTVMM_EMU_TRACE=jit` prints each compiled block.
    static let compileLimit: UInt64 = {
        if let p = getenv("SWIFTVMM_JIT_LIMIT"), let n = UInt64(String(cString: p)) { return n }
        return .max
    }()

    /// `SWIFTVMM_JIT_CHECK=1`: after each compiled run, rerun the same instructions on the
    /// interpreter from the saved state (registers, flags and every page the write TLB
    /// maps, copied before the run) and stop the process at the first difference in RIP,
    /// registers, arithmetic flags or those pages. A debugging aid, slow.
    static let lockstep: Bool = getenv("SWIFTVMM_JIT_CHECK").map { String(cString: $0) == "1" } ?? false

    let entries: UnsafeMutablePointer<JITEntry>
    /// nil when the host gave no executable mapping: every block stays on the block tier.
    let cache: JITCodeCache?
    /// [0] flags in/out, [1] the block's RIP, [2] instructions done (in: all; a side exit
    /// stores fewer), [3] the TLB tag bit of the CPL, [4]/[5] the read TLB's tags and host
    /// pages (`JITCompiler.contextTLBTags`), [6]/[7] the write TLB's, [8] the host address
    /// of the running block's first byte.
    let context: UnsafeMutablePointer<UInt64>
    let threshold: Int
    /// Statistics for tests and benchmarks.
    var compiled: UInt64 = 0
    var unsupported: UInt64 = 0

    init(cacheSize: Int, threshold: Int) {
        entries = .allocate(capacity: BlockCache.slots)
        entries.initialize(repeating: JITEntry(), count: BlockCache.slots)
        context = .allocate(capacity: JITCompiler.contextWords)
        context.initialize(repeating: 0, count: JITCompiler.contextWords)
        cache = JITCodeCache(size: cacheSize)
        self.threshold = threshold
    }

    deinit {
        entries.deallocate(); context.deallocate()
    }

    /// The slot's block was rebuilt: its code (if any) no longer applies.
    @inline(__always) func forget(_ slot: Int) {
        // SAFETY: slot < BlockCache.slots (BlockCache.slot masks it).
        entries[slot] = JITEntry()
    }

    /// Compiles the block in `slot` (its decoded instructions at `insns`).
    @inline(never)
    func compile(_ e: UnsafeMutablePointer<JITEntry>, _ insns: UnsafePointer<Insn>, count: Int, mode64: Bool, ipMask: UInt64,
                 rip: UInt64, flatStack32: Bool) {
        guard compiled < Self.compileLimit, let cache,
              let c = JITCompiler.compile(insns, count: count, mode64: mode64, ipMask: ipMask, flatStack32: flatStack32),
              let code = cache.install(c.code) else {
            e.pointee.state = .unsupported
            unsupported &+= 1
            return
        }
        e.pointee = JITEntry(code: code, generation: cache.generation, runs: e.pointee.runs, state: .compiled,
                             count: UInt8(c.count), byteLength: UInt8(c.byteLength), flagsIn: c.flagsIn, flagsOut: c.flagsOut,
                             branchStart: c.branchStart.map { UInt8($0) } ?? JITEntry.noBranch, stack32: c.usesStack32)
        compiled &+= 1
        if EmulatorTrace.settings.jit {
            let ops = (0..<c.count).map { String(insns[$0].op, radix: 16) }.joined(separator: " ")
            EmulatorTrace.emit("jit: block \(compiled) rip=0x\(String(rip, radix: 16)) insns=\(c.count) of \(count) ops: \(ops)")
        }
    }
}

/// The raw parts of `JITState` the run loop reads (a struct of pointers in the CPU, so the
/// per-block path does no reference counting).
struct JITView {
    let entries: UnsafeMutablePointer<JITEntry>
    let context: UnsafeMutablePointer<UInt64>
    /// nil without a code cache.
    let generation: UnsafeMutablePointer<UInt32>?
    let threshold: Int
    /// `JITState.lockstep`, copied so the per-block path reads a field, not a lazy global.
    let lockstep: Bool
}

extension X86CPU {
    /// Runs the compiled prefix of the block in `slot` when there is one of at most `limit`
    /// instructions, compiling it first once the block has run often enough. Returns the
    /// guest instructions retired (0: nothing ran, the block tier runs the block) and the
    /// guest bytes they covered. The prefix never faults: a load or store whose TLB probe
    /// misses (or a store into the block itself, at host address `host`) leaves before it
    /// (a side exit) and the block tier runs it, so RIP, registers, flags and memory are
    /// exact after it.
    @inline(__always)
    func runCompiled(slot: Int, insns: UnsafePointer<Insn>, count: Int, limit: Int,
                     host: UnsafeMutableRawPointer) -> (done: Int, bytes: Int) {
        let js = jitView ?? makeJITView()
        guard let generation = js.generation else { return (0, 0) }
        let e = js.entries + slot
        if e.pointee.state != .compiled {
            guard e.pointee.state == .counting else { return (0, 0) }
            e.pointee.runs &+= 1
            guard Int(e.pointee.runs) > js.threshold else { return (0, 0) }
            jit.compile(e, insns, count: count, mode64: mode64, ipMask: ipMask, rip: rip, flatStack32: flatStack32)
            guard e.pointee.state == .compiled else { return (0, 0) }
        } else if e.pointee.generation != generation.pointee {
            // The cache was flushed since: the block was hot, compile it again now.
            jit.compile(e, insns, count: count, mode64: mode64, ipMask: ipMask, rip: rip, flatStack32: flatStack32)
            guard e.pointee.state == .compiled else { return (0, 0) }
        }
        let n = Int(e.pointee.count)
        guard n <= limit, let code = e.pointee.code else { return (0, 0) }
        if _slowPath(e.pointee.stack32), !flatStack32 { return (0, 0) }
        let ctx = js.context
        if e.pointee.flagsIn { ctx[0] = arithFlags() | 2 }
        ctx[1] = rip
        ctx[2] = UInt64(n)
        ctx[3] = userTag
        ctx[8] = UInt64(UInt(bitPattern: host))
        // SAFETY: `code` is this generation's code for exactly the bytes the block tier has
        // just validated; it reads and writes only the 16 guest registers at `r` and the
        // context words, reads guest RAM only through pages the read TLB holds, writes it
        // only through pages the write TLB holds and outside the block's bytes, and returns.
        let f = unsafeBitCast(code, to: JITFunction.self)
        let before = js.lockstep ? lockstepState() : nil
        let delta = f(r, ctx)
        if e.pointee.flagsOut { setEager(ctx[0]) }
        let target = (rip &+ delta) & ipMask
        let done = Int(truncatingIfNeeded: ctx[2])
        // Outside 64-bit mode the masked target is always canonical.
        if _slowPath(!X86CPU.isCanonical(target)), let rewound = rewindBranch(e, n: n, done: done) { return rewound }
        rip = target
        if let before { lockstepCheck(before, done: done, insns: insns, count: count) }
        instructions &+= UInt64(done)
        jitRunCount &+= 1
        if done != n { jitSideExitCount &+= 1 }
        return (done, done == n ? Int(e.pointee.byteLength) : Int(truncatingIfNeeded: delta))
    }
}

extension X86CPU {
    /// The compiled block ended in a JMP/Jcc to a non-canonical target (it changed nothing
    /// but RIP): rewinds to that branch, so the block tier runs it and raises #GP there
    /// (CALL and RET check in the compiled code). nil when the block ended otherwise.
    @inline(never)
    func rewindBranch(_ e: UnsafeMutablePointer<JITEntry>, n: Int, done: Int) -> (done: Int, bytes: Int)? {
        guard done == n, e.pointee.branchStart != JITEntry.noBranch else { return nil }
        let at = Int(e.pointee.branchStart)
        rip = (rip &+ UInt64(at)) & ipMask
        instructions &+= UInt64(n - 1)
        jitRunCount &+= 1
        jitSideExitCount &+= 1
        return (n - 1, at)
    }

    /// Outside 64-bit mode: the stack is ESP in a segment based at 0 (SS.B = 1), so the JIT
    /// may address it as the linear (ESP +/- n) mod 2^32 (the interpreter checks no
    /// segment limits either).
    var flatStack32: Bool { @inline(never) get { !mode64 && stackSize == 4 && seg[SReg.ss].base == 0 } }

    @inline(never) func makeJITView() -> JITView {
        let j = jit
        let v = JITView(entries: j.entries, context: j.context, generation: j.cache?.generationWord, threshold: j.threshold,
                        lockstep: JITState.lockstep)
        // The read bank of the TLB (`Access.read`): fixed for the CPU's lifetime.
        j.context[4] = UInt64(UInt(bitPattern: tlbTag))
        j.context[5] = UInt64(UInt(bitPattern: tlbHost))
        // The write bank (`Access.write`).
        j.context[6] = UInt64(UInt(bitPattern: tlbTag + X86CPU.tlbSize))
        j.context[7] = UInt64(UInt(bitPattern: tlbHost + X86CPU.tlbSize))
        jitView = v
        return v
    }
}


// MARK: - Lockstep checking (SWIFTVMM_JIT_CHECK)

struct JITLockstepState {
    var regs: [UInt64]
    var rip: UInt64
    var flags: UInt64
    var instructions: UInt64
    /// The RAM pages the write TLB maps (the only ones compiled code can store to), with
    /// their contents.
    var pages: [(UnsafeMutableRawPointer, [UInt8])]
}

extension X86CPU {
    @inline(never) func lockstepState(withPages: Bool = true) -> JITLockstepState {
        var pages: [(UnsafeMutableRawPointer, [UInt8])] = []
        if withPages {
            var seen = Set<UInt>()
            for i in 0..<X86CPU.tlbSize where tlbTag[X86CPU.tlbSize + i] != .max {
                let host = tlbHost[X86CPU.tlbSize + i]
                guard host != 0, seen.insert(host).inserted, let p = UnsafeMutableRawPointer(bitPattern: host) else { continue }
                // SAFETY: the write TLB holds only pointers to whole 4 KiB RAM pages.
                pages.append((p, [UInt8](UnsafeRawBufferPointer(start: p, count: 4096))))
            }
        }
        return JITLockstepState(regs: (0..<16).map { r[$0] }, rip: rip, flags: arithFlags(), instructions: instructions,
                                pages: pages)
    }

    /// Reruns the `done` instructions the compiled code just retired on the interpreter from
    /// `before` (registers, flags and the writable pages put back) and compares RIP,
    /// registers, arithmetic flags and those pages; on a difference prints them and exits
    /// the process.
    @inline(never) func lockstepCheck(_ before: JITLockstepState, done: Int, insns: UnsafePointer<Insn>, count: Int) {
        var after = lockstepState(withPages: false)
        after.pages = before.pages.map { p, _ in (p, [UInt8](UnsafeRawBufferPointer(start: p, count: 4096))) }
        for i in 0..<16 { r[i] = before.regs[i] }
        rip = before.rip
        setEager(before.flags)
        // SAFETY: the same whole RAM pages as above.
        for (p, bytes) in before.pages { bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: 4096) } }
        let exceptionsBefore = EmulatorTrace.printed
        for _ in 0..<done { step() }
        let interp = lockstepState(withPages: false)
        instructions = after.instructions
        let regsDiffer = (0..<16).filter { interp.regs[$0] != after.regs[$0] }
        var pageDiffs: [String] = []
        for (k, (p, jitBytes)) in after.pages.enumerated() {
            // SAFETY: as above.
            let now = UnsafeRawBufferPointer(start: p, count: 4096)
            if let off = (0..<4096).first(where: { now[$0] != jitBytes[$0] }) {
                pageDiffs.append("  page \(k) (host \(p)) +0x\(String(off, radix: 16)): before \(before.pages[k].1[off]) jit \(jitBytes[off]) interp \(now[off])")
            }
        }
        if interp.rip == after.rip && regsDiffer.isEmpty && interp.flags == after.flags && pageDiffs.isEmpty { return }
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        var lines = ["jit lockstep: block at \(hex(before.rip)) (\(done) of \(count) instructions: "
                     + (0..<count).map { String(insns[$0].op, radix: 16) }.joined(separator: " ") + ") differs from the interpreter"]
        lines.append("  rip: jit \(hex(after.rip)) interp \(hex(interp.rip))")
        lines.append("  flags: before \(hex(before.flags)) jit \(hex(after.flags)) interp \(hex(interp.flags))")
        for i in regsDiffer { lines.append("  r\(i): before \(hex(before.regs[i])) jit \(hex(after.regs[i])) interp \(hex(interp.regs[i]))") }
        lines += pageDiffs
        lines.append("  registers before: " + (0..<16).map { "r\($0)=\(hex(before.regs[$0]))" }.joined(separator: " "))
        if EmulatorTrace.printed != exceptionsBefore { lines.append("  (the interpreter raised an exception)") }
        for l in lines { EmulatorTrace.emit(l) }
        exit(3)
    }
}

import CKVM   // chostatomics.h only

// MARK: - LOCK-prefixed read-modify-writes as host atomics

/// A LOCK-prefixed read-modify-write (and XCHG with memory, implicitly locked) whose
/// operand lies in one RAM page runs as a compare-and-swap loop on the guest page's host
/// address, so it is atomic against other host threads touching the same guest memory
/// (other vCPUs in parallel mode, `SWIFTVMM_EMU_PARALLEL`, and device threads). The
/// address is translated for write first, exactly as the plain path does (same faults in
/// the same order, accessed/dirty bits), and the result and flags are recomputed from the
/// freshly read old value on each retry, so the last, successful try's flags stand.
///
/// The CAS acts on the aligned 8-byte word holding the operand (the other bytes are
/// written back unchanged, or the CAS fails and retries), so any operand that does not
/// cross an 8-byte boundary is atomic. Operands that cross one (a misaligned LOCK: a split
/// lock), cross a page or hit MMIO take the plain path (`hostAtomicUpdate` returns false):
/// atomic under the turnstile; with parallel vCPUs that path runs with every other vCPU
/// stopped (`splitLocked`, `SplitLockGate`).
@inline(__always)
func hostAtomicUpdate(_ p: UnsafeMutableRawPointer, _ size: Int, _ f: (UInt64) -> UInt64) -> Bool {
    let addr = UInt(bitPattern: p)
    let within = Int(addr & 7)
    guard within &+ size <= 8, let word = UnsafeMutableRawPointer(bitPattern: addr & ~7) else { return false }
    let shift = UInt64(within &* 8)
    let mask = sizeMask(size) << shift
    // SAFETY: `word` is the 8-byte-aligned word holding the operand's bytes; the operand is
    // inside one 4 KiB RAM page (the caller got `p` from `rmwPointer`) and an aligned word
    // never crosses a page, so all 8 bytes are mapped guest RAM.
    var old = cha_load(word, 8)
    while true {
        let new = (old & ~mask) | ((f((old & mask) >> shift) << shift) & mask)
        if cha_cas(word, 8, &old, new) { return true }
    }
}

extension X86CPU {
    /// Runs the plain (non-atomic) path of a locked instruction: directly, or with every
    /// other vCPU stopped when the VM runs vCPUs in parallel. `locked` false: just `body`.
    @inline(__always)
    func splitLocked(_ locked: Bool, _ body: () throws(X86Fault) -> Void) throws(X86Fault) {
        if locked, let gate = splitLockGate { try stopTheWorld(gate, body) } else { try body() }
    }

    @inline(never)
    func stopTheWorld(_ gate: SplitLockGate, _ body: () throws(X86Fault) -> Void) throws(X86Fault) {
        try gate.exclusive(body)
    }

    /// LOCK ALU op (0 add, 1 or, 2 adc, 3 sbb, 4 and, 5 sub, 6 xor) on the host page.
    /// False: not atomic on the host (see `hostAtomicUpdate`); nothing was done.
    @inline(__always)
    func lockedALU(_ p: UnsafeMutableRawPointer, _ kind: Int, _ size: Int, _ src: UInt64) -> Bool {
        // ADC/SBB read CF, which a failed try has already overwritten: restore it.
        let flagsIn = arithFlags()
        var tries = 0
        return hostAtomicUpdate(p, size) { old in
            if tries > 0 { setEager(flagsIn) }
            tries &+= 1
            return alu(kind, old, src, size)
        }
    }

    /// LOCK INC/DEC/NOT/NEG (0-3) on the host page. INC/DEC keep CF, which no try changes.
    @inline(__always)
    func lockedUnary(_ p: UnsafeMutableRawPointer, _ kind: Int, _ size: Int) -> Bool {
        hostAtomicUpdate(p, size) { old in unary(kind, old, size) }
    }

    /// XCHG with memory (always locked): returns the old value, nil when not atomic here.
    @inline(__always)
    func lockedExchange(_ p: UnsafeMutableRawPointer, _ size: Int, _ value: UInt64) -> UInt64? {
        var seen: UInt64 = 0
        guard hostAtomicUpdate(p, size, { old in seen = old; return value }) else { return nil }
        return seen
    }

    /// LOCK XADD: memory gets old + src with ADD's flags; returns the old value.
    @inline(__always)
    func lockedXADD(_ p: UnsafeMutableRawPointer, _ size: Int, _ src: UInt64) -> UInt64? {
        var seen: UInt64 = 0
        guard hostAtomicUpdate(p, size, { old in seen = old; return alu(0, old, src, size) }) else { return nil }
        return seen
    }

    /// LOCK CMPXCHG (and CMPXCHG8B's 8-byte compare): stores `src` if memory equals
    /// `expected`, else writes the old value back (as the hardware's locked cycle does);
    /// returns the value found, nil when not atomic here.
    @inline(__always)
    func lockedCompareExchange(_ p: UnsafeMutableRawPointer, _ size: Int, expected: UInt64, _ src: UInt64) -> UInt64? {
        var seen: UInt64 = 0
        guard hostAtomicUpdate(p, size, { old in seen = old; return old == expected ? src : old }) else { return nil }
        return seen
    }

    /// LOCK BTS/BTR/BTC (1-3) of bit `bit` on the host page: returns the old value.
    @inline(__always)
    func lockedBitOp(_ p: UnsafeMutableRawPointer, _ kind: Int, _ size: Int, bit: UInt64) -> UInt64? {
        var seen: UInt64 = 0
        let ok = hostAtomicUpdate(p, size) { old in
            seen = old
            switch kind {
            case 1: return old | (1 << bit)
            case 2: return old & ~(1 << bit)
            default: return old ^ (1 << bit)
            }
        }
        return ok ? seen : nil
    }

    /// LOCK CMPXCHG16B at the 16-byte-aligned host address `p`: (found lo, hi, success),
    /// nil when the host has no 16-byte CAS.
    @inline(__always)
    func lockedCompareExchange16(_ p: UnsafeMutableRawPointer, expected: (UInt64, UInt64),
                                 _ new: (UInt64, UInt64)) -> (UInt64, UInt64, Bool)? {
        guard cha_has_cas16() else { return nil }
        var e: (UInt64, UInt64) = expected
        var n: (UInt64, UInt64) = new
        // SAFETY: p is 16-byte aligned (CMPXCHG16B raised #GP otherwise) and inside one RAM
        // page (rmwPointer); `e` and `n` are two-element UInt64 tuples, laid out as arrays.
        let ok = withUnsafeMutablePointer(to: &e) { ep in
            withUnsafeMutablePointer(to: &n) { np in
                ep.withMemoryRebound(to: UInt64.self, capacity: 2) { e2 in
                    np.withMemoryRebound(to: UInt64.self, capacity: 2) { n2 in cha_cas16(p, e2, n2) }
                }
            }
        }
        return (e.0, e.1, ok)
    }
}

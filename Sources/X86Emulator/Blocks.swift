#if canImport(Glibc)
import Glibc
#endif

// MARK: - Translation blocks (SWIFTVMM_CPU_TIER=block)

/// Which execution tier `X86CPU.run(budget:)` uses: `interp` decodes one instruction at a
/// time through the decoded-instruction cache; `block` runs decoded basic blocks
/// (`BlockCache`); `jit` runs the same blocks, with hot ones compiled to host code
/// (`JIT.swift`). Chosen once per process from `SWIFTVMM_CPU_TIER` (default `interp`
/// until the other tiers have passed the Linux boot tests).
public enum CPUTier: String, Sendable {
    case interp, block, jit

    public static let fromEnvironment: CPUTier = {
        if let p = getenv("SWIFTVMM_CPU_TIER"), let t = CPUTier(rawValue: String(cString: p)) { return t }
        return .interp
    }()
}

/// One block's header: key (host address of its first byte | decode mode << 56; 0 =
/// empty), instruction count, byte length, and which instructions may store to memory
/// (after those the rest of the block is compared again: a store into the block itself).
struct BlockHeader {
    var key: UInt = 0
    var mayStore: UInt32 = 0
    var count: UInt16 = 0
    var byteLen: UInt16 = 0
}

/// Direct-mapped cache of decoded basic blocks, per vCPU. Each slot holds its header, up
/// to `maxInsns` decoded instructions stored densely, and a copy of the block's guest
/// bytes (at most `maxBytes`), which are compared with guest memory on every entry.
final class BlockCache {
    static let slotBits = 11
    static let slots = 1 << slotBits
    static let maxInsns = 16
    static let maxBytes = 128

    let headers: UnsafeMutablePointer<BlockHeader>
    let insns: UnsafeMutablePointer<Insn>
    let bytes: UnsafeMutableRawPointer
    /// Statistics for benchmarks: blocks built (hits are counted in `X86CPU.blockHitCount`).
    var builds: UInt64 = 0

    init() {
        headers = .allocate(capacity: BlockCache.slots)
        headers.initialize(repeating: BlockHeader(), count: BlockCache.slots)
        insns = .allocate(capacity: BlockCache.slots * BlockCache.maxInsns)
        insns.initialize(repeating: Insn(), count: BlockCache.slots * BlockCache.maxInsns)
        bytes = .allocate(byteCount: BlockCache.slots * BlockCache.maxBytes, alignment: 64)
    }

    deinit {
        headers.deallocate(); insns.deallocate(); bytes.deallocate()
    }

    var view: BlockCacheView { BlockCacheView(headers: headers, insns: insns, bytes: bytes) }

    @inline(__always) static func slot(_ key: UInt) -> Int {
        Int(truncatingIfNeeded: (key ^ (key >> UInt(slotBits)) ^ (key >> 24)) & UInt(slots - 1))
    }
}

/// `BlockCache`'s arrays (kept in the CPU, so the per-block path does no reference counting).
struct BlockCacheView {
    let headers: UnsafeMutablePointer<BlockHeader>
    let insns: UnsafeMutablePointer<Insn>
    let bytes: UnsafeMutableRawPointer
}

extension Insn {
    /// Whether a basic block may go on after this instruction: it does not change control
    /// flow, CPU mode, segments, IF or the interrupt shadow, does not need the VMM by its
    /// nature (port I/O, HLT, PAUSE) and is not a REP string instruction (those yield in
    /// the middle). Anything not listed ends the block, so new opcodes are safe by default.
    var continuesBlock: Bool {
        let o = op
        switch o {
        case 0x00...0x05, 0x08...0x0D, 0x10...0x15, 0x18...0x1D, 0x20...0x25, 0x28...0x2D,
             0x30...0x35, 0x38...0x3D, 0x27, 0x2F, 0x37, 0x3F,
             0x40...0x5F, 0x63, 0x68...0x6B,
             0x80...0x8D, 0x8F, 0x91...0x99, 0x9C, 0x9E, 0x9F, 0xA0...0xA3, 0xA8, 0xA9,
             0xB0...0xBF, 0xC0, 0xC1, 0xC6, 0xC7, 0xC8, 0xC9, 0xD0...0xD3, 0xD8...0xDF,
             0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFC, 0xFD, 0xFE:
            return true
        case 0x90: return rep == 0           // F3 90 is PAUSE
        case 0xA4...0xA7, 0xAA...0xAF: return rep == 0
        case 0xFF: return reg & 7 < 2 || reg & 7 == 6   // INC, DEC, PUSH
        case 0x10D, 0x110...0x117, 0x118...0x11F, 0x128...0x12F, 0x140...0x17F,
             0x190...0x19F, 0x1A3...0x1A5, 0x1AB...0x1AD, 0x1AF, 0x1B0...0x1B7, 0x1BA...0x1FF,
             0x200...0x3FF:
            return true
        default:
            return false
        }
    }

    /// Whether this instruction can only touch registers (so it cannot store into the
    /// block it is part of). Conservative: anything else counts as a possible store.
    var registersOnly: Bool {
        let o = op
        switch o {
        case 0x40...0x4F, 0x90...0x99, 0x9E, 0x9F, 0xA8, 0xA9, 0xB0...0xBF, 0xF5, 0xF8, 0xF9,
             0xFC, 0xFD, 0x04, 0x05, 0x0C, 0x0D, 0x14, 0x15, 0x1C, 0x1D, 0x24, 0x25, 0x2C, 0x2D,
             0x34, 0x35, 0x3C, 0x3D, 0x1C8...0x1CF:
            return true
        case 0x00...0x03, 0x08...0x0B, 0x10...0x13, 0x18...0x1B, 0x20...0x23, 0x28...0x2B,
             0x30...0x33, 0x38...0x3B, 0x63, 0x69, 0x6B, 0x80...0x8B, 0xC0, 0xC1, 0xC6, 0xC7,
             0xD0...0xD3, 0xF6, 0xF7, 0xFE, 0x140...0x14F, 0x190...0x19F, 0x1A3...0x1A5,
             0x1AB...0x1AD, 0x1AF, 0x1B0...0x1B7, 0x1BA...0x1C1:
            return mod == 3
        default:
            return false
        }
    }
}

extension X86CPU {
    /// The block tier's run loop: same contract as the interpreter's (`run(budget:)`).
    /// Per instruction it still tests the attention word (one load), so a queued exit, a
    /// kick, IF 0 -> 1 or a posted interrupt are seen after the same instruction as in the
    /// interpreter; the block lookup, its byte check and the fetch/TLB check are per block.
    /// The two block loops are out of line so `run`'s interpreter loop stays small enough
    /// for `step` to inline into it.
    @inline(never) func runBlockTier(budget: Int) -> X86StopReason { runBlocks(budget: budget, jit: false) }
    @inline(never) func runJITTier(budget: Int) -> X86StopReason { runBlocks(budget: budget, jit: true) }

    @inline(__always)
    func runBlocks(budget: Int, jit: Bool) -> X86StopReason {
        let apic = self.apic
        var left = budget
        var untilTimer = 0
        while left > 0 {
            if untilTimer <= 0 {
                if apic.timerDeadline != 0 { apic.checkTimer(now: HostClock.nanoseconds()) }
                if let p = ripProfile, instructions &- profiledAt >= 2048 { profiledAt = instructions; p.sample(rip, cpl: cpl) }
                untilTimer = 2048
            }
            let n = runBlock(limit: min(left, untilTimer), jit: jit)
            left &-= n
            untilTimer &-= n
            if apic.attention.load(ordering: .relaxed) != 0, let stop = serviceAttention() { return stop }
        }
        return .budget
    }

    /// Runs the block at CS:RIP (building it on a miss), at most `limit` instructions, and
    /// stops early when the attention word is set, an instruction faults or exits, or a
    /// store changed the block's own bytes. Returns the instructions attempted. With `jit`,
    /// a compiled prefix of the block (`runCompiled`) runs first, the rest as usual.
    @inline(__always)
    func runBlock(limit: Int, jit: Bool) -> Int {
        let ip = rip & ipMask
        let startLA = (segBase(SReg.cs) &+ ip) & linearMask
        let off = Int(startLA & 0xFFF)
        guard off <= 4096 - 16, mode64 || ip &+ 15 <= ipMask else { interruptShadow = false; step(); return 1 }
        if startLA & ~0xFFF != fetchPage {
            do { _ = try fetchSlow(startLA) } catch { interruptShadow = false; step(); return 1 }
        }
        guard let page = fetchHost else { interruptShadow = false; step(); return 1 }
        let p = page + off
        let mode: UInt = mode64 ? 8 : UInt(truncatingIfNeeded: defaultSize)
        let key = UInt(bitPattern: p) | (mode << 56)
        let bc = blockView ?? makeBlockView()
        let slot = BlockCache.slot(key)
        let h = bc.headers + slot
        let copy = bc.bytes + slot &* BlockCache.maxBytes
        // SAFETY: p is inside a whole RAM page and the block's bytes end within it
        // (every instruction starts at most 4096 - 16 into the page); copy is the slot's
        // maxBytes-byte area.
        if h.pointee.key != key || memcmp(p, copy, Int(h.pointee.byteLen)) != 0 {
            guard buildBlock(p, off: off, key: key, slot: slot) else { interruptShadow = false; step(); return 1 }
        } else {
            blockHitCount &+= 1
        }
        let count = min(Int(h.pointee.count), limit)
        let mayStore = h.pointee.mayStore
        let byteLen = Int(h.pointee.byteLen)
        let insns = bc.insns + slot &* BlockCache.maxInsns
        let apic = self.apic
        var done = 0
        var pos = 0
        if jit {
            interruptShadow = false
            (done, pos) = runCompiled(slot: slot, insns: insns, count: Int(h.pointee.count), limit: count, host: p)
            if done != 0 && (done >= count || apic.attention.load(ordering: .relaxed) != 0) { return done }
        }
        while done < count {
            interruptShadow = false
            let exitsBefore = exitCount
            do {
                d = insns[done]
                let len = d.len
                nextRIP = (rip &+ UInt64(len)) & ipMask
                try execute()
                rip = nextRIP
                instructions &+= 1
                pos &+= len
            } catch {
                handle(error, exitsBefore: exitsBefore)
                return done &+ 1
            }
            done &+= 1
            if apic.attention.load(ordering: .relaxed) != 0 { return done }
            // A store may have changed the rest of this block (self-modifying code, also
            // through another mapping of the page): compare what is left.
            if mayStore & (1 << UInt32(done &- 1)) != 0, pos < byteLen,
               memcmp(p + pos, copy + pos, byteLen &- pos) != 0 {
                return done
            }
        }
        return done
    }

    /// Decodes the basic block at host address `p` (page offset `off`, CS:RIP) into `slot`.
    /// Returns false when not even its first instruction can be cached (the interpreter
    /// then runs it, raising whatever fault it has).
    @inline(never) func makeBlockView() -> BlockCacheView {
        let v = blocks.view
        blockView = v
        return v
    }

    @inline(never)
    func buildBlock(_ p: UnsafeMutableRawPointer, off: Int, key: UInt, slot: Int) -> Bool {
        let bc = blocks
        let insns = bc.insns + slot &* BlockCache.maxInsns
        let savedRIP = rip
        let savedD = d
        defer { rip = savedRIP; d = savedD; insnBytes = nil }
        var count = 0, len = 0
        var mayStore: UInt32 = 0
        var ip = rip & ipMask
        while count < BlockCache.maxInsns, off &+ len <= 4096 - 16, mode64 || ip &+ 15 <= ipMask {
            rip = ip
            do { try decode() } catch { break }
            if len &+ d.len > BlockCache.maxBytes { break }
            insns[count] = d
            if !d.registersOnly { mayStore |= 1 << UInt32(count) }
            count &+= 1
            len &+= d.len
            ip = (ip &+ UInt64(d.len)) & ipMask
            if !d.continuesBlock { break }
        }
        guard count > 0 else { return false }
        let h = bc.headers + slot
        let copy = bc.bytes + slot &* BlockCache.maxBytes
        // SAFETY: len <= maxBytes (the slot's area) and the bytes end inside p's page.
        copy.copyMemory(from: p, byteCount: len)
        // Another vCPU changed the bytes under the decoder: leave the slot empty.
        if memcmp(p, copy, len) != 0 { h.pointee = BlockHeader(); return false }
        h.pointee = BlockHeader(key: key, mayStore: mayStore, count: UInt16(count), byteLen: UInt16(len))
        bc.builds &+= 1
        jitState?.forget(slot)
        return true
    }
}

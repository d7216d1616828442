#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

// MARK: - Decoder

/// One decoded instruction: prefixes, opcode, ModRM/SIB operands and immediates.
///
/// Opcodes are numbered 0x000-0x0FF (one byte), 0x100-0x1FF (0F xx), 0x200-0x2FF (0F 38 xx),
/// 0x300-0x3FF (0F 3A xx) and 0x400-0x6FF (VEX maps 1-3, `VEX.swift`).
struct Insn {
    // Stored compactly (40 bytes) so a decoded-instruction cache hit is a cheap copy; the
    // accessors keep the natural types for the interpreter.
    var disp: UInt64 = 0
    var imm: UInt64 = 0
    private var _op: UInt16 = 0
    private var _imm2: UInt16 = 0
    private var _len: UInt8 = 0
    private var _opSize: UInt8 = 4
    private var _addrSize: UInt8 = 8
    var rep: UInt8 = 0          // 0, 0xF2 or 0xF3 (the last one wins)
    private var _seg: UInt8 = 3
    var modrm: UInt8 = 0
    private var _mod: UInt8 = 0
    private var _reg: UInt8 = 0
    private var _rm: UInt8 = 0
    private var _base: Int8 = -1
    private var _index: Int8 = -1
    private var _scale: UInt8 = 0
    var lock = false
    var has66 = false
    var hasREX = false
    var rexW = false
    var rexB = false
    var segOverride = false
    var ripRelative = false

    var op: Int { @inline(__always) get { Int(_op) } @inline(__always) set { _op = UInt16(truncatingIfNeeded: newValue) } }
    var len: Int { @inline(__always) get { Int(_len) } @inline(__always) set { _len = UInt8(truncatingIfNeeded: newValue) } }
    var opSize: Int { @inline(__always) get { Int(_opSize) } @inline(__always) set { _opSize = UInt8(truncatingIfNeeded: newValue) } }
    var addrSize: Int { @inline(__always) get { Int(_addrSize) } @inline(__always) set { _addrSize = UInt8(truncatingIfNeeded: newValue) } }
    /// Effective segment of the memory operand.
    var seg: Int { @inline(__always) get { Int(_seg) } @inline(__always) set { _seg = UInt8(truncatingIfNeeded: newValue) } }
    var mod: Int { @inline(__always) get { Int(_mod) } @inline(__always) set { _mod = UInt8(truncatingIfNeeded: newValue) } }
    /// ModRM.reg with REX.R.
    var reg: Int { @inline(__always) get { Int(_reg) } @inline(__always) set { _reg = UInt8(truncatingIfNeeded: newValue) } }
    /// ModRM.rm with REX.B (register operand when mod == 3).
    var rm: Int { @inline(__always) get { Int(_rm) } @inline(__always) set { _rm = UInt8(truncatingIfNeeded: newValue) } }
    var base: Int { @inline(__always) get { Int(_base) } @inline(__always) set { _base = Int8(truncatingIfNeeded: newValue) } }
    var index: Int { @inline(__always) get { Int(_index) } @inline(__always) set { _index = Int8(truncatingIfNeeded: newValue) } }
    var scale: UInt64 { @inline(__always) get { UInt64(_scale) } @inline(__always) set { _scale = UInt8(truncatingIfNeeded: newValue) } }
    /// The second immediate (ENTER's nesting level, a far pointer's selector).
    var imm2: UInt64 { @inline(__always) get { UInt64(_imm2) } @inline(__always) set { _imm2 = UInt16(truncatingIfNeeded: newValue) } }
    var isMem: Bool { mod != 3 }
}

/// One decoded-instruction cache entry (64 bytes, one cache line): the key (host address |
/// mode << 56; 0 = empty), the 16 bytes at that address when it was decoded (only the
/// instruction's `len` bytes are compared) and its decoding.
struct DecodedInsn {
    var key: UInt = 0
    var bytes0: UInt64 = 0
    var bytes1: UInt64 = 0
    var insn = Insn()

    /// Which bits of the first/second 8 bytes belong to an instruction of `len` (1...15) bytes.
    @inline(__always) static func mask0(_ len: Int) -> UInt64 { len >= 8 ? .max : ~(UInt64.max &<< UInt64(len &* 8)) }
    @inline(__always) static func mask1(_ len: Int) -> UInt64 { len <= 8 ? 0 : ~(UInt64.max &<< UInt64((len &- 8) &* 8)) }
}

/// Operand kinds from the opcode tables.
enum ImmKind: UInt8 {
    case none = 0, ib, iw, iz, iv, moffs, iwib, farptr
}

/// Per-opcode decoding attributes: bit 7 = has ModRM, bits 0-3 = ImmKind.
enum OpcodeTable {
    static let oneByte: [UInt8] = {
        var t = [UInt8](repeating: 0, count: 256)
        let M: UInt8 = 0x80
        func imm(_ k: ImmKind) -> UInt8 { k.rawValue }
        for base in stride(from: 0, to: 0x40, by: 8) {
            t[base] = M; t[base + 1] = M; t[base + 2] = M; t[base + 3] = M
            t[base + 4] = imm(.ib); t[base + 5] = imm(.iz)
        }
        t[0x62] = M; t[0x63] = M
        t[0x68] = imm(.iz); t[0x69] = M | imm(.iz); t[0x6A] = imm(.ib); t[0x6B] = M | imm(.ib)
        for o in 0x70...0x7F { t[o] = imm(.ib) }
        t[0x80] = M | imm(.ib); t[0x81] = M | imm(.iz); t[0x82] = M | imm(.ib); t[0x83] = M | imm(.ib)
        for o in 0x84...0x8F { t[o] = M }
        t[0x9A] = imm(.farptr)
        for o in 0xA0...0xA3 { t[o] = imm(.moffs) }
        t[0xA8] = imm(.ib); t[0xA9] = imm(.iz)
        for o in 0xB0...0xB7 { t[o] = imm(.ib) }
        for o in 0xB8...0xBF { t[o] = imm(.iv) }
        t[0xC0] = M | imm(.ib); t[0xC1] = M | imm(.ib); t[0xC2] = imm(.iw)
        t[0xC4] = M; t[0xC5] = M; t[0xC6] = M | imm(.ib); t[0xC7] = M | imm(.iz)
        t[0xC8] = imm(.iwib); t[0xCA] = imm(.iw); t[0xCD] = imm(.ib)
        for o in 0xD0...0xD3 { t[o] = M }
        t[0xD4] = imm(.ib); t[0xD5] = imm(.ib)
        for o in 0xD8...0xDF { t[o] = M }
        for o in 0xE0...0xE7 { t[o] = imm(.ib) }
        t[0xE8] = imm(.iz); t[0xE9] = imm(.iz); t[0xEA] = imm(.farptr); t[0xEB] = imm(.ib)
        t[0xF6] = M; t[0xF7] = M; t[0xFE] = M; t[0xFF] = M
        return t
    }()

    static let twoByte: [UInt8] = {
        var t = [UInt8](repeating: 0x80, count: 256)   // most 0F opcodes have ModRM
        for o in [0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37,
                  0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA] { t[o] = 0 }
        for o in 0xC8...0xCF { t[o] = 0 }
        for o in 0x80...0x8F { t[o] = ImmKind.iz.rawValue }
        for o in [0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6] { t[o] = 0x80 | ImmKind.ib.rawValue }
        return t
    }()
}

extension X86CPU {
    /// Decodes the instruction at CS:RIP into `d`.
    @inline(__always)
    func decode() throws(X86Fault) {
        // When the whole (at most 15-byte) instruction lies in the current fetch page, read
        // its bytes straight from the host page.
        insnBytes = nil
        let startLA = (segBase(SReg.cs) &+ (rip & ipMask)) & linearMask
        if startLA & 0xFFF <= 4096 - 15 {
            if startLA & ~0xFFF != fetchPage { _ = try fetchSlow(startLA) }
            if let h = fetchHost, mode64 || (rip & ipMask) &+ 15 <= ipMask {
                insnBytes = h + Int(startLA & 0xFFF)
            }
        }
        var n = 0
        var b = try fetch8(0)
        var has66 = false, has67 = false
        var rep: UInt8 = 0, lock = false
        var segOv = -1
        var rex: UInt8 = 0
        // Prefixes.
        while true {
            switch b {
            case 0x66: has66 = true; rex = 0
            case 0x67: has67 = true; rex = 0
            case 0xF0: lock = true; rex = 0
            case 0xF2, 0xF3: rep = b; rex = 0
            case 0x26: segOv = 0; rex = 0
            case 0x2E: segOv = 1; rex = 0
            case 0x36: segOv = 2; rex = 0
            case 0x3E: segOv = 3; rex = 0
            case 0x64: segOv = 4; rex = 0
            case 0x65: segOv = 5; rex = 0
            case 0x40...0x4F where mode64: rex = b
            default:
                break
            }
            if (b >= 0x40 && b <= 0x4F && mode64) || b == 0x66 || b == 0x67 || b == 0xF0 || b == 0xF2 || b == 0xF3
                || b == 0x26 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x64 || b == 0x65 {
                n &+= 1
                if n >= 14 { throw gpFault() }
                b = try fetch8(n)
                continue
            }
            break
        }
        n &+= 1
        var op = Int(b)
        var attr: UInt8
        var vex: VEXPrefix? = nil
        if b == 0xC4 || b == 0xC5,
           let v = try decodeVEX(b, &n, prefixed: has66 || rep != 0 || lock || rex != 0) {
            vex = v; op = v.op; attr = v.attr; rex = v.rex
        } else if b == 0x0F {
            let b2 = try fetch8(n); n &+= 1
            if b2 == 0x38 {
                op = 0x200 | Int(try fetch8(n)); n &+= 1
                attr = 0x80
            } else if b2 == 0x3A {
                op = 0x300 | Int(try fetch8(n)); n &+= 1
                attr = 0x80 | ImmKind.ib.rawValue
            } else {
                op = 0x100 | Int(b2)
                attr = opcodeAttributes[256 &+ Int(b2)]
            }
        } else {
            attr = opcodeAttributes[Int(b)]
        }
        d.op = op
        d.has66 = has66; d.rep = rep; d.lock = lock
        d.hasREX = rex != 0
        d.rexW = rex & 8 != 0
        d.rexB = rex & 1 != 0
        if mode64 {
            d.opSize = d.rexW ? 8 : (has66 ? 2 : 4)
            d.addrSize = has67 ? 4 : 8
        } else {
            d.opSize = has66 ? (defaultSize == 4 ? 2 : 4) : defaultSize
            d.addrSize = has67 ? (defaultSize == 4 ? 2 : 4) : defaultSize
        }
        if let v = vex { d.applyVEX(v, mode64: mode64) }
        d.base = -1; d.index = -1; d.scale = 0; d.disp = 0; d.ripRelative = false
        d.segOverride = segOv >= 0
        d.seg = segOv >= 0 ? segOv : SReg.ds
        if attr & 0x80 != 0 {
            let m = try fetch8(n); n &+= 1
            d.modrm = m
            d.mod = Int(m >> 6)
            d.reg = Int((m >> 3) & 7) | (rex & 4 != 0 ? 8 : 0)
            let rmLow = Int(m & 7)
            d.rm = rmLow | (rex & 1 != 0 ? 8 : 0)
            if d.mod != 3 {
                if d.addrSize == 2 {
                    switch rmLow {
                    case 0: d.base = 3; d.index = 6
                    case 1: d.base = 3; d.index = 7
                    case 2: d.base = 5; d.index = 6; if segOv < 0 { d.seg = SReg.ss }
                    case 3: d.base = 5; d.index = 7; if segOv < 0 { d.seg = SReg.ss }
                    case 4: d.base = 6
                    case 5: d.base = 7
                    case 6:
                        if d.mod != 0 { d.base = 5; if segOv < 0 { d.seg = SReg.ss } }
                    default: d.base = 3
                    }
                    if d.mod == 1 {
                        d.disp = signExtend(UInt64(try fetch8(n)), 1); n &+= 1
                    } else if d.mod == 2 || (d.mod == 0 && rmLow == 6) {
                        d.disp = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
                    }
                } else {
                    var baseLow = rmLow
                    if rmLow == 4 {
                        let sib = try fetch8(n); n &+= 1
                        let idx = Int((sib >> 3) & 7) | (rex & 2 != 0 ? 8 : 0)
                        if idx != 4 { d.index = idx; d.scale = UInt64(sib >> 6) }
                        else if vex != nil { d.scale = UInt64(sib >> 6) }   // a VSIB index may be xmm4 (`vexGather`)
                        baseLow = Int(sib & 7)
                        if baseLow == 5 && d.mod == 0 {
                            d.base = -1
                            d.disp = signExtend(try fetch32(n), 4); n &+= 4
                        } else {
                            d.base = baseLow | (rex & 1 != 0 ? 8 : 0)
                        }
                    } else if rmLow == 5 && d.mod == 0 {
                        d.disp = signExtend(try fetch32(n), 4); n &+= 4
                        if mode64 { d.ripRelative = true }
                    } else {
                        d.base = d.rm
                    }
                    if d.base == 4 || d.base == 5 { if segOv < 0 { d.seg = SReg.ss } }
                    if d.mod == 1 {
                        d.disp = signExtend(UInt64(try fetch8(n)), 1); n &+= 1
                    } else if d.mod == 2 {
                        d.disp = signExtend(try fetch32(n), 4); n &+= 4
                    }
                }
            }
        }
        // Near branches in 64-bit mode (CALL, RET, JMP, Jcc; SDM Vol. 1 6.3.7): the operand
        // size is forced to 64 bits and 0x66 is silently ignored, as on Intel (CPUID says
        // GenuineIntel): a relative one still has a 32-bit displacement.
        if mode64 {
            switch op {
            case 0xC2, 0xC3, 0xE8, 0xE9, 0x180...0x18F: d.opSize = 8
            case 0xFF where d.reg & 7 == 2 || d.reg & 7 == 4: d.opSize = 8
            default: break
            }
        }
        // Immediates.
        var kind = ImmKind(rawValue: attr & 0xF) ?? .none
        if op == 0xF6 && d.reg & 7 < 2 { kind = .ib }
        if op == 0xF7 && d.reg & 7 < 2 { kind = .iz }
        switch kind {
        case .none: break
        case .ib: d.imm = UInt64(try fetch8(n)); n &+= 1
        case .iw: d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
        case .iz:
            if d.opSize == 2 || (op >= 0x180 && op <= 0x18F && !mode64 && d.opSize == 2) {
                d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
            } else {
                d.imm = try fetch32(n); n &+= 4
            }
        case .iv:
            if d.opSize == 8 {
                d.imm = try fetch32(n) | (try fetch32(n &+ 4)) << 32; n &+= 8
            } else if d.opSize == 4 {
                d.imm = try fetch32(n); n &+= 4
            } else {
                d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
            }
        case .moffs:
            if d.addrSize == 8 {
                d.imm = try fetch32(n) | (try fetch32(n &+ 4)) << 32; n &+= 8
            } else if d.addrSize == 4 {
                d.imm = try fetch32(n); n &+= 4
            } else {
                d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
            }
        case .iwib:
            d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8
            d.imm2 = UInt64(try fetch8(n &+ 2)); n &+= 3
        case .farptr:
            if mode64 { throw udFault() }
            if d.opSize == 4 { d.imm = try fetch32(n); n &+= 4 }
            else { d.imm = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2 }
            d.imm2 = UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8; n &+= 2
        }
        if n > 15 { throw gpFault() }
        if lock { try checkLockPrefix(op, hasModRM: attr & 0x80 != 0) }
        d.len = n
    }

    /// Decodes the instruction at CS:RIP into `d` through the decoded-instruction cache.
    ///
    /// An entry keeps the raw bytes the instruction was decoded from, and a hit requires
    /// those bytes to still be in guest memory: every hit re-reads the (at most 15, masked
    /// to the instruction's length) bytes at the instruction's host address and compares.
    /// So self-modifying code, code patched by the guest kernel (alternatives, static
    /// keys), and DMA into code pages need no invalidation: a changed byte is a miss.
    /// The fetch itself still goes through the execute TLB (permissions, NX). Instructions
    /// within 16 bytes of a page end, or whose IP wraps, are decoded without the cache.
    @inline(__always) @discardableResult
    func decodeCached() throws(X86Fault) -> Int {
        let ip = rip & ipMask
        let startLA = (segBase(SReg.cs) &+ ip) & linearMask
        let off = Int(startLA & 0xFFF)
        guard off <= 4096 - 16, mode64 || ip &+ 15 <= ipMask else { try decode(); return d.len }
        if startLA & ~0xFFF != fetchPage { _ = try fetchSlow(startLA) }
        guard let h = fetchHost else { try decode(); return d.len }
        let p = h + off
        // SAFETY: fetchHost is a whole 4 KiB RAM page from the TLB and off + 16 <= 4096.
        let w0 = hostLoad64(p)
        let w1 = hostLoad64(p, 8)
        let mode: UInt = mode64 ? 8 : UInt(truncatingIfNeeded: defaultSize)
        let key = UInt(bitPattern: p) | (mode << 56)
        let idx = Int(truncatingIfNeeded: (key ^ (key >> X86CPU.icacheBits)) & UInt((1 << X86CPU.icacheBits) - 1))
        let e = icache + idx
        if e.pointee.key == key {
            let len = e.pointee.insn.len
            if (w0 ^ e.pointee.bytes0) & DecodedInsn.mask0(len) == 0 && (w1 ^ e.pointee.bytes1) & DecodedInsn.mask1(len) == 0 {
                icacheHits &+= 1
                d = e.pointee.insn
                return len
            }
        }
        icacheMisses &+= 1
        try decode()
        // Fill only if the bytes did not change under the decoder (another vCPU's store).
        let len = d.len
        let m0 = DecodedInsn.mask0(len), m1 = DecodedInsn.mask1(len)
        guard (hostLoad64(p) ^ w0) & m0 == 0,
              (hostLoad64(p, 8) ^ w1) & m1 == 0 else { return len }
        e.pointee = DecodedInsn(key: key, bytes0: w0, bytes1: w1, insn: d)
        return len
    }

    @inline(__always) func fetch32(_ n: Int) throws(X86Fault) -> UInt64 {
        UInt64(try fetch8(n)) | UInt64(try fetch8(n &+ 1)) << 8 | UInt64(try fetch8(n &+ 2)) << 16 | UInt64(try fetch8(n &+ 3)) << 24
    }

    /// The effective address (offset within the segment) of the memory operand.
    @inline(__always) func effectiveAddress() -> UInt64 {
        var a = d.disp
        if d.base >= 0 { a = a &+ r[d.base] }
        if d.index >= 0 { a = a &+ (r[d.index] << d.scale) }
        if d.ripRelative { a = a &+ nextRIP }
        switch d.addrSize {
        case 2: return a & 0xFFFF
        case 4: return a & 0xFFFF_FFFF
        default: return a
        }
    }

    // MARK: ModRM operand access

    // The register forms inline; the memory forms are one out-of-line call each (with the
    // whole memory path inline there), so these stay small enough to inline everywhere.
    @inline(__always) func readRM(_ size: Int) throws(X86Fault) -> UInt64 {
        if d.mod == 3 { return reg(d.rm, size) }
        return try readRMMemory(size)
    }

    @inline(never) func readRMMemory(_ size: Int) throws(X86Fault) -> UInt64 {
        try readMem(d.seg, effectiveAddress(), size)
    }

    @inline(__always) func writeRM(_ size: Int, _ v: UInt64) throws(X86Fault) {
        if d.mod == 3 { setReg(d.rm, size, v); return }
        try writeRMMemory(size, v)
    }

    @inline(never) func writeRMMemory(_ size: Int, _ v: UInt64) throws(X86Fault) {
        try writeMem(d.seg, effectiveAddress(), size, v)
    }
}

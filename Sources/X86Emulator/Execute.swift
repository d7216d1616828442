#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

// MARK: - Execute

@inline(__always) func loadSized(_ p: UnsafeMutableRawPointer, _ size: Int) -> UInt64 {
    // SAFETY: callers pass a pointer into a RAM page with `size` bytes available.
    switch size {
    case 1: return UInt64(p.load(as: UInt8.self))
    case 2: return UInt64(hostLoad16(p))
    case 4: return UInt64(hostLoad32(p))
    default: return hostLoad64(p)
    }
}

@inline(__always) func storeSized(_ p: UnsafeMutableRawPointer, _ size: Int, _ v: UInt64) {
    // SAFETY: callers pass a pointer into a RAM page with `size` bytes available.
    switch size {
    case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
    case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian, as: UInt16.self)
    case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: v).littleEndian, as: UInt32.self)
    default: p.storeBytes(of: v.littleEndian, as: UInt64.self)
    }
}

extension X86CPU {
    // MARK: helpers

    /// A host pointer for a read-modify-write of `size` bytes at linear `la`, after the
    /// write permission check; nil when the access crosses a page or hits MMIO (then use
    /// readLinear/writeLinear, which handle both).
    @inline(__always) func rmwPointer(_ la: UInt64, _ size: Int) throws(X86Fault) -> UnsafeMutableRawPointer? {
        let off = Int(la & 0xFFF)
        if off &+ size <= 4096 {
            if let page = try hostPage(la, .write, user: cpl == 3) { return page + off }
            return nil
        }
        _ = try hostPage(la, .write, user: cpl == 3)
        _ = try hostPage((la &+ UInt64(size &- 1)) & linearMask, .write, user: cpl == 3)
        return nil
    }

    /// The operand size of an instruction that implicitly uses the stack. In 64-bit mode it
    /// defaults to 64 bits, 0x66 makes it 16 and REX.W takes precedence over 0x66 (64): the
    /// decoder's operand size is 2 exactly for 0x66 without REX.W (and never for a near
    /// branch, which it forces to 8).
    @inline(__always) var stackOpSize: Int { mode64 ? (d.opSize == 2 ? 2 : 8) : d.opSize }

    /// Whether `x` is a canonical 48-bit linear address.
    @inline(__always) static func isCanonical(_ x: UInt64) -> Bool {
        UInt64(bitPattern: Int64(bitPattern: x << 16) >> 16) == x
    }

    /// A near branch to `target`: in 64-bit mode a non-canonical target raises #GP(0) at
    /// the branch (nothing changed), not at the fetch there; outside it the target is
    /// truncated to the operand size.
    @inline(__always) func branch(_ target: UInt64) throws(X86Fault) {
        if mode64 {
            guard X86CPU.isCanonical(target) else { throw gpFault() }
            nextRIP = target
        } else { nextRIP = target & (d.opSize == 2 ? 0xFFFF : 0xFFFF_FFFF) }
    }

    @inline(__always) func setIndex(_ i: Int, _ v: UInt64) {
        switch d.addrSize {
        case 2: r[i] = (r[i] & ~0xFFFF) | (v & 0xFFFF)
        case 4: r[i] = v & 0xFFFF_FFFF
        default: r[i] = v
        }
    }

    @inline(__always) func alu(_ kind: Int, _ a: UInt64, _ b: UInt64, _ size: Int) -> UInt64 {
        let m = sizeMask(size)
        switch kind {
        case 0: let res = (a &+ b) & m; setLazy(.add, a, b, res, size, cf: res < a); return res
        case 1: let res = (a | b) & m; setLazy(.logic, 0, 0, res, size, cf: false); return res
        case 2:
            if cf {
                let res = (a &+ b &+ 1) & m; setLazy(.adc, a, b, res, size, cf: res <= a); return res
            }
            let res = (a &+ b) & m; setLazy(.add, a, b, res, size, cf: res < a); return res
        case 3:
            if cf {
                let res = (a &- b &- 1) & m; setLazy(.sbb, a, b, res, size, cf: a <= b); return res
            }
            let res = (a &- b) & m; setLazy(.sub, a, b, res, size, cf: a < b); return res
        case 4: let res = (a & b) & m; setLazy(.logic, 0, 0, res, size, cf: false); return res
        case 6: let res = (a ^ b) & m; setLazy(.logic, 0, 0, res, size, cf: false); return res
        default: let res = (a &- b) & m; setLazy(.sub, a, b, res, size, cf: a < b); return res
        }
    }

    /// ALU operation with a ModRM destination (kind 7 = cmp writes nothing). The register
    /// form is inline, the memory form out of line (small enough to inline into `execute`).
    @inline(__always) func aluToRM(_ kind: Int, _ size: Int, _ src: UInt64) throws(X86Fault) {
        if d.mod == 3 {
            let res = alu(kind, reg(d.rm, size), src, size)
            if kind != 7 { setReg(d.rm, size, res) }
            return
        }
        try aluToMemory(kind, size, src)
    }

    @inline(never) func aluToMemory(_ kind: Int, _ size: Int, _ src: UInt64) throws(X86Fault) {
        let la = try linear(d.seg, effectiveAddress())
        if kind == 7 {
            _ = alu(7, try readLinear(la, size, user: cpl == 3), src, size)
            return
        }
        let p = try rmwPointer(la, size)
        if d.lock, let p, lockedALU(p, kind, size, src) { return }
        try splitLocked(d.lock) { () throws(X86Fault) in
            if let p {
                storeSized(p, size, alu(kind, loadSized(p, size), src, size))
            } else {
                let a = try readLinear(la, size, user: cpl == 3)
                let res = alu(kind, a, src, size)
                try writeLinear(la, size, res, user: cpl == 3)
            }
        }
    }

    /// Read-modify-write of the ModRM operand with a unary operation.
    @inline(__always) func unaryRM(_ size: Int, _ kind: Int) throws(X86Fault) {
        if d.mod == 3 {
            setReg(d.rm, size, unary(kind, reg(d.rm, size), size))
            return
        }
        let la = try linear(d.seg, effectiveAddress())
        let p = try rmwPointer(la, size)
        if d.lock, let p, lockedUnary(p, kind, size) { return }
        try splitLocked(d.lock) { () throws(X86Fault) in
            if let p {
                storeSized(p, size, unary(kind, loadSized(p, size), size))
            } else {
                let a = try readLinear(la, size, user: cpl == 3)
                try writeLinear(la, size, unary(kind, a, size), user: cpl == 3)
            }
        }
    }

    /// 0 inc, 1 dec, 2 not, 3 neg.
    @inline(__always) func unary(_ kind: Int, _ a: UInt64, _ size: Int) -> UInt64 {
        let m = sizeMask(size)
        switch kind {
        case 0: let res = (a &+ 1) & m; setLazyKeepingCF(.inc, a, res, size); return res
        case 1: let res = (a &- 1) & m; setLazyKeepingCF(.dec, a, res, size); return res
        case 2: return ~a & m
        default: let res = (0 &- a) & m; setLazy(.sub, 0, a, res, size, cf: a != 0); return res
        }
    }

    // MARK: the interpreter

    /// Executes the decoded instruction `d`. On return without a throw the caller commits
    /// `nextRIP` to RIP.
    func execute() throws(X86Fault) {
        let op = d.op
        switch op {
        // ALU Eb,Gb / Ev,Gv / Gb,Eb / Gv,Ev / AL,ib / eAX,iz
        case 0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38:
            try aluToRM(op >> 3, 1, reg(d.reg, 1))
        case 0x01, 0x09, 0x11, 0x19, 0x21, 0x29, 0x31, 0x39:
            try aluToRM(op >> 3, d.opSize, reg(d.reg, d.opSize))
        case 0x02, 0x0A, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A:
            let res = alu(op >> 3, reg(d.reg, 1), try readRM(1), 1)
            if op >> 3 != 7 { setReg(d.reg, 1, res) }
        case 0x03, 0x0B, 0x13, 0x1B, 0x23, 0x2B, 0x33, 0x3B:
            let s = d.opSize
            let res = alu(op >> 3, reg(d.reg, s), try readRM(s), s)
            if op >> 3 != 7 { setReg(d.reg, s, res) }
        case 0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3C:
            let res = alu(op >> 3, r[0] & 0xFF, d.imm, 1)
            if op >> 3 != 7 { setReg(0, 1, res) }
        case 0x05, 0x0D, 0x15, 0x1D, 0x25, 0x2D, 0x35, 0x3D:
            let s = d.opSize
            let res = alu(op >> 3, reg(0, s), signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s), s)
            if op >> 3 != 7 { setReg(0, s, res) }
        case 0x06, 0x0E, 0x16, 0x1E:
            if mode64 { throw udFault() }
            try push(UInt64(seg[op >> 3].selector), d.opSize)
        case 0x07, 0x17, 0x1F:
            if mode64 { throw udFault() }
            let v = try readMem(SReg.ss, stackTop(), d.opSize)
            try loadSegment(op >> 3, UInt16(truncatingIfNeeded: v))
            adjustSP(UInt64(d.opSize))
            if op == 0x17 { interruptShadow = true }
        case 0x27, 0x2F, 0x37, 0x3F:
            if mode64 { throw udFault() }
            decimalAdjust(op)
        case 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F:
            // Only reached outside 64-bit mode (REX there).
            let s = d.opSize
            setReg(op & 7, s, unary(op < 0x48 ? 0 : 1, reg(op & 7, s), s))
        case 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57:
            let s = stackOpSize
            try push(reg((op & 7) | (rexB ? 8 : 0), s), s)
        case 0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F:
            let s = stackOpSize
            let v = try pop(s)
            setReg((op & 7) | (rexB ? 8 : 0), s, v)
        case 0x60:
            if mode64 { throw udFault() }
            let s = d.opSize, sp = reg(4, s)
            for i in 0..<8 { try push(i == 4 ? sp : reg(i, s), s) }
        case 0x61:
            if mode64 { throw udFault() }
            let s = d.opSize
            for i in stride(from: 7, through: 0, by: -1) {
                let v = try pop(s)
                if i != 4 { setReg(i, s, v) }
            }
        case 0x62: throw udFault()
        case 0x63:
            if mode64 {
                let v = try readRM(4)
                setReg(d.reg, d.opSize, d.opSize == 8 ? signExtend(v, 4) : v)
            } else {
                throw udFault()   // ARPL: only meaningful in virtual-8086 mode
            }
        case 0x68:
            let s = stackOpSize
            try push(signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s), s)
        case 0x6A:
            let s = stackOpSize
            try push(signExtend(d.imm, 1) & sizeMask(s), s)
        case 0x69, 0x6B:
            let s = d.opSize
            let imm = op == 0x6B ? signExtend(d.imm, 1) : signExtend(d.imm, s == 2 ? 2 : 4)
            setReg(d.reg, s, imul2(try readRM(s), imm, s))
        case 0x6C, 0x6D, 0x6E, 0x6F, 0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF:
            try stringOp(op)
        case 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x7B, 0x7C, 0x7D, 0x7E, 0x7F:
            if condition(op & 0xF) { try branch(nextRIP &+ signExtend(d.imm, 1)) }
        case 0x80, 0x82:
            if op == 0x82 && mode64 { throw udFault() }
            try aluToRM(d.reg & 7, 1, d.imm)
        case 0x81:
            let s = d.opSize
            try aluToRM(d.reg & 7, s, signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s))
        case 0x83:
            let s = d.opSize
            try aluToRM(d.reg & 7, s, signExtend(d.imm, 1) & sizeMask(s))
        case 0x84:
            _ = alu(4, try readRM(1), reg(d.reg, 1), 1)
        case 0x85:
            let s = d.opSize
            _ = alu(4, try readRM(s), reg(d.reg, s), s)
        case 0x86, 0x87:
            let s = op == 0x86 ? 1 : d.opSize
            if d.mod == 3 {
                let a = reg(d.rm, s), b = reg(d.reg, s)
                setReg(d.rm, s, b); setReg(d.reg, s, a)
            } else {
                let la = try linear(d.seg, effectiveAddress())
                let b = reg(d.reg, s)
                let p = try rmwPointer(la, s)
                // Implicitly locked, prefix or not.
                if let p, let a = lockedExchange(p, s, b) { setReg(d.reg, s, a); break }
                try splitLocked(true) { () throws(X86Fault) in
                    if let p {
                        let a = loadSized(p, s); storeSized(p, s, b); setReg(d.reg, s, a)
                    } else {
                        let a = try readLinear(la, s, user: cpl == 3)
                        try writeLinear(la, s, b, user: cpl == 3)
                        setReg(d.reg, s, a)
                    }
                }
            }
        case 0x88: try writeRM(1, reg(d.reg, 1))
        case 0x89: try writeRM(d.opSize, reg(d.reg, d.opSize))
        case 0x8A: setReg(d.reg, 1, try readRM(1))
        case 0x8B: setReg(d.reg, d.opSize, try readRM(d.opSize))
        case 0x8C:
            let sr = d.reg & 7
            if sr > 5 { throw udFault() }
            let v = UInt64(seg[sr].selector)
            if d.mod == 3 { setReg(d.rm, d.opSize, v) } else { try writeRM(2, v) }
        case 0x8D:
            if d.mod == 3 { throw udFault() }
            setReg(d.reg, d.opSize, effectiveAddress())
        case 0x8E:
            let sr = d.reg & 7
            if sr == SReg.cs || sr > 5 { throw udFault() }
            try loadSegment(sr, UInt16(truncatingIfNeeded: try readRM(2)))
            if sr == SReg.ss { interruptShadow = true }
        case 0x8F:
            let s = stackOpSize
            let v = try readMem(SReg.ss, stackTop(), s)
            // The address is computed after RSP is incremented.
            let saved = r[4]
            adjustSP(UInt64(s))
            do { try writeRM(s, v) } catch { r[4] = saved; throw error }
        case 0x90:
            if rexB {
                let s = d.opSize
                let a = reg(8, s), b = reg(0, s); setReg(8, s, b); setReg(0, s, a)
            } else if d.rep == 0xF3 && yieldOnPause {
                // PAUSE: a spin-wait loop; with several vCPUs hand the turn over once the
                // slice has spun a while (like VMX's pause-loop exiting window): yielding on
                // every PAUSE made a delay loop cost one trip round every vCPU per iteration.
                pausesInSlice &+= 1
                if pausesInSlice >= X86CPU.pauseYieldWindow { yieldRequested = true }
            }
            // NOP / PAUSE
        case 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97:
            let s = d.opSize, i = (op & 7) | (rexB ? 8 : 0)
            let a = reg(i, s), b = reg(0, s); setReg(i, s, b); setReg(0, s, a)
        case 0x98:
            switch d.opSize {
            case 2: setReg(0, 2, signExtend(r[0], 1))
            case 4: setReg(0, 4, signExtend(r[0], 2))
            default: r[0] = signExtend(r[0], 4)
            }
        case 0x99:
            let s = d.opSize
            setReg(2, s, reg(0, s) & signBit(s) != 0 ? sizeMask(s) : 0)
        case 0x9A:
            try farCall(selector: UInt16(d.imm2), offset: d.imm, size: d.opSize)
        case 0x9B: try fwait()
        case 0x9C:
            if rflagsRest & Flag.vm != 0 && (rflagsRest & Flag.iopl) != Flag.iopl { throw gpFault() }
            let s = stackOpSize
            try push(rflags & 0xFC_FFFF & sizeMask(s), s)
        case 0x9D:
            let s = stackOpSize
            let v = try readMem(SReg.ss, stackTop(), s)
            adjustSP(UInt64(s))
            writeFlags(v, size: s)
        case 0x9E:
            if mode64 && !cpuLevelHas(.lahf64) { throw udFault() }
            setEager((arithFlags() & ~0xD5) | ((r[0] >> 8) & 0xD5))
        case 0x9F:
            if mode64 && !cpuLevelHas(.lahf64) { throw udFault() }
            let f = (rflags & 0xD5) | 2
            r[0] = (r[0] & ~0xFF00) | (f << 8)
        case 0xA0, 0xA1:
            let s = op == 0xA0 ? 1 : d.opSize
            setReg(0, s, try readMem(d.seg, d.imm & sizeMask(d.addrSize), s))
        case 0xA2, 0xA3:
            let s = op == 0xA2 ? 1 : d.opSize
            try writeMem(d.seg, d.imm & sizeMask(d.addrSize), s, reg(0, s))
        case 0xA8: _ = alu(4, r[0] & 0xFF, d.imm, 1)
        case 0xA9:
            let s = d.opSize
            _ = alu(4, reg(0, s), signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s), s)
        case 0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7:
            setReg((op & 7) | (rexB ? 8 : 0), 1, d.imm)
        case 0xB8, 0xB9, 0xBA, 0xBB, 0xBC, 0xBD, 0xBE, 0xBF:
            setReg((op & 7) | (rexB ? 8 : 0), d.opSize, d.imm)
        case 0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3:
            let s = (op & 1) == 0 ? 1 : d.opSize
            let count: UInt64 = op <= 0xC1 ? d.imm : (op <= 0xD1 ? 1 : r[1] & 0xFF)
            try shiftRM(d.reg & 7, s, count)
        case 0xC2, 0xC3:
            let s = stackOpSize
            let target = try readMem(SReg.ss, stackTop(), s)
            // 64-bit mode: s is 8; a non-canonical target faults before RSP moves.
            if mode64 && !X86CPU.isCanonical(target) { throw gpFault() }
            adjustSP(UInt64(s) &+ (op == 0xC2 ? d.imm : 0))
            nextRIP = mode64 ? target : target & sizeMask(s)
        case 0xC4, 0xC5:
            if mode64 || d.mod == 3 { throw udFault() }
            try loadFarPointer(op == 0xC4 ? SReg.es : SReg.ds)
        case 0xC6:
            if d.reg & 7 != 0 { throw udFault() }
            try writeRM(1, d.imm)
        case 0xC7:
            if d.reg & 7 != 0 { throw udFault() }
            let s = d.opSize
            try writeRM(s, signExtend(d.imm, s == 2 ? 2 : 4) & sizeMask(s))
        case 0xC8:
            try enter(size: stackOpSize, frame: d.imm, level: Int(d.imm2 & 31))
        case 0xC9:
            let s = stackOpSize
            let sp: UInt64
            switch stackSize { case 8: sp = r[5]; case 4: sp = r[5] & 0xFFFF_FFFF; default: sp = r[5] & 0xFFFF }
            let v = try readMem(SReg.ss, sp, s)
            switch stackSize {
            case 8: r[4] = sp &+ UInt64(s)
            case 4: r[4] = (sp &+ UInt64(s)) & 0xFFFF_FFFF
            default: r[4] = (r[4] & ~0xFFFF) | ((sp &+ UInt64(s)) & 0xFFFF)
            }
            setReg(5, s, v)
        case 0xCA, 0xCB:
            try farReturn(size: d.opSize, extra: op == 0xCA ? d.imm : 0)
        case 0xCC:
            try softwareInterrupt(Vec.bp)
        case 0xCD:
            try softwareInterrupt(UInt8(d.imm))
        case 0xCE:
            if mode64 { throw udFault() }
            if of { try softwareInterrupt(Vec.of) }
        case 0xCF:
            try interruptReturn()
        case 0xD4:
            if mode64 { throw udFault() }
            if d.imm == 0 { throw fault(Vec.de) }
            let al = r[0] & 0xFF
            let res = (al % d.imm) | ((al / d.imm) << 8)
            setReg(0, 2, res)
            setResultFlags(res, 1, cf: false, of: false)
        case 0xD5:
            if mode64 { throw udFault() }
            let al = ((r[0] & 0xFF) &+ ((r[0] >> 8) & 0xFF) &* d.imm) & 0xFF
            setReg(0, 2, al)
            setResultFlags(al, 1, cf: false, of: false)
        case 0xD6:
            if mode64 { throw udFault() }
            setReg(0, 1, cf ? 0xFF : 0)
        case 0xD7:
            let addr = (reg(3, d.addrSize) &+ (r[0] & 0xFF)) & sizeMask(d.addrSize)
            setReg(0, 1, try readMem(d.seg, addr, 1))
        case 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF:
            try x87(op)
        case 0xE0, 0xE1, 0xE2:
            let c = (reg(1, d.addrSize) &- 1) & sizeMask(d.addrSize)
            setIndex(1, c)
            var take = c != 0
            if op == 0xE0 { take = take && !zf }
            if op == 0xE1 { take = take && zf }
            if take { try branch(nextRIP &+ signExtend(d.imm, 1)) }
        case 0xE3:
            if reg(1, d.addrSize) == 0 { try branch(nextRIP &+ signExtend(d.imm, 1)) }
        case 0xE4, 0xE5:
            let s = op == 0xE4 ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            setReg(0, s, try portIn(UInt16(d.imm), s))
        case 0xE6, 0xE7:
            let s = op == 0xE6 ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            portOut(UInt16(d.imm), s, reg(0, s))
        case 0xEC, 0xED:
            let s = op == 0xEC ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            setReg(0, s, try portIn(UInt16(r[2] & 0xFFFF), s))
        case 0xEE, 0xEF:
            let s = op == 0xEE ? 1 : (d.opSize == 2 ? 2 : 4)
            try checkIOPL()
            portOut(UInt16(r[2] & 0xFFFF), s, reg(0, s))
        case 0xE8:
            let s = stackOpSize
            let rel = d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)
            let target = nextRIP &+ rel
            if mode64 && !X86CPU.isCanonical(target) { throw gpFault() }
            try push(nextRIP & sizeMask(s), s)
            try branch(target)
        case 0xE9:
            let rel = d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)
            try branch(nextRIP &+ rel)
        case 0xEA:
            try farJump(selector: UInt16(d.imm2), offset: d.imm)
        case 0xEB:
            try branch(nextRIP &+ signExtend(d.imm, 1))
        case 0xF1:
            try softwareInterrupt(Vec.db)
        case 0xF4:
            if cpl != 0 { throw gpFault() }
            halted = true
        case 0xF5:
            let f = arithFlags(); setEager(f ^ Flag.cf)
        case 0xF6, 0xF7:
            try group3(op == 0xF6 ? 1 : d.opSize)
        case 0xF8: setEager(arithFlags() & ~Flag.cf)
        case 0xF9: setEager(arithFlags() | Flag.cf)
        case 0xFA:
            try checkIOPL()
            rflagsRest &= ~Flag.if
        case 0xFB:
            try checkIOPL()
            if rflagsRest & Flag.if == 0 { interruptShadow = true }
            rflagsRest |= Flag.if
        case 0xFC: rflagsRest &= ~Flag.df
        case 0xFD: rflagsRest |= Flag.df
        case 0xFE:
            let k = d.reg & 7
            if k > 1 { throw udFault() }
            try unaryRM(1, k)
        case 0xFF:
            if d.mod == 3 && d.reg & 6 == 0 {
                // INC/DEC of a register (the only encoding in 64-bit mode), inline.
                let s = d.opSize, a = reg(d.rm, s)
                let res = (d.reg & 1 == 0 ? a &+ 1 : a &- 1) & sizeMask(s)
                setLazyKeepingCF(d.reg & 1 == 0 ? .inc : .dec, a, res, s)
                setReg(d.rm, s, res)
            } else {
                try group5()
            }
        default:
            // 0x100...0x3FF: the 0F opcode space (op never exceeds 0x3FF); else undefined.
            if op >= 0x100 { try execute0F(op) } else { throw udFault() }
        }
    }

    @inline(__always) var rexB: Bool { d.rexB }

    // MARK: groups

    func group3(_ s: Int) throws(X86Fault) {
        let k = d.reg & 7
        switch k {
        case 0, 1:
            _ = alu(4, try readRM(s), signExtend(d.imm, s == 2 ? 2 : (s == 1 ? 1 : 4)) & sizeMask(s), s)
        case 2: try unaryRM(s, 2)
        case 3: try unaryRM(s, 3)
        case 4, 5:
            let v = try readRM(s)
            mulAcc(v, s, signed: k == 5)
        default:
            let v = try readRM(s)
            try divAcc(v, s, signed: k == 7)
        }
    }

    func group5() throws(X86Fault) {
        let k = d.reg & 7
        switch k {
        case 0, 1: try unaryRM(d.opSize, k)
        case 2:
            let s = stackOpSize
            let target = try readRM(s)
            if mode64 && !X86CPU.isCanonical(target) { throw gpFault() }
            try push(nextRIP & sizeMask(s), s)
            nextRIP = mode64 ? target : target & sizeMask(s)
        case 4:
            let target = try readRM(d.opSize)
            try branch(target)
        case 3, 5:
            if d.mod == 3 { throw udFault() }
            let s = d.opSize
            let ea = effectiveAddress()
            let off = try readMem(d.seg, ea, s)
            let sel = try readMem(d.seg, (ea &+ UInt64(s)) & sizeMask(d.addrSize), 2)
            if k == 3 { try farCall(selector: UInt16(sel), offset: off, size: s) }
            else { try farJump(selector: UInt16(sel), offset: off) }
        case 6:
            let s = stackOpSize
            try push(try readRM(s), s)
        default:
            throw udFault()
        }
    }

    // MARK: multiply / divide

    func mulAcc(_ v: UInt64, _ s: Int, signed: Bool) {
        switch s {
        case 1:
            let a = r[0] & 0xFF
            let res: UInt64
            let over: Bool
            if signed {
                let p = Int64(Int8(truncatingIfNeeded: a)) * Int64(Int8(truncatingIfNeeded: v))
                res = UInt64(bitPattern: p) & 0xFFFF
                over = p != Int64(Int8(truncatingIfNeeded: p))
            } else {
                res = a &* v
                over = res > 0xFF
            }
            setReg(0, 2, res)
            setResultFlags(res, 1, cf: over, of: over)
        case 2, 4:
            let bits = UInt64(s * 8)
            let a = reg(0, s)
            let lo: UInt64, hi: UInt64, over: Bool
            if signed {
                let p = Int64(bitPattern: signExtend(a, s)) &* Int64(bitPattern: signExtend(v, s))
                let up = UInt64(bitPattern: p)
                lo = up & sizeMask(s); hi = (up >> bits) & sizeMask(s)
                over = signExtend(lo, s) != up
            } else {
                let p = a &* v
                lo = p & sizeMask(s); hi = p >> bits
                over = hi != 0
            }
            setReg(0, s, lo); setReg(2, s, hi)
            setResultFlags(lo, s, cf: over, of: over)
        default:
            if signed {
                let p = Int128(Int64(bitPattern: r[0])) * Int128(Int64(bitPattern: v))
                let lo = UInt64(truncatingIfNeeded: p), hi = UInt64(truncatingIfNeeded: p >> 64)
                r[0] = lo; r[2] = hi
                let over = Int128(Int64(bitPattern: lo)) != p
                setResultFlags(lo, 8, cf: over, of: over)
            } else {
                let (hi, lo) = r[0].multipliedFullWidth(by: v)
                r[0] = lo; r[2] = hi
                setResultFlags(lo, 8, cf: hi != 0, of: hi != 0)
            }
        }
    }

    func divAcc(_ v: UInt64, _ s: Int, signed: Bool) throws(X86Fault) {
        if v & sizeMask(s) == 0 { throw fault(Vec.de) }
        switch s {
        case 1:
            let a = r[0] & 0xFFFF
            if signed {
                let n = Int64(Int16(truncatingIfNeeded: a)), dv = Int64(Int8(truncatingIfNeeded: v))
                let q = n / dv, rem = n % dv
                if q > 127 || q < -128 { throw fault(Vec.de) }
                setReg(0, 2, (UInt64(bitPattern: q) & 0xFF) | ((UInt64(bitPattern: rem) & 0xFF) << 8))
            } else {
                let q = a / v, rem = a % v
                if q > 0xFF { throw fault(Vec.de) }
                setReg(0, 2, q | (rem << 8))
            }
        case 2, 4:
            let bits = UInt64(s * 8)
            let n = (reg(2, s) << bits) | reg(0, s)
            if signed {
                let sn = s == 2 ? Int64(Int32(truncatingIfNeeded: n)) : Int64(bitPattern: n)
                let dv = Int64(bitPattern: signExtend(v, s))
                if sn == Int64.min && dv == -1 { throw fault(Vec.de) }
                let q = sn / dv, rem = sn % dv
                let limit = Int64(1) << (bits - 1)
                if q >= limit || q < -limit { throw fault(Vec.de) }
                setReg(0, s, UInt64(bitPattern: q)); setReg(2, s, UInt64(bitPattern: rem))
            } else {
                let q = n / v, rem = n % v
                if q > sizeMask(s) { throw fault(Vec.de) }
                setReg(0, s, q); setReg(2, s, rem)
            }
        default:
            if signed {
                let n = Int128(Int64(bitPattern: r[2])) << 64 | Int128(r[0])
                let dv = Int128(Int64(bitPattern: v))
                if dv == -1 && n == Int128.min { throw fault(Vec.de) }
                let q = n / dv, rem = n % dv
                if q > Int128(Int64.max) || q < Int128(Int64.min) { throw fault(Vec.de) }
                r[0] = UInt64(truncatingIfNeeded: q); r[2] = UInt64(truncatingIfNeeded: rem)
            } else {
                if r[2] >= v { throw fault(Vec.de) }
                let (q, rem) = v.dividingFullWidth((r[2], r[0]))
                r[0] = q; r[2] = rem
            }
        }
    }

    func imul2(_ a: UInt64, _ b: UInt64, _ s: Int) -> UInt64 {
        if s == 8 {
            let (res, over) = Int64(bitPattern: a).multipliedReportingOverflow(by: Int64(bitPattern: b))
            let u = UInt64(bitPattern: res)
            setResultFlags(u, 8, cf: over, of: over)
            return u
        }
        let p = Int64(bitPattern: signExtend(a, s)) &* Int64(bitPattern: signExtend(b, s))
        let res = UInt64(bitPattern: p) & sizeMask(s)
        let over = signExtend(res, s) != UInt64(bitPattern: p)
        setResultFlags(res, s, cf: over, of: over)
        return res
    }

    // MARK: shifts and rotates

    func shiftRM(_ kind: Int, _ s: Int, _ rawCount: UInt64) throws(X86Fault) {
        let count = rawCount & (s == 8 ? 0x3F : 0x1F)
        if count == 0 {
            // No flags change; a 32-bit register destination is still zero-extended.
            let v = try readRM(s)
            if d.mod == 3 && s == 4 { setReg(d.rm, 4, v) }
            return
        }
        if d.mod == 3 {
            setReg(d.rm, s, shift(kind, reg(d.rm, s), count, s))
            return
        }
        let la = try linear(d.seg, effectiveAddress())
        if let p = try rmwPointer(la, s) {
            storeSized(p, s, shift(kind, loadSized(p, s), count, s))
        } else {
            let a = try readLinear(la, s, user: cpl == 3)
            try writeLinear(la, s, shift(kind, a, count, s), user: cpl == 3)
        }
    }

    /// One shift/rotate (count already masked and nonzero). Sets flags.
    func shift(_ kind: Int, _ a: UInt64, _ count: UInt64, _ s: Int) -> UInt64 {
        let bits = UInt64(s * 8)
        let m = sizeMask(s)
        let sb = signBit(s)
        switch kind {
        case 0: // rol
            let c = count % bits
            let res = c == 0 ? a : ((a << c) | (a >> (bits - c))) & m
            let cfv = res & 1 != 0
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            setEager(old | (cfv ? Flag.cf : 0) | (((res & sb != 0) != cfv) ? Flag.of : 0))
            return res
        case 1: // ror
            let c = count % bits
            let res = c == 0 ? a : ((a >> c) | (a << (bits - c))) & m
            let cfv = res & sb != 0
            let ofv = ((res >> (bits - 1)) ^ (res >> (bits - 2))) & 1 != 0
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            setEager(old | (cfv ? Flag.cf : 0) | (ofv ? Flag.of : 0))
            return res
        case 2: // rcl
            let c = count % (bits + 1)
            var res = a
            var carry: UInt64 = cf ? 1 : 0
            if c != 0 {
                for _ in 0..<c {
                    let out = (res >> (bits - 1)) & 1
                    res = ((res << 1) | carry) & m
                    carry = out
                }
            }
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            let ofv = ((res >> (bits - 1)) & 1) ^ carry
            setEager(old | (carry != 0 ? Flag.cf : 0) | (ofv != 0 ? Flag.of : 0))
            return res
        case 3: // rcr
            let c = count % (bits + 1)
            var res = a
            var carry: UInt64 = cf ? 1 : 0
            let ofv = ((res >> (bits - 1)) & 1) ^ carry
            if c != 0 {
                for _ in 0..<c {
                    let out = res & 1
                    res = (res >> 1) | (carry << (bits - 1))
                    carry = out
                }
            }
            let old = arithFlags() & ~(Flag.cf | Flag.of)
            setEager(old | (carry != 0 ? Flag.cf : 0) | (ofv != 0 ? Flag.of : 0))
            return res
        case 4, 6: // shl
            let res = count >= 64 ? 0 : (a << count) & m
            let cfv = count <= bits ? ((a >> (bits - count)) & 1 != 0) : false
            setResultFlags(res, s, cf: cfv, of: ((res & sb) != 0) != cfv)
            return res
        case 5: // shr
            let res = count >= 64 ? 0 : a >> count
            let cfv = count <= bits ? ((a >> (count - 1)) & 1 != 0) : false
            setResultFlags(res, s, cf: cfv, of: a & sb != 0)
            return res
        default: // sar
            let sa = Int64(bitPattern: signExtend(a, s))
            let c = min(count, 63)
            let res = UInt64(bitPattern: sa >> Int64(c)) & m
            let cfv = (UInt64(bitPattern: sa >> Int64(min(count - 1, 63))) & 1) != 0
            setResultFlags(res, s, cf: cfv, of: false)
            return res
        }
    }

    /// SHLD/SHRD.
    func doubleShift(left: Bool, countRaw: UInt64) throws(X86Fault) {
        let s = d.opSize
        let count = countRaw & (s == 8 ? 0x3F : 0x1F)
        if count == 0 {
            let v = try readRM(s)
            if d.mod == 3 && s == 4 { setReg(d.rm, 4, v) }
            return
        }
        let bits = UInt64(s * 8)
        let src = reg(d.reg, s)
        func compute(_ a: UInt64) -> UInt64 {
            let m = sizeMask(s)
            var res: UInt64, cfv: Bool
            if s == 2 && count > 16 {
                // 16-bit with count > 16: defined as a shift of the 48-bit concatenation.
                if left {
                    let wide = (a << 32) | (src << 16) | a
                    res = ((wide << count) >> 32) & m
                    cfv = (wide >> (48 - count)) & 1 != 0
                } else {
                    let w2 = a | (src << 16) | (a << 32)
                    res = (w2 >> count) & m
                    cfv = (w2 >> (count - 1)) & 1 != 0
                }
            } else if left {
                res = ((a << count) | (count == bits ? src : src >> (bits - count))) & m
                cfv = (a >> (bits - count)) & 1 != 0
            } else {
                res = ((a >> count) | (count == bits ? src : src << (bits - count))) & m
                cfv = (a >> (count - 1)) & 1 != 0
            }
            let ofv = ((res ^ a) & signBit(s)) != 0
            setResultFlags(res, s, cf: cfv, of: ofv)
            return res
        }
        if d.mod == 3 { setReg(d.rm, s, compute(reg(d.rm, s))); return }
        let la = try linear(d.seg, effectiveAddress())
        let a = try readLinear(la, s, user: cpl == 3)
        try writeLinear(la, s, compute(a), user: cpl == 3)
    }

    // MARK: misc

    func decimalAdjust(_ op: Int) {
        var al = r[0] & 0xFF
        var cfv = cf
        let afv = af
        switch op {
        case 0x27, 0x2F: // daa, das
            let oldAL = al, oldCF = cfv
            var newAF = false
            cfv = false
            if (al & 0xF) > 9 || afv {
                al = op == 0x27 ? (al &+ 6) & 0xFF : (al &- 6) & 0xFF
                cfv = oldCF || (op == 0x27 ? oldAL > 0xF9 : oldAL < 6)
                newAF = true
            }
            if oldAL > 0x99 || oldCF {
                al = op == 0x27 ? (al &+ 0x60) & 0xFF : (al &- 0x60) & 0xFF
                cfv = true
            }
            setReg(0, 1, al)
            setResultFlags(al, 1, cf: cfv, of: false, af: newAF)
        default: // aaa, aas
            var ax = r[0] & 0xFFFF
            if (al & 0xF) > 9 || afv {
                ax = op == 0x37 ? (ax &+ 0x106) : (ax &- 6) &- 0x100
                cfv = true
            } else { cfv = false }
            ax = (ax & 0xFF0F)
            setReg(0, 2, ax)
            al = ax & 0xFF
            setResultFlags(al, 1, cf: cfv, of: false, af: cfv)
        }
    }

    func enter(size s: Int, frame: UInt64, level: Int) throws(X86Fault) {
        try push(reg(5, s), s)
        let frameTemp = stackTop()
        if level > 0 {
            var bp = reg(5, stackSize)
            for _ in 1..<max(level, 1) {
                bp = (bp &- UInt64(s)) & sizeMask(stackSize)
                try push(try readMem(SReg.ss, bp, s), s)
            }
            try push(frameTemp, s)
        }
        setReg(5, s, frameTemp)
        adjustSP(0 &- frame)
    }

    func checkIOPL() throws(X86Fault) {
        if protectedMode && (rflagsRest & Flag.vm != 0 || UInt64(cpl) > (rflagsRest & Flag.iopl) >> 12) { throw gpFault() }
    }

    func portIn(_ port: UInt16, _ size: Int) throws(X86Fault) -> UInt64 {
        let key = (UInt64(1) << 62) | UInt64(port)
        if replayValid && replayKey == key {
            replayValid = false
            return replayValue & sizeMask(size)
        }
        pendingExits.append(.io(port: port, size: size, isWrite: false, value: 0))
        throw .needsExit
    }

    func portOut(_ port: UInt16, _ size: Int, _ value: UInt64) {
        pendingExits.append(.io(port: port, size: size, isWrite: true, value: UInt32(truncatingIfNeeded: value)))
    }

    /// POPF / IRET flag update with the privilege rules.
    func writeFlags(_ v: UInt64, size: Int) {
        var mask: UInt64 = Flag.arith | Flag.tf | Flag.df | Flag.nt
        if size >= 4 { mask |= Flag.ac | Flag.id }
        if !protectedMode || cpl == 0 { mask |= Flag.iopl | Flag.if }
        else if UInt64(cpl) <= (rflagsRest & Flag.iopl) >> 12 { mask |= Flag.if }
        let cur = rflags
        rflags = (cur & ~mask) | (v & mask)
    }

    // MARK: string instructions

    func stringOp(_ op: Int) throws(X86Fault) {
        let s = (op & 1) == 0 ? 1 : (op <= 0x6F ? (d.opSize == 2 ? 2 : 4) : d.opSize)
        let am = sizeMask(d.addrSize)
        let step: UInt64 = rflagsRest & Flag.df != 0 ? 0 &- UInt64(s) : UInt64(s)
        let rep = d.rep != 0
        if rep && r[1] & am == 0 { return }
        if op >= 0x6C && op <= 0x6F { try checkIOPL() }
        var iterations = 0
        while true {
            switch op {
            case 0xA4, 0xA5: // movs
                if rep && step == UInt64(s), try fastMovs(s) {
                    // bulk copy done for part of the count
                } else {
                    let v = try readMem(d.seg, r[6] & am, s)
                    try writeMem(SReg.es, r[7] & am, s, v)
                    setIndex(6, r[6] &+ step); setIndex(7, r[7] &+ step)
                    if rep { setIndex(1, r[1] &- 1) }
                }
            case 0xAA, 0xAB: // stos
                if rep && step == UInt64(s), try fastStos(s) {
                } else {
                    try writeMem(SReg.es, r[7] & am, s, reg(0, s))
                    setIndex(7, r[7] &+ step)
                    if rep { setIndex(1, r[1] &- 1) }
                }
            case 0xAC, 0xAD: // lods
                setReg(0, s, try readMem(d.seg, r[6] & am, s))
                setIndex(6, r[6] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            case 0xA6, 0xA7: // cmps
                let a = try readMem(d.seg, r[6] & am, s)
                let b = try readMem(SReg.es, r[7] & am, s)
                _ = alu(7, a, b, s)
                setIndex(6, r[6] &+ step); setIndex(7, r[7] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            case 0xAE, 0xAF: // scas
                let b = try readMem(SReg.es, r[7] & am, s)
                _ = alu(7, reg(0, s), b, s)
                setIndex(7, r[7] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            case 0x6C, 0x6D: // ins
                // Check the destination first so a fault cannot lose the port data.
                _ = try hostPage(try linear(SReg.es, r[7] & am), .write, user: cpl == 3)
                let v = try portIn(UInt16(r[2] & 0xFFFF), s)
                try writeMem(SReg.es, r[7] & am, s, v)
                setIndex(7, r[7] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            default: // outs
                let v = try readMem(d.seg, r[6] & am, s)
                portOut(UInt16(r[2] & 0xFFFF), s, v)
                setIndex(6, r[6] &+ step)
                if rep { setIndex(1, r[1] &- 1) }
            }
            if !rep { return }
            if r[1] & am == 0 { return }
            if op == 0xA6 || op == 0xA7 || op == 0xAE || op == 0xAF {
                if d.rep == 0xF3 && !zf { return }
                if d.rep == 0xF2 && zf { return }
            }
            iterations &+= 1
            if iterations >= 1024 || exitCount != 0
                || apic.attention.load(ordering: .relaxed) & LocalAPIC.attentionEvent != 0 {
                // Resume later: the instruction restarts with the updated registers.
                nextRIP = rip
                return
            }
        }
    }

    /// Copies as many whole elements as fit in the current source and destination pages
    /// (forward, non-overlapping RAM only). Returns false if it did nothing.
    func fastMovs(_ s: Int) throws(X86Fault) -> Bool {
        let am = sizeMask(d.addrSize)
        let src = try linear(d.seg, r[6] & am), dst = try linear(SReg.es, r[7] & am)
        let srcRoom = (4096 - (src & 0xFFF)) / UInt64(s), dstRoom = (4096 - (dst & 0xFFF)) / UInt64(s)
        var n = min(r[1] & am, min(srcRoom, dstRoom))
        if n < 2 { return false }
        guard let sp = try hostPage(src, .read, user: cpl == 3),
              let dp = try hostPage(dst, .write, user: cpl == 3) else { return false }
        let sa = sp + Int(src & 0xFFF), da = dp + Int(dst & 0xFFF)
        let bytes = Int(n) * s
        if da > sa && da < sa + bytes {
            // Overlapping forward copy replicates data: do it element by element.
            n = 0
            return false
        }
        // SAFETY: both ranges lie within single RAM pages (bounded by srcRoom/dstRoom).
        memmove(da, sa, bytes)
        setIndex(6, r[6] &+ UInt64(bytes)); setIndex(7, r[7] &+ UInt64(bytes))
        setIndex(1, r[1] &- n)
        return true
    }

    func fastStos(_ s: Int) throws(X86Fault) -> Bool {
        let am = sizeMask(d.addrSize)
        let dst = try linear(SReg.es, r[7] & am)
        let room = (4096 - (dst & 0xFFF)) / UInt64(s)
        let n = min(r[1] & am, room)
        if n < 2 { return false }
        guard let dp = try hostPage(dst, .write, user: cpl == 3) else { return false }
        let da = dp + Int(dst & 0xFFF)
        let v = reg(0, s)
        // SAFETY: the range lies within one RAM page (bounded by room).
        if s == 1 {
            memset(da, Int32(v & 0xFF), Int(n))
        } else {
            for i in 0..<Int(n) { storeSized(da + i * s, s, v) }
        }
        let bytes = UInt64(n) * UInt64(s)
        setIndex(7, r[7] &+ bytes)
        setIndex(1, r[1] &- n)
        return true
    }
}

#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization

// MARK: - Execute0F

extension X86CPU {
    func execute0F(_ op: Int) throws(X86Fault) {
        let b = op & 0xFF
        if op >= 0x200 { try sse3Byte(op); return }
        switch b {
        case 0x00: try group6()
        case 0x01: try group7()
        case 0x02, 0x03: // LAR / LSL
            if !protectedMode || rflagsRest & Flag.vm != 0 { throw udFault() }
            let sel = UInt16(truncatingIfNeeded: try readRM(2))
            var ok = false
            var val: UInt64 = 0
            if sel & 0xFFFC != 0, let lo = try? readDescriptor(sel) {
                let sd = segmentFromDescriptor(sel, lo)
                let dplOK = Int(sd.dpl) >= max(cpl, Int(sel & 3)) || (sd.s && sd.type & 0xC == 0xC)
                if dplOK && (sd.s || [1, 2, 3, 9, 0xB].contains(Int(sd.type)) || (b == 0x02 && [4, 5, 0xC].contains(Int(sd.type)))) {
                    ok = true
                    val = b == 0x02 ? (lo >> 32) & 0x00F0_FF00 : UInt64(sd.limit)
                }
            }
            var f = arithFlags()
            if ok { f |= Flag.zf; setReg(d.reg, d.opSize, val) } else { f &= ~Flag.zf }
            setEager(f)
        case 0x05: try syscall()
        case 0x06:
            if cpl != 0 { throw gpFault() }
            cr0 &= ~X86Bits.cr0TS
        case 0x07: try sysret()
        case 0x08, 0x09:
            if cpl != 0 { throw gpFault() }
        case 0x0B, 0xB9, 0xFF: throw udFault()
        case 0x0D, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F:
            // prefetch hints and multi-byte NOPs
            break
        case 0x20, 0x22:
            if cpl != 0 { throw gpFault() }
            let n = Int((d.modrm >> 3) & 7) | (d.reg & 8)
            let rmReg = Int(d.modrm & 7) | (d.rm & 8)
            if b == 0x20 {
                let v = try readCR(n)
                r[rmReg] = mode64 ? v : v & 0xFFFF_FFFF
            } else {
                try writeCR(n, mode64 ? r[rmReg] : r[rmReg] & 0xFFFF_FFFF)
            }
        case 0x21, 0x23:
            if cpl != 0 { throw gpFault() }
            let n = Int((d.modrm >> 3) & 7)
            let rmReg = Int(d.modrm & 7) | (d.rm & 8)
            if b == 0x21 {
                let v: UInt64 = n == 6 ? (dr[6] | 0xFFFF_0FF0) : (n == 7 ? (dr[7] | 0x400) : (n < 4 ? dr[n] : (n == 4 ? dr[6] | 0xFFFF_0FF0 : dr[7] | 0x400)))
                r[rmReg] = mode64 ? v : v & 0xFFFF_FFFF
            } else {
                dr[n] = r[rmReg]
            }
        case 0x30:
            if cpl != 0 { throw gpFault() }
            try writeMSR(UInt32(truncatingIfNeeded: r[1]), (r[2] << 32) | (r[0] & 0xFFFF_FFFF))
        case 0x31:
            if cr4 & 0x4 != 0 && cpl != 0 { throw gpFault() }
            let t = readTSC()
            r[0] = t & 0xFFFF_FFFF; r[2] = t >> 32
        case 0x32:
            if cpl != 0 { throw gpFault() }
            let v = try readMSR(UInt32(truncatingIfNeeded: r[1]))
            r[0] = v & 0xFFFF_FFFF; r[2] = v >> 32
        case 0x33: throw gpFault()
        case 0x34: try sysenter()
        case 0x35: try sysexit()
        case 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F:
            let v = try readRM(d.opSize)
            if condition(b & 0xF) { setReg(d.reg, d.opSize, v) }
            else if d.opSize == 4 { r[d.reg] &= 0xFFFF_FFFF }
        case 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F:
            if condition(b & 0xF) {
                let rel = d.opSize == 2 ? signExtend(d.imm, 2) : signExtend(d.imm, 4)
                try branch(nextRIP &+ rel)
            }
        case 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F:
            try writeRM(1, condition(b & 0xF) ? 1 : 0)
        case 0xA0, 0xA8:
            let s = stackOpSize
            try push(UInt64(seg[b == 0xA0 ? SReg.fs : SReg.gs].selector), s)
        case 0xA1, 0xA9:
            let s = stackOpSize
            let v = try readMem(SReg.ss, stackTop(), s)
            try loadSegment(b == 0xA1 ? SReg.fs : SReg.gs, UInt16(truncatingIfNeeded: v))
            adjustSP(UInt64(s))
        case 0xA2: cpuid()
        case 0xA3: try bitOp(0, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xAB: try bitOp(1, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xB3: try bitOp(2, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xBB: try bitOp(3, offset: reg(d.reg, d.opSize), immediate: false)
        case 0xBA:
            let k = d.reg & 7
            if k < 4 { throw udFault() }
            try bitOp(k - 4, offset: d.imm, immediate: true)
        case 0xA4: try doubleShift(left: true, countRaw: d.imm)
        case 0xA5: try doubleShift(left: true, countRaw: r[1] & 0xFF)
        case 0xAC: try doubleShift(left: false, countRaw: d.imm)
        case 0xAD: try doubleShift(left: false, countRaw: r[1] & 0xFF)
        case 0xAE: try group15()
        case 0xAF:
            let s = d.opSize
            setReg(d.reg, s, imul2(reg(d.reg, s), try readRM(s), s))
        case 0xB0, 0xB1:
            let s = b == 0xB0 ? 1 : d.opSize
            let src = reg(d.reg, s)
            if d.mod == 3 {
                let dst = reg(d.rm, s)
                _ = alu(7, reg(0, s), dst, s)
                if reg(0, s) == dst { setReg(d.rm, s, src) } else { setReg(0, s, dst) }
            } else {
                let la = try linear(d.seg, effectiveAddress())
                let p = try rmwPointer(la, s)
                let acc = reg(0, s)
                if d.lock, let p, let dst = lockedCompareExchange(p, s, expected: acc, src) {
                    _ = alu(7, acc, dst, s)
                    if acc != dst { setReg(0, s, dst) }
                    break
                }
                try splitLocked(d.lock) { () throws(X86Fault) in
                    let dst = try readLinear(la, s, user: cpl == 3)
                    if acc == dst {
                        try writeLinear(la, s, src, user: cpl == 3)
                    } else {
                        try writeLinear(la, s, dst, user: cpl == 3)
                    }
                    _ = alu(7, acc, dst, s)
                    if acc != dst { setReg(0, s, dst) }
                }
            }
        case 0xB2: if d.mod == 3 { throw udFault() }; try loadFarPointer(SReg.ss)
        case 0xB4: if d.mod == 3 { throw udFault() }; try loadFarPointer(SReg.fs)
        case 0xB5: if d.mod == 3 { throw udFault() }; try loadFarPointer(SReg.gs)
        case 0xB6: setReg(d.reg, d.opSize, try readRM(1))
        case 0xB7: setReg(d.reg, d.opSize, try readRM(2))
        case 0xBE: setReg(d.reg, d.opSize, signExtend(try readRM(1), 1) & sizeMask(d.opSize))
        case 0xBF: setReg(d.reg, d.opSize, signExtend(try readRM(2), 2) & sizeMask(d.opSize))
        case 0xB8:
            if d.rep != 0xF3 || !cpuLevelHas(.popcnt) { throw udFault() }
            let v = try readRM(d.opSize)
            setReg(d.reg, d.opSize, UInt64(v.nonzeroBitCount))
            setEager(v == 0 ? Flag.zf : 0)
        case 0xBC, 0xBD:
            // F3: TZCNT/LZCNT where the level has them; below it the prefix is ignored
            // (BSF/BSR), as on hardware.
            if d.rep == 0xF3 && cpuLevelHas(b == 0xBC ? .bmi1 : .lzcnt) { try countZeros(trailing: b == 0xBC); break }
            let s = d.opSize
            let v = try readRM(s)
            var f = arithFlags() & ~Flag.zf
            if v == 0 {
                f |= Flag.zf
            } else {
                let idx = b == 0xBC ? UInt64(v.trailingZeroBitCount) : UInt64(63 - v.leadingZeroBitCount)
                setReg(d.reg, s, idx)
                f = (f & ~(Flag.cf | Flag.of | Flag.sf | Flag.af | Flag.pf))
                if parityEven(idx) { f |= Flag.pf }
            }
            setEager(f)
        case 0xC0, 0xC1:
            let s = b == 0xC0 ? 1 : d.opSize
            let src = reg(d.reg, s)
            if d.mod == 3 {
                let dst = reg(d.rm, s)
                let sum = alu(0, dst, src, s)
                setReg(d.reg, s, dst); setReg(d.rm, s, sum)
            } else {
                let la = try linear(d.seg, effectiveAddress())
                let p = try rmwPointer(la, s)
                if d.lock, let p, let dst = lockedXADD(p, s, src) {
                    setReg(d.reg, s, dst)
                    break
                }
                try splitLocked(d.lock) { () throws(X86Fault) in
                    let dst = try readLinear(la, s, user: cpl == 3)
                    let sum = (dst &+ src) & sizeMask(s)
                    try writeLinear(la, s, sum, user: cpl == 3)
                    _ = alu(0, dst, src, s)
                    setReg(d.reg, s, dst)
                }
            }
        case 0xC3:
            if d.mod == 3 { throw udFault() }
            try writeRM(d.opSize, reg(d.reg, d.opSize))
        case 0xC7: try group9()
        case 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF:
            let i = (b & 7) | (d.rexB ? 8 : 0)
            if d.opSize == 8 { r[i] = r[i].byteSwapped }
            else if d.opSize == 4 { r[i] = UInt64(UInt32(truncatingIfNeeded: r[i]).byteSwapped) }
            else { setReg(i, 2, 0) }
        case 0x77: try emms()
        default:
            try sse(b)
        }
    }

    /// BT/BTS/BTR/BTC: kind 0 test, 1 set, 2 reset, 3 complement.
    func bitOp(_ kind: Int, offset: UInt64, immediate: Bool) throws(X86Fault) {
        let s = d.opSize
        let bits = UInt64(s * 8)
        var f = arithFlags() & ~Flag.cf
        if d.mod == 3 {
            let bit = offset & (bits - 1)
            let v = reg(d.rm, s)
            if (v >> bit) & 1 != 0 { f |= Flag.cf }
            setEager(f)
            switch kind {
            case 1: setReg(d.rm, s, v | (1 << bit))
            case 2: setReg(d.rm, s, v & ~(1 << bit))
            case 3: setReg(d.rm, s, v ^ (1 << bit))
            default: break
            }
            return
        }
        var addr = effectiveAddress()
        let bit: UInt64
        if immediate {
            bit = offset & (bits - 1)
        } else {
            let soff = Int64(bitPattern: signExtend(offset, s))
            let unit = soff >> Int64(s == 2 ? 4 : (s == 4 ? 5 : 6))
            addr = (addr &+ UInt64(bitPattern: unit &* Int64(s))) & sizeMask(d.addrSize)
            bit = UInt64(bitPattern: soff) & (bits - 1)
        }
        let la = try linear(d.seg, addr)
        if kind != 0, let p = try rmwPointer(la, s), d.lock, let v = lockedBitOp(p, kind, s, bit: bit) {
            if (v >> bit) & 1 != 0 { f |= Flag.cf }
            setEager(f)
            return
        }
        try splitLocked(d.lock && kind != 0) { () throws(X86Fault) in
            let v = try readLinear(la, s, user: cpl == 3)
            if (v >> bit) & 1 != 0 { f |= Flag.cf }
            switch kind {
            case 1: try writeLinear(la, s, v | (1 << bit), user: cpl == 3)
            case 2: try writeLinear(la, s, v & ~(1 << bit), user: cpl == 3)
            case 3: try writeLinear(la, s, v ^ (1 << bit), user: cpl == 3)
            default: break
            }
            setEager(f)
        }
    }

    func group6() throws(X86Fault) {
        if !protectedMode || rflagsRest & Flag.vm != 0 { throw udFault() }
        let k = d.reg & 7
        switch k {
        case 0: try writeRMSel(UInt64(ldtr.selector))
        case 1: try writeRMSel(UInt64(tr.selector))
        case 2, 3:
            if cpl != 0 { throw gpFault() }
            let sel = UInt16(truncatingIfNeeded: try readRM(2))
            if k == 2 {
                if sel & 0xFFFC == 0 { ldtr = X86Segment(); ldtr.selector = sel; ldtr.unusable = true; return }
                if sel & 4 != 0 { throw gpFault(UInt32(sel & 0xFFFC)) }
                let lo = try readDescriptor(sel)
                var s = segmentFromDescriptor(sel, lo)
                if s.s || s.type != 2 { throw gpFault(UInt32(sel & 0xFFFC)) }
                if efer & X86Bits.eferLMA != 0 { s.base |= (try readSys(gdtr.base &+ UInt64(sel & 0xFFF8) &+ 8, 4)) << 32 }
                ldtr = s
            } else {
                if sel & 0xFFFC == 0 || sel & 4 != 0 { throw gpFault(UInt32(sel & 0xFFFC)) }
                let lo = try readDescriptor(sel)
                var s = segmentFromDescriptor(sel, lo)
                if s.s || (s.type != 9 && s.type != 1 && s.type != 0xB) { throw gpFault(UInt32(sel & 0xFFFC)) }
                if efer & X86Bits.eferLMA != 0 { s.base |= (try readSys(gdtr.base &+ UInt64(sel & 0xFFF8) &+ 8, 4)) << 32 }
                s.type |= 2 // busy
                try writeSys(gdtr.base &+ UInt64(sel & 0xFFF8), 8, lo | (UInt64(2) << 40))
                tr = s
            }
        case 4, 5:
            let sel = UInt16(truncatingIfNeeded: try readRM(2))
            var ok = false
            if sel & 0xFFFC != 0, let lo = try? readDescriptor(sel) {
                let sd = segmentFromDescriptor(sel, lo)
                if sd.s && Int(sd.dpl) >= max(cpl, Int(sel & 3)) {
                    ok = k == 4 ? (sd.type & 8 == 0 || sd.type & 2 != 0) : (sd.type & 8 == 0 && sd.type & 2 != 0)
                }
            }
            let f = arithFlags() & ~Flag.zf
            setEager(ok ? f | Flag.zf : f)
        default: throw udFault()
        }
    }

    func writeRMSel(_ v: UInt64) throws(X86Fault) {
        if d.mod == 3 { setReg(d.rm, d.opSize, v) } else { try writeRM(2, v) }
    }

    func group7() throws(X86Fault) {
        let k = d.reg & 7
        if d.mod == 3 {
            switch d.modrm {
            case 0xF8: // swapgs
                if !mode64 { throw udFault() }
                if cpl != 0 { throw gpFault() }
                let t = seg[SReg.gs].base; seg[SReg.gs].base = kernelGSBase; kernelGSBase = t
                return
            case 0xF9: // rdtscp
                let t = readTSC()
                r[0] = t & 0xFFFF_FFFF; r[2] = t >> 32; r[1] = tscAux & 0xFFFF_FFFF
                return
            case 0xCA, 0xCB: throw udFault() // clac/stac: no SMAP
            case 0xD0, 0xD1: try xgetbvXsetbv(set: d.modrm == 0xD1); return
            case 0xC8, 0xC9: throw udFault() // monitor/mwait not advertised
            default: break
            }
            switch k {
            case 4: setReg(d.rm, d.opSize, cr0 & 0xFFFF); return
            case 6:
                if cpl != 0 { throw gpFault() }
                try lmsw(reg(d.rm, 2)); return
            default: throw udFault()
            }
        }
        let ea = effectiveAddress()
        switch k {
        case 0, 1:
            let t = k == 0 ? gdtr : idtr
            try writeMem(d.seg, ea, 2, UInt64(t.limit))
            try writeMem(d.seg, (ea &+ 2) & sizeMask(d.addrSize), mode64 ? 8 : 4, mode64 ? t.base : t.base & 0xFFFF_FFFF)
        case 2, 3:
            if cpl != 0 { throw gpFault() }
            let limit = try readMem(d.seg, ea, 2)
            var base = try readMem(d.seg, (ea &+ 2) & sizeMask(d.addrSize), mode64 ? 8 : 4)
            if !mode64 && d.opSize == 2 { base &= 0xFF_FFFF }
            let t = X86DescriptorTable(base: base, limit: UInt16(limit))
            if k == 2 { gdtr = t } else { idtr = t }
        case 4: try writeRM(2, cr0 & 0xFFFF)
        case 6:
            if cpl != 0 { throw gpFault() }
            try lmsw(try readRM(2))
        case 7:
            if cpl != 0 { throw gpFault() }
            flushTLBPage(try linear(d.seg, ea))
        default: throw udFault()
        }
    }

    func lmsw(_ v: UInt64) throws(X86Fault) {
        // LMSW can set PE but not clear it; affects PE, MP, EM, TS.
        let nv = (cr0 & ~0xE) | (v & 0xF) | (cr0 & 1)
        try writeCR(0, nv)
    }

    func group9() throws(X86Fault) {
        let k = d.reg & 7
        if k == 1 && d.mod != 3 {
            let la = try linear(d.seg, effectiveAddress())
            if d.rexW {
                if !cpuLevelHas(.cx16) { throw udFault() }
                if la & 0xF != 0 { throw gpFault() }
                let p = try rmwPointer(la, 8); _ = try rmwPointer(la &+ 8, 8)
                if d.lock, let p, let res = lockedCompareExchange16(p, expected: (r[0], r[2]), (r[3], r[1])) {
                    if !res.2 { r[0] = res.0; r[2] = res.1 }
                    setEager((arithFlags() & ~Flag.zf) | (res.2 ? Flag.zf : 0))
                    return
                }
                try splitLocked(d.lock) { () throws(X86Fault) in
                    let lo = try readLinear(la, 8, user: cpl == 3), hi = try readLinear(la &+ 8, 8, user: cpl == 3)
                    var f = arithFlags() & ~Flag.zf
                    if lo == r[0] && hi == r[2] {
                        try writeLinear(la, 8, r[3], user: cpl == 3); try writeLinear(la &+ 8, 8, r[1], user: cpl == 3)
                        f |= Flag.zf
                    } else {
                        r[0] = lo; r[2] = hi
                    }
                    setEager(f)
                }
            } else {
                let p = try rmwPointer(la, 8)
                let cmp = (r[2] & 0xFFFF_FFFF) << 32 | (r[0] & 0xFFFF_FFFF)
                var f = arithFlags() & ~Flag.zf
                let new = (r[1] & 0xFFFF_FFFF) << 32 | (r[3] & 0xFFFF_FFFF)
                if d.lock, let p, let v = lockedCompareExchange(p, 8, expected: cmp, new) {
                    if v == cmp { f |= Flag.zf } else { r[0] = v & 0xFFFF_FFFF; r[2] = v >> 32 }
                    setEager(f)
                    return
                }
                try splitLocked(d.lock) { () throws(X86Fault) in
                    let v = try readLinear(la, 8, user: cpl == 3)
                    if v == cmp {
                        try writeLinear(la, 8, new, user: cpl == 3)
                        f |= Flag.zf
                    } else {
                        r[0] = v & 0xFFFF_FFFF; r[2] = v >> 32
                    }
                    setEager(f)
                }
            }
            return
        }
        throw udFault()
    }

    func group15() throws(X86Fault) {
        let k = d.reg & 7
        if d.mod == 3 {
            // lfence (5), mfence (6), sfence (7)
            if k >= 5 { return }
            throw udFault()
        }
        let ea = effectiveAddress()
        switch k {
        case 0: try fxsave(ea)
        case 1: try fxrstor(ea)
        case 4: try xsave(ea)
        case 5: try xrstor(ea)
        case 6: try xsave(ea)     // XSAVEOPT: allowed to write what XSAVE writes (`XSave.swift`)
        case 2:
            if cr4 & X86Bits.cr4OSFXSR == 0 { throw udFault() }
            let v = UInt32(try readMem(d.seg, ea, 4))
            if v & 0xFFFF_0000 != 0 { throw gpFault() }
            mxcsr = v
        case 3:
            if cr4 & X86Bits.cr4OSFXSR == 0 { throw udFault() }
            try writeMem(d.seg, ea, 4, UInt64(mxcsr))
        case 7: // clflush
            _ = try readMem(d.seg, ea, 1)
        default: throw udFault()
        }
    }

    // MARK: TSC, CPUID, MSRs

    func readTSC() -> UInt64 {
        UInt64(bitPattern: Int64(bitPattern: HostClock.nanoseconds()) &+ tscOffset)
    }

    func cpuid() {
        let leaf = UInt32(truncatingIfNeeded: r[0]), sub = UInt32(truncatingIfNeeded: r[1])
        let (a, b, c, dd) = CPUIDTable.query(leaf: leaf, subleaf: sub, apicID: apic.id, cr4: cr4, level: cpuLevel, xcr0: xcr0,
                                             cpus: topologyCPUs)
        r[0] = UInt64(a); r[3] = UInt64(b); r[1] = UInt64(c); r[2] = UInt64(dd)
    }

    func readMSR(_ msr: UInt32) throws(X86Fault) -> UInt64 {
        switch msr {
        case 0x10: return readTSC()
        case 0x1B: return apic.baseMSR
        case 0x3B: return tscAdjust
        case 0x3A, 0x8B, 0x8C...0x8F, 0xFE, 0x179, 0x17A, 0x2FF, 0x34, 0xCE, 0x140, 0x4E0...0x4FF: return msr == 0x2FF ? mtrrDefType : 0
        case 0x174: return sysenterCS
        case 0x175: return sysenterESP
        case 0x176: return sysenterEIP
        case 0x1A0: return miscEnable
        case 0x277: return pat
        case 0x200...0x21F, 0x250, 0x258, 0x259, 0x268...0x26F: return 0
        case 0x400...0x47F: return 0
        case 0x6E0: return apic.tscDeadline
        case 0x800...0x8FF:
            throw gpFault()
        case 0xC000_0080: return efer
        case 0xC000_0081: return star
        case 0xC000_0082: return lstar
        case 0xC000_0083: return cstar
        case 0xC000_0084: return sfmask
        case 0xC000_0100: return seg[SReg.fs].base
        case 0xC000_0101: return seg[SReg.gs].base
        case 0xC000_0102: return kernelGSBase
        case 0xC000_0103: return tscAux
        default: throw gpFault()
        }
    }

    func writeMSR(_ msr: UInt32, _ v: UInt64) throws(X86Fault) {
        func canonical(_ x: UInt64) throws(X86Fault) {
            if UInt64(bitPattern: Int64(bitPattern: x << 16) >> 16) != x { throw gpFault() }
        }
        switch msr {
        case 0x10:
            // A write to the TSC moves IA32_TSC_ADJUST by the same amount (SDM 17.17.3).
            let now = HostClock.nanoseconds()
            let old = UInt64(bitPattern: Int64(bitPattern: now) &+ tscOffset)
            tscOffset = Int64(bitPattern: v) &- Int64(bitPattern: now)
            tscAdjust &+= v &- old
        case 0x3B:
            // Writing IA32_TSC_ADJUST adds the difference to the TSC.
            tscOffset &+= Int64(bitPattern: v &- tscAdjust)
            tscAdjust = v
        case 0x1B: apic.setBaseMSR(v, cpu: self); flushTLB()
        case 0x3A, 0x8B, 0x179, 0x17A, 0x2FF, 0x200...0x21F, 0x250, 0x258, 0x259, 0x268...0x26F, 0x400...0x47F, 0x4E0...0x4FF, 0x140:
            if msr == 0x2FF { mtrrDefType = v }
        case 0x174: sysenterCS = v & 0xFFFF
        case 0x175: try canonical(v); sysenterESP = v
        case 0x176: try canonical(v); sysenterEIP = v
        case 0x1A0: miscEnable = v
        case 0x277: pat = v
        case 0x6E0: apic.setTSCDeadline(v, cpu: self)
        case 0xC000_0080:
            if v & ~(X86Bits.eferSCE | X86Bits.eferLME | X86Bits.eferLMA | X86Bits.eferNXE) != 0 { throw gpFault() }
            var nv = (v & ~X86Bits.eferLMA) | (efer & X86Bits.eferLMA)
            if cr0 & X86Bits.cr0PG != 0 && (nv ^ efer) & X86Bits.eferLME != 0 { throw gpFault() }
            if nv & X86Bits.eferLME == 0 { nv &= ~X86Bits.eferLMA }
            efer = nv
            flushTLB()
            updateMode()
        case 0xC000_0081: star = v
        case 0xC000_0082: try canonical(v); lstar = v
        case 0xC000_0083: try canonical(v); cstar = v
        case 0xC000_0084: sfmask = v & 0xFFFF_FFFF
        case 0xC000_0100: try canonical(v); seg[SReg.fs].base = v
        case 0xC000_0101: try canonical(v); seg[SReg.gs].base = v
        case 0xC000_0102: try canonical(v); kernelGSBase = v
        case 0xC000_0103: tscAux = v & 0xFFFF_FFFF
        default: throw gpFault()
        }
    }
}

/// The CPU model the guest sees: a small, honest feature set.
public enum CPUIDTable {
    /// Guest TSC frequency: the TSC counts host nanoseconds (1 GHz), announced through
    /// leaf 0x15 so Linux needs no PIT calibration.
    public static let tscHz: UInt64 = 1_000_000_000

    static func str(_ s: String) -> (UInt32, UInt32, UInt32) {
        let b = Array(s.utf8)
        func w(_ i: Int) -> UInt32 { UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24 }
        return (w(0), w(4), w(8))
    }

    /// Bits of an APIC ID that number `cpus` cores (0 for one).
    public static func coreIDBits(cpus: Int) -> UInt32 {
        var bits: UInt32 = 0
        while (1 << bits) < cpus { bits += 1 }
        return bits
    }

    /// - cpus: the machine's vCPU count. The topology is the KVM backend's (`CPUIDPolicy`):
    ///   one package of `cpus` single-threaded cores, APIC ID = vCPU index, so leaf 1 and
    ///   leaf 0xB agree with the MADT and the MP table.
    public static func query(leaf: UInt32, subleaf: UInt32, apicID: UInt32, cr4: UInt64, level: X86CPULevel = .default,
                             xcr0: UInt64 = 1, cpus: Int = 1) -> (UInt32, UInt32, UInt32, UInt32) {
        let bits = coreIDBits(cpus: cpus)
        switch leaf {
        case 0:
            let v = str("GenuineIntel")
            return (0x16, v.0, v.2, v.1)
        case 1:
            // Family 6, model 0x3A (Ivy Bridge-like), stepping 9.
            let eax: UInt32 = 0x0003_06A9
            // EBX: [31:24] initial APIC ID, [23:16] addressable IDs in the package, CLFLUSH 8.
            let ebx: UInt32 = (apicID << 24) | (((1 << bits) & 0xFF) << 16) | (8 << 8)
            // ECX: the level's features (CPUIDLevel.swift), TSC-deadline(24), hypervisor(31).
            let ecx: UInt32 = level.leaf1ECX | (1 << 24) | (1 << 31)
                | (cr4 & X86Bits.cr4OSXSAVE != 0 ? 1 << 27 : 0)   // OSXSAVE
            // EDX: FPU PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT CLFSH MMX FXSR SSE SSE2
            let edx: UInt32 = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9)
                | (1 << 11) | (1 << 13) | (1 << 15) | (1 << 16) | (1 << 19) | (1 << 23) | (1 << 24) | (1 << 25) | (1 << 26)
                | (cpus > 1 ? 1 << 28 : 0)   // HTT: EBX[23:16] is valid
            return (eax, ebx, ecx, edx)
        case 7:
            // Structured extended features, subleaf 0 only (EAX = 0: the last subleaf);
            // EBX bit 1: IA32_TSC_ADJUST, at every level (see leaf 0x8000_0007).
            return (0, subleaf == 0 ? level.leaf7EBX | (1 << 1) : 0, 0, 0)
        case 0xD where level >= .v3:
            // XSAVE (`XSave.swift`): x87, SSE, AVX; standard form only (no XSAVEC/XGETBV1/
            // XSAVES). Subleaf 0: supported XCR0 bits, the area size for the enabled ones and
            // for all; subleaf 1: XSAVEOPT (EAX bit 0); subleaf 2: AVX's size and offset.
            switch subleaf {
            case 0: return (UInt32(X86CPU.xcr0Supported), X86CPU.xsaveAreaSize(xcr0), X86CPU.xsaveAreaSize(X86CPU.xcr0Supported), 0)
            case 1: return (1, 0, 0, 0)
            case 2: return (X86CPU.ymmHighSize, X86CPU.ymmHighOffset, 0, 0)
            default: return (0, 0, 0, 0)
            }
        case 0xB:
            // Extended topology: subleaf 0 the SMT level (one thread per core), 1 the core
            // level (`cpus` cores), then the end of the list. EDX: the x2APIC ID.
            switch subleaf {
            case 0: return (0, 1, 1 << 8, apicID)
            case 1: return (bits, UInt32(truncatingIfNeeded: cpus) & 0xFFFF, 2 << 8 | 1, apicID)
            default: return (0, 0, subleaf & 0xFF, apicID)
            }
        case 0x15:
            // TSC = crystal (25 MHz) * 40 / 1.
            return (1, UInt32(tscHz / 25_000_000), 25_000_000, 0)
        case 0x16:
            let mhz = UInt32(tscHz / 1_000_000)
            return (mhz, mhz, 100, 0)
        case 0x8000_0000:
            return (0x8000_0008, 0, 0, 0)
        case 0x8000_0001:
            // ECX: the level's (LAHF/SAHF in 64-bit mode at v2, ABM at v3). EDX: SYSCALL, NX, LM.
            return (0, 0, level.extLeaf1ECX, (1 << 11) | (1 << 20) | (1 << 29))
        case 0x8000_0002, 0x8000_0003, 0x8000_0004:
            let name = Array("swiftvmm software x86-64 CPU".utf8) + [UInt8](repeating: 0, count: 48)
            let base = Int(leaf - 0x8000_0002) * 16
            func w(_ i: Int) -> UInt32 { UInt32(name[i]) | UInt32(name[i + 1]) << 8 | UInt32(name[i + 2]) << 16 | UInt32(name[i + 3]) << 24 }
            return (w(base), w(base + 4), w(base + 8), w(base + 12))
        case 0x8000_0007:
            // EDX bit 8: invariant TSC. Our TSC counts host nanoseconds, whatever the
            // emulator's speed or the host's load, so it is the guest's best clock. With
            // it (Linux: constant_tsc + nonstop_tsc) and TSC_ADJUST, Linux trusts the TSC
            // and does not run its clocksource watchdog, which otherwise compares it with
            // jiffies (timer ticks, late or lost on a slow or loaded host), marks it
            // unstable and keeps time by ticks: the guest clock then drifts from real time.
            return (0, 0, 0, 1 << 8)
        case 0x8000_0008:
            return (0x3028, 0, 0, 0)  // 40-bit physical, 48-bit virtual
        default:
            return (0, 0, 0, 0)
        }
    }
}

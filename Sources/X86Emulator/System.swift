import Hypervisor

/// Segmentation, privilege transfers, interrupt and exception delivery.
extension X86CPU {
    // MARK: descriptors

    func readDescriptor(_ sel: UInt16) throws(X86Fault) -> UInt64 {
        let off = UInt64(sel & 0xFFF8)
        let base: UInt64, limit: UInt64
        if sel & 4 != 0 { base = ldtr.base; limit = UInt64(ldtr.limit) }
        else { base = gdtr.base; limit = UInt64(gdtr.limit) }
        if off + 7 > limit { throw gpFault(UInt32(sel & 0xFFFC)) }
        return try readSys(base &+ off, 8)
    }

    func segmentFromDescriptor(_ sel: UInt16, _ lo: UInt64) -> X86Segment {
        var limit = UInt32(lo & 0xFFFF) | UInt32((lo >> 48) & 0xF) << 16
        let g = (lo >> 55) & 1 != 0
        if g { limit = (limit << 12) | 0xFFF }
        let base = ((lo >> 16) & 0xFF_FFFF) | (((lo >> 56) & 0xFF) << 24)
        var s = X86Segment(base: base, limit: limit, selector: sel, type: UInt8((lo >> 40) & 0xF),
                           present: (lo >> 47) & 1 != 0, dpl: UInt8((lo >> 45) & 3),
                           db: (lo >> 54) & 1 != 0, s: (lo >> 44) & 1 != 0, l: (lo >> 53) & 1 != 0, g: g)
        s.avl = (lo >> 52) & 1 != 0
        return s
    }

    /// MOV/POP to a data or stack segment register.
    func loadSegment(_ sr: Int, _ sel: UInt16) throws(X86Fault) {
        if !protectedMode || rflagsRest & Flag.vm != 0 {
            seg[sr].selector = sel
            seg[sr].base = UInt64(sel) << 4
            if rflagsRest & Flag.vm != 0 { seg[sr].limit = 0xFFFF; seg[sr].dpl = 3 }
            seg[sr].unusable = false; seg[sr].present = true
            if sr == SReg.cs || sr == SReg.ss { updateMode() }
            return
        }
        if sel & 0xFFFC == 0 {
            if sr == SReg.ss && (!mode64 || cpl == 3 || Int(sel & 3) != cpl) { throw gpFault() }
            var s = seg[sr]
            s.selector = sel; s.unusable = true; s.present = false
            if sr != SReg.ss { s.base = 0 }
            if sr == SReg.ss { s.dpl = UInt8(cpl); s.db = mode64 ? true : s.db }
            seg[sr] = s
            return
        }
        let lo = try readDescriptor(sel)
        var s = segmentFromDescriptor(sel, lo)
        let code = s.type & 8 != 0
        let errCode = UInt32(sel & 0xFFFC)
        if !s.s { throw gpFault(errCode) }
        if sr == SReg.ss {
            if code || s.type & 2 == 0 || Int(s.dpl) != cpl || Int(sel & 3) != cpl { throw gpFault(errCode) }
            if !s.present { throw fault(Vec.ss, errCode) }
        } else {
            if code && s.type & 2 == 0 { throw gpFault(errCode) }
            if !s.present { throw fault(Vec.np, errCode) }
        }
        s.unusable = false
        seg[sr] = s
        if sr == SReg.ss { updateMode() }
    }

    /// Loads CS for a far transfer to privilege `newCPL` (checks done by the caller).
    func setCS(_ sel: UInt16, _ desc: X86Segment, cpl newCPL: Int) {
        var s = desc
        s.selector = (sel & 0xFFFC) | UInt16(newCPL)
        s.unusable = false
        seg[SReg.cs] = s
        updateMode()
        if cpl != newCPL { cpl = newCPL; updateMode() }
    }

    func codeDescriptor(_ sel: UInt16) throws(X86Fault) -> X86Segment {
        if sel & 0xFFFC == 0 { throw gpFault() }
        let desc = segmentFromDescriptor(sel, try readDescriptor(sel))
        if !desc.s || desc.type & 8 == 0 { throw gpFault(UInt32(sel & 0xFFFC)) }
        if !desc.present { throw fault(Vec.np, UInt32(sel & 0xFFFC)) }
        return desc
    }

    func farJump(selector sel: UInt16, offset: UInt64) throws(X86Fault) {
        if !protectedMode || rflagsRest & Flag.vm != 0 {
            seg[SReg.cs].selector = sel
            seg[SReg.cs].base = UInt64(sel) << 4
            updateMode()
            nextRIP = offset & (d.opSize == 2 ? 0xFFFF : 0xFFFF_FFFF)
            return
        }
        let desc = try codeDescriptor(sel)
        let conforming = desc.type & 4 != 0
        if conforming ? Int(desc.dpl) > cpl : Int(desc.dpl) != cpl { throw gpFault(UInt32(sel & 0xFFFC)) }
        setCS(sel, desc, cpl: cpl)
        nextRIP = mode64 ? offset : offset & (desc.db ? 0xFFFF_FFFF : 0xFFFF)
    }

    func farCall(selector sel: UInt16, offset: UInt64, size s: Int) throws(X86Fault) {
        let oldCS = UInt64(seg[SReg.cs].selector)
        let ret = nextRIP
        if !protectedMode || rflagsRest & Flag.vm != 0 {
            try push(oldCS, s)
            try push(ret, s)
            seg[SReg.cs].selector = sel
            seg[SReg.cs].base = UInt64(sel) << 4
            updateMode()
            nextRIP = offset & sizeMask(s)
            return
        }
        let desc = try codeDescriptor(sel)
        let conforming = desc.type & 4 != 0
        if conforming ? Int(desc.dpl) > cpl : Int(desc.dpl) != cpl { throw gpFault(UInt32(sel & 0xFFFC)) }
        let savedSP = r[4]
        do {
            try push(oldCS, s)
            try push(ret, s)
        } catch { r[4] = savedSP; throw error }
        setCS(sel, desc, cpl: cpl)
        nextRIP = mode64 ? offset : offset & sizeMask(s)
    }

    func farReturn(size s: Int, extra: UInt64) throws(X86Fault) {
        let ip = try readMem(SReg.ss, stackTop(), s)
        let csv = UInt16(truncatingIfNeeded: try readMem(SReg.ss, stackTop(UInt64(s)), s))
        if !protectedMode || rflagsRest & Flag.vm != 0 {
            seg[SReg.cs].selector = csv
            seg[SReg.cs].base = UInt64(csv) << 4
            adjustSP(UInt64(2 * s) &+ extra)
            updateMode()
            nextRIP = ip & sizeMask(s)
            return
        }
        let rpl = Int(csv & 3)
        if rpl < cpl { throw gpFault(UInt32(csv & 0xFFFC)) }
        let desc = try codeDescriptor(csv)
        if rpl > cpl {
            let sp = try readMem(SReg.ss, stackTop(UInt64(2 * s) &+ extra), s)
            let ssv = UInt16(truncatingIfNeeded: try readMem(SReg.ss, stackTop(UInt64(3 * s) &+ extra), s))
            setCS(csv, desc, cpl: rpl)
            try loadSegment(SReg.ss, ssv)
            r[4] = (sp &+ extra) & sizeMask(s == 8 ? 8 : (seg[SReg.ss].db ? 4 : 2))
        } else {
            adjustSP(UInt64(2 * s) &+ extra)
            setCS(csv, desc, cpl: cpl)
        }
        nextRIP = mode64 ? ip : ip & sizeMask(s)
    }

    func loadFarPointer(_ sr: Int) throws(X86Fault) {
        let s = d.opSize
        let ea = effectiveAddress()
        let off = try readMem(d.seg, ea, s)
        let sel = try readMem(d.seg, (ea &+ UInt64(s)) & sizeMask(d.addrSize), 2)
        try loadSegment(sr, UInt16(sel))
        setReg(d.reg, s, off)
        if sr == SReg.ss { interruptShadow = true }
    }

    // MARK: interrupts and exceptions

    func softwareInterrupt(_ vector: UInt8) throws(X86Fault) {
        if rflagsRest & Flag.vm != 0 && (rflagsRest & Flag.iopl) != Flag.iopl { throw gpFault() }
        try deliverInterrupt(vector, errorCode: nil, software: true, returnIP: nextRIP)
    }

    /// Delivers an interrupt or exception through the IDT/IVT. Sets RIP (and nextRIP) to
    /// the handler. Throws if delivery itself faults (the caller escalates).
    func deliverInterrupt(_ vector: UInt8, errorCode: UInt32?, software: Bool, returnIP: UInt64) throws(X86Fault) {
        halted = false
        if !protectedMode {
            let off = UInt64(vector) * 4
            if off + 3 > UInt64(idtr.limit) { throw gpFault(UInt32(vector) * 8 + 2) }
            let ent = try readSys(idtr.base &+ off, 4)
            try push(rflags & 0xFFFF, 2)
            try push(UInt64(seg[SReg.cs].selector), 2)
            try push(returnIP & 0xFFFF, 2)
            rflagsRest &= ~(Flag.if | Flag.tf | Flag.ac | Flag.rf)
            let sel = UInt16(ent >> 16)
            seg[SReg.cs].selector = sel
            seg[SReg.cs].base = UInt64(sel) << 4
            updateMode()
            rip = ent & 0xFFFF; nextRIP = rip
            return
        }
        let gateCode = UInt32(vector) * 8 + 2 | (software ? 0 : 1)
        let long = efer & X86Bits.eferLMA != 0
        let entSize: UInt64 = long ? 16 : 8
        let off = UInt64(vector) * entSize
        if off + entSize - 1 > UInt64(idtr.limit) { throw gpFault(gateCode) }
        let lo = try readSys(idtr.base &+ off, 8)
        let hi: UInt64 = long ? try readSys(idtr.base &+ off &+ 8, 8) : 0
        let type = Int((lo >> 40) & 0xF)
        let gdpl = Int((lo >> 45) & 3)
        let present = (lo >> 47) & 1 != 0
        if long ? (type != 0xE && type != 0xF) : (type != 0xE && type != 0xF && type != 6 && type != 7) {
            throw gpFault(gateCode)
        }
        if software && gdpl < cpl { throw gpFault(gateCode) }
        if !present { throw fault(Vec.np, gateCode) }
        let sel = UInt16((lo >> 16) & 0xFFFF)
        var target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000)
        if long { target |= hi << 32 }
        let desc = try codeDescriptor(sel)
        let newCPL = desc.type & 4 != 0 ? cpl : Int(desc.dpl)
        if newCPL > cpl { throw gpFault(UInt32(sel & 0xFFFC)) }
        let isTrap = type & 1 != 0
        let oldFlags = rflags
        let oldCS = UInt64(seg[SReg.cs].selector)
        let oldSS = UInt64(seg[SReg.ss].selector)
        let oldRSP = r[4]
        if rflagsRest & Flag.vm != 0 { throw gpFault(UInt32(sel & 0xFFFC)) }

        if long {
            if !desc.l { throw gpFault(UInt32(sel & 0xFFFC)) }
            let ist = Int(lo >> 32) & 7
            var rsp: UInt64
            if ist != 0 {
                rsp = try readSys(tr.base &+ 0x24 &+ UInt64(ist - 1) * 8, 8)
            } else if newCPL < cpl {
                rsp = try readSys(tr.base &+ 4 &+ UInt64(newCPL) * 8, 8)
            } else {
                rsp = oldRSP
            }
            rsp &= ~0xF
            var frame: [UInt64] = [oldSS, oldRSP, oldFlags, oldCS, returnIP]
            if let e = errorCode { frame.append(UInt64(e)) }
            for v in frame {
                rsp = rsp &- 8
                try writeSys(rsp, 8, v)
            }
            r[4] = rsp
            setCS(sel, desc, cpl: newCPL)
            if newCPL != Int(oldCS & 3) || ist != 0 || newCPL < cpl {
                // SS becomes a null selector with RPL = new CPL on a privilege change.
            }
            if newCPL < Int(oldCS & 3) {
                var ss = X86Segment()
                ss.selector = UInt16(newCPL); ss.unusable = true; ss.base = 0; ss.dpl = UInt8(newCPL); ss.db = true
                seg[SReg.ss] = ss
            }
            rip = target; nextRIP = target
        } else {
            let gate32 = type >= 0xE
            let s = gate32 ? 4 : 2
            var ssBase = seg[SReg.ss].base
            var espMask: UInt64 = seg[SReg.ss].db ? 0xFFFF_FFFF : 0xFFFF
            var esp = oldRSP & espMask
            var newSS: X86Segment? = nil
            var frame: [UInt64] = []
            if newCPL < cpl {
                let ssSel: UInt16, newESP: UInt64
                if tr.type & 8 != 0 {
                    newESP = try readSys(tr.base &+ 4 &+ UInt64(newCPL) * 8, 4)
                    ssSel = UInt16(try readSys(tr.base &+ 8 &+ UInt64(newCPL) * 8, 2))
                } else {
                    newESP = try readSys(tr.base &+ 2 &+ UInt64(newCPL) * 4, 2)
                    ssSel = UInt16(try readSys(tr.base &+ 4 &+ UInt64(newCPL) * 4, 2))
                }
                if ssSel & 0xFFFC == 0 { throw fault(Vec.ts, UInt32(ssSel & 0xFFFC)) }
                var ssd = segmentFromDescriptor(ssSel, try readDescriptor(ssSel))
                if !ssd.present { throw fault(Vec.ss, UInt32(ssSel & 0xFFFC)) }
                ssd.selector = ssSel
                newSS = ssd
                ssBase = ssd.base
                espMask = ssd.db ? 0xFFFF_FFFF : 0xFFFF
                esp = newESP & espMask
                frame = [oldSS, oldRSP & 0xFFFF_FFFF]
            }
            frame += [oldFlags & 0xFFFF_FFFF, oldCS, returnIP & 0xFFFF_FFFF]
            if let e = errorCode { frame.append(UInt64(e)) }
            for v in frame {
                esp = (esp &- UInt64(s)) & espMask
                try writeSys((ssBase &+ esp) & 0xFFFF_FFFF, s, v & sizeMask(s))
            }
            if let ssd = newSS {
                seg[SReg.ss] = ssd
            }
            r[4] = (r[4] & ~espMask) | esp
            setCS(sel, desc, cpl: newCPL)
            updateMode()
            rip = target & (gate32 ? 0xFFFF_FFFF : 0xFFFF); nextRIP = rip
        }
        rflagsRest &= ~(Flag.tf | Flag.nt | Flag.rf | Flag.vm)
        if !isTrap { rflagsRest &= ~Flag.if }
        updateMode()
    }

    func interruptReturn() throws(X86Fault) {
        let s = mode64 ? (d.rexW ? 8 : (d.has66 ? 2 : 4)) : d.opSize
        if !protectedMode {
            let ip = try readMem(SReg.ss, stackTop(), s)
            let csv = try readMem(SReg.ss, stackTop(UInt64(s)), s)
            let fl = try readMem(SReg.ss, stackTop(UInt64(2 * s)), s)
            adjustSP(UInt64(3 * s))
            seg[SReg.cs].selector = UInt16(truncatingIfNeeded: csv)
            seg[SReg.cs].base = (csv & 0xFFFF) << 4
            if s == 2 { rflags = (rflags & ~0xFFFF) | (fl & 0xFFFF) } else { rflags = (fl & 0x25_7FD5) | (rflags & 0x1A_0000) }
            updateMode()
            nextRIP = ip & sizeMask(s)
            return
        }
        if rflagsRest & Flag.vm != 0 { throw gpFault() }
        if rflagsRest & Flag.nt != 0 && !mode64 && efer & X86Bits.eferLMA == 0 { throw gpFault() }
        let ip = try readMem(SReg.ss, stackTop(), s)
        let csv = UInt16(truncatingIfNeeded: try readMem(SReg.ss, stackTop(UInt64(s)), s))
        let fl = try readMem(SReg.ss, stackTop(UInt64(2 * s)), s)
        let newCPL = Int(csv & 3)
        if newCPL < cpl { throw gpFault(UInt32(csv & 0xFFFC)) }
        if fl & Flag.vm != 0 && cpl == 0 && !mode64 && s == 4 {
            // Virtual-8086 mode is not supported.
            throw gpFault()
        }
        let desc = try codeDescriptor(csv)
        let popStack = mode64 || newCPL > cpl
        var sp: UInt64 = 0, ssv: UInt16 = 0
        if popStack {
            sp = try readMem(SReg.ss, stackTop(UInt64(3 * s)), s)
            ssv = UInt16(truncatingIfNeeded: try readMem(SReg.ss, stackTop(UInt64(4 * s)), s))
        }
        writeFlags(fl, size: s)
        if !popStack { adjustSP(UInt64(3 * s)) }
        let oldCPL = cpl
        setCS(csv, desc, cpl: newCPL)
        if popStack {
            if ssv & 0xFFFC == 0 && efer & X86Bits.eferLMA != 0 && newCPL != 3 {
                var ss = X86Segment()
                ss.selector = ssv; ss.unusable = true; ss.dpl = UInt8(newCPL); ss.db = true
                seg[SReg.ss] = ss
            } else {
                do { try loadSegment(SReg.ss, ssv) } catch {
                    // Roll back CS so the fault is reported at the IRET.
                    cpl = oldCPL
                    throw error
                }
            }
            if mode64 || efer & X86Bits.eferLMA != 0 && s == 8 { r[4] = sp }
            else if seg[SReg.ss].db { r[4] = sp & 0xFFFF_FFFF } else { r[4] = (r[4] & ~0xFFFF) | (sp & 0xFFFF) }
        }
        updateMode()
        nextRIP = mode64 ? ip : ip & sizeMask(s)
    }

    // MARK: fast system calls

    func syscall() throws(X86Fault) {
        if efer & X86Bits.eferSCE == 0 { throw udFault() }
        if efer & X86Bits.eferLMA == 0 { throw udFault() }
        r[1] = nextRIP
        r[11] = rflags & ~Flag.rf
        let csSel = UInt16((star >> 32) & 0xFFFC)
        var cs = X86Segment.flat64(selector: csSel, code: true)
        cs.type = 0xB
        var ss = X86Segment.flat64(selector: csSel &+ 8, code: false)
        ss.db = true
        rflags = rflags & ~sfmask & ~Flag.rf
        seg[SReg.cs] = cs; seg[SReg.ss] = ss
        updateMode()
        nextRIP = mode64 ? lstar : cstar
    }

    func sysret() throws(X86Fault) {
        if efer & X86Bits.eferSCE == 0 { throw udFault() }
        if !mode64 || cpl != 0 { throw gpFault() }
        let base = UInt16((star >> 48) & 0xFFFF)
        var cs: X86Segment
        if d.rexW {
            if UInt64(bitPattern: Int64(bitPattern: r[1] << 16) >> 16) != r[1] { throw gpFault() }
            cs = X86Segment.flat64(selector: (base &+ 16) | 3, code: true)
            nextRIP = r[1]
        } else {
            cs = X86Segment.flat32(selector: base | 3, code: true)
            nextRIP = r[1] & 0xFFFF_FFFF
        }
        cs.dpl = 3
        var ss = X86Segment.flat32(selector: (base &+ 8) | 3, code: false)
        ss.dpl = 3
        rflags = (r[11] & 0x3C_7FD7) | 2
        seg[SReg.cs] = cs; seg[SReg.ss] = ss
        updateMode()
    }

    func sysenter() throws(X86Fault) {
        if !protectedMode || sysenterCS & 0xFFFC == 0 { throw gpFault() }
        let sel = UInt16(sysenterCS & 0xFFFC)
        let long = efer & X86Bits.eferLMA != 0
        rflagsRest &= ~(Flag.vm | Flag.if | Flag.rf)
        seg[SReg.cs] = long ? X86Segment.flat64(selector: sel, code: true) : X86Segment.flat32(selector: sel, code: true)
        var ss = X86Segment.flat32(selector: sel &+ 8, code: false)
        ss.db = true
        seg[SReg.ss] = ss
        updateMode()
        r[4] = long ? sysenterESP : sysenterESP & 0xFFFF_FFFF
        nextRIP = long ? sysenterEIP : sysenterEIP & 0xFFFF_FFFF
    }

    func sysexit() throws(X86Fault) {
        if !protectedMode || cpl != 0 || sysenterCS & 0xFFFC == 0 { throw gpFault() }
        let base = UInt16(sysenterCS & 0xFFFC)
        var cs: X86Segment, ss: X86Segment
        if d.rexW {
            cs = X86Segment.flat64(selector: (base &+ 32) | 3, code: true)
            ss = X86Segment.flat32(selector: (base &+ 40) | 3, code: false)
            r[4] = r[1]; nextRIP = r[2]
        } else {
            cs = X86Segment.flat32(selector: (base &+ 16) | 3, code: true)
            ss = X86Segment.flat32(selector: (base &+ 24) | 3, code: false)
            r[4] = r[1] & 0xFFFF_FFFF; nextRIP = r[2] & 0xFFFF_FFFF
        }
        cs.dpl = 3; ss.dpl = 3
        seg[SReg.cs] = cs; seg[SReg.ss] = ss
        updateMode()
    }

    // MARK: control registers

    func writeCR(_ n: Int, _ v: UInt64) throws(X86Fault) {
        switch n {
        case 0:
            var nv = v | X86Bits.cr0ET
            if mode64 || efer & X86Bits.eferLMA != 0 { nv &= 0xFFFF_FFFF }
            if nv & X86Bits.cr0PG != 0 && nv & X86Bits.cr0PE == 0 { throw gpFault() }
            if nv & X86Bits.cr0NW != 0 && nv & X86Bits.cr0CD == 0 { throw gpFault() }
            let wasPG = cr0 & X86Bits.cr0PG != 0
            if !wasPG && nv & X86Bits.cr0PG != 0 && efer & X86Bits.eferLME != 0 {
                if cr4 & X86Bits.cr4PAE == 0 { throw gpFault() }
                efer |= X86Bits.eferLMA
            }
            if wasPG && nv & X86Bits.cr0PG == 0 && efer & X86Bits.eferLMA != 0 {
                if mode64 { throw gpFault() }
                efer &= ~X86Bits.eferLMA
            }
            cr0 = nv
            flushTLB()
            updateMode()
        case 2: cr2 = v
        case 3:
            cr3 = v & 0x000F_FFFF_FFFF_FFFF
            flushTLB()
        case 4:
            let allowed: UInt64 = 0x1 | 0x2 | 0x8 | X86Bits.cr4PSE | X86Bits.cr4PAE | 0x40 | X86Bits.cr4PGE | 0x100
                | X86Bits.cr4OSFXSR | X86Bits.cr4OSXMMEXCPT | (cpuLevelHas(.xsave) ? X86Bits.cr4OSXSAVE : 0)
            if v & ~allowed != 0 { throw gpFault() }
            if efer & X86Bits.eferLMA != 0 && v & X86Bits.cr4PAE == 0 { throw gpFault() }
            cr4 = v
            flushTLB()
            updateMode()
        case 8:
            apic.setTPR(UInt32(v & 0xF) << 4, cpu: self)
        default:
            throw udFault()
        }
    }

    func readCR(_ n: Int) throws(X86Fault) -> UInt64 {
        switch n {
        case 0: return cr0
        case 2: return cr2
        case 3: return cr3
        case 4: return cr4
        case 8: return UInt64(apic.tpr >> 4)
        default: throw udFault()
        }
    }
}

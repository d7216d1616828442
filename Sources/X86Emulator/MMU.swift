#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import Synchronization
import CKVM   // chostatomics.h only

// MARK: - MMU

/// Access kinds; also the TLB bank index.
enum Access: Int {
    case read = 0, write = 1, execute = 2
}

/// Result of a page walk.
struct Translation {
    var physical: UInt64
    var writable: Bool
}

extension X86CPU {
    // MARK: TLB

    public func flushTLB() {
        tlbTag.update(repeating: .max, count: 3 * X86CPU.tlbSize)
        fetchPage = .max
    }

    func flushTLBPage(_ linear: UInt64) {
        let vpn = linear >> 12
        let idx = Int(vpn & UInt64(X86CPU.tlbSize - 1))
        for k in 0..<3 { tlbTag[k * X86CPU.tlbSize + idx] = .max }
        fetchPage = .max
    }

    // MARK: page walk

    /// Translates a linear address. `user` is the privilege of the access (implicit
    /// descriptor-table accesses are supervisor). Sets accessed/dirty bits.
    func translate(_ la: UInt64, _ access: Access, user: Bool) throws(X86Fault) -> Translation {
        switch pagingMode {
        case 0: return Translation(physical: la & 0xFFFF_FFFF_FFFF, writable: true)
        case 3, 2: return try walkPAE(la, access, user: user, levels: pagingMode == 3 ? 4 : 3)
        default: return try walk32(la, access, user: user)
        }
    }

    private func pageFault(_ la: UInt64, _ access: Access, user: Bool, present: Bool, rsvd: Bool = false) -> X86Fault {
        var code: UInt32 = 0
        if present { code |= 1 }
        if access == .write { code |= 2 }
        if user { code |= 4 }
        if rsvd { code |= 8 }
        if access == .execute && (efer & X86Bits.eferNXE != 0 || cr4 & X86Bits.cr4PAE != 0) { code |= 16 }
        cr2 = la
        return .exception(vector: Vec.pf, errorCode: code)
    }

    @inline(__always) private func physPointer(_ pa: UInt64, _ len: Int) -> UnsafeMutableRawPointer? {
        memory.hostPointer(pa, length: len)
    }

    private func walkPAE(_ la: UInt64, _ access: Access, user: Bool, levels: Int) throws(X86Fault) -> Translation {
        let nxe = efer & X86Bits.eferNXE != 0
        let addrMask: UInt64 = 0x000F_FFFF_FFFF_F000
        var table: UInt64
        var level: Int
        var allowWrite = true, allowUser = true, noExec = false
        // The chain of entries to set accessed bits on after a successful walk.
        var entryAddrs: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var n = 0
        if levels == 4 {
            table = cr3 & addrMask
            level = 4
        } else {
            // PAE: CR3 points at four PDPTEs (32-byte aligned).
            let pdpteAddr = (cr3 & 0xFFFF_FFE0) + ((la >> 30) & 3) * 8
            guard let p = physPointer(pdpteAddr, 8) else { throw pageFault(la, access, user: user, present: false) }
            // SAFETY: physPointer bounds-checked 8 bytes.
            let e = hostLoad64(p)
            if e & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
            table = e & addrMask
            level = 2
        }
        while true {
            let shift = UInt64(12 + 9 * (level - 1))
            let entryAddr = table + ((la >> shift) & 0x1FF) * 8
            guard let p = physPointer(entryAddr, 8) else { throw pageFault(la, access, user: user, present: false) }
            // SAFETY: physPointer bounds-checked 8 bytes.
            let e = hostLoad64(p)
            if e & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
            if e & 2 == 0 { allowWrite = false }
            if e & 4 == 0 { allowUser = false }
            if nxe && (e >> 63) != 0 { noExec = true }
            if n < 4 {
                switch n { case 0: entryAddrs.0 = entryAddr; case 1: entryAddrs.1 = entryAddr; case 2: entryAddrs.2 = entryAddr; default: entryAddrs.3 = entryAddr }
                n += 1
            }
            let isLeaf = level == 1 || ((level == 2 || (level == 3 && levels == 4)) && e & 0x80 != 0)
            if isLeaf {
                try checkRights(la, access, user: user, allowWrite: allowWrite, allowUser: allowUser, noExec: noExec)
                // accessed bits on every level, dirty on the leaf for writes
                for i in 0..<n {
                    let a: UInt64
                    switch i { case 0: a = entryAddrs.0; case 1: a = entryAddrs.1; case 2: a = entryAddrs.2; default: a = entryAddrs.3 }
                    if let q = physPointer(a, 8) {
                        // SAFETY: bounds checked by physPointer.
                        let v = hostLoad64(q)
                        var nv = v | 0x20
                        if i == n - 1 && access == .write { nv |= 0x40 }
                        // An atomic OR, as the hardware's locked update: a plain store of
                        // the value read would undo another vCPU's change to the entry.
                        // SAFETY: entries are 8-byte aligned in a RAM page (physPointer).
                        if nv != v { cha_or(q, 8, nv & ~v) }
                    }
                }
                let pageSize: UInt64 = UInt64(1) << shift
                let base = e & addrMask & ~(pageSize - 1)
                return Translation(physical: base | (la & (pageSize - 1)), writable: allowWrite || (!user && cr0 & X86Bits.cr0WP == 0))
            }
            table = e & addrMask
            level -= 1
        }
    }

    private func walk32(_ la: UInt64, _ access: Access, user: Bool) throws(X86Fault) -> Translation {
        let la32 = la & 0xFFFF_FFFF
        let pdeAddr = (cr3 & 0xFFFF_F000) + ((la32 >> 22) & 0x3FF) * 4
        guard let p = physPointer(pdeAddr, 4) else { throw pageFault(la, access, user: user, present: false) }
        // SAFETY: bounds checked by physPointer.
        let pde = hostLoad32(p)
        if pde & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
        if pde & 0x80 != 0 && cr4 & X86Bits.cr4PSE != 0 {
            try checkRights(la, access, user: user, allowWrite: pde & 2 != 0, allowUser: pde & 4 != 0, noExec: false)
            // SAFETY: a 4-byte-aligned entry in a RAM page (physPointer); atomic OR as in walkPAE.
            let bits = 0x20 | (access == .write ? 0x40 : 0) as UInt32
            if pde & bits != bits { cha_or(p, 4, UInt64(bits & ~pde)) }
            let base = UInt64(pde & 0xFFC0_0000) | (UInt64((pde >> 13) & 0xFF) << 32)
            return Translation(physical: base | (la32 & 0x3F_FFFF), writable: pde & 2 != 0 || (!user && cr0 & X86Bits.cr0WP == 0))
        }
        let pteAddr = UInt64(pde & 0xFFFF_F000) + ((la32 >> 12) & 0x3FF) * 4
        guard let q = physPointer(pteAddr, 4) else { throw pageFault(la, access, user: user, present: false) }
        // SAFETY: bounds checked by physPointer.
        let pte = hostLoad32(q)
        if pte & 1 == 0 { throw pageFault(la, access, user: user, present: false) }
        let w = pde & pte & 2 != 0, u = pde & pte & 4 != 0
        try checkRights(la, access, user: user, allowWrite: w, allowUser: u, noExec: false)
        // SAFETY: 4-byte-aligned entries in RAM pages (physPointer); atomic ORs as in walkPAE.
        if pde & 0x20 == 0 { cha_or(p, 4, 0x20) }
        let bits = 0x20 | (access == .write ? 0x40 : 0) as UInt32
        if pte & bits != bits { cha_or(q, 4, UInt64(bits & ~pte)) }
        return Translation(physical: UInt64(pte & 0xFFFF_F000) | (la32 & 0xFFF), writable: w || (!user && cr0 & X86Bits.cr0WP == 0))
    }

    @inline(__always)
    private func checkRights(_ la: UInt64, _ access: Access, user: Bool, allowWrite: Bool, allowUser: Bool, noExec: Bool) throws(X86Fault) {
        if user && !allowUser { throw pageFault(la, access, user: user, present: true) }
        if access == .write && !allowWrite && (user || cr0 & X86Bits.cr0WP != 0) {
            throw pageFault(la, access, user: user, present: true)
        }
        if access == .execute && noExec { throw pageFault(la, access, user: user, present: true) }
    }

    // MARK: linear access

    /// Host pointer for a whole page through the TLB, or nil if the page is not RAM
    /// (then `mmioPhysical` holds the physical address of `la`).
    @inline(__always)
    func hostPage(_ la: UInt64, _ access: Access, user: Bool) throws(X86Fault) -> UnsafeMutableRawPointer? {
        let vpn = la >> 12
        let tag = vpn | (user ? (1 << 63) : 0)
        let idx = access.rawValue &* X86CPU.tlbSize &+ Int(vpn & UInt64(X86CPU.tlbSize &- 1))
        if tlbTag[idx] == tag {
            return UnsafeMutableRawPointer(bitPattern: tlbHost[idx])
        }
        return try hostPageSlow(la, access, user: user, idx: idx, tag: tag)
    }

    @inline(never)
    func hostPageSlow(_ la: UInt64, _ access: Access, user: Bool, idx: Int, tag: UInt64) throws(X86Fault) -> UnsafeMutableRawPointer? {
        let t = try translate(la, access, user: user)
        let pagePA = t.physical & ~0xFFF
        if apic.enabled && pagePA == apic.baseAddress {
            mmioPhysical = t.physical
            return nil
        }
        guard let host = memory.hostPointer(pagePA, length: 4096) else {
            mmioPhysical = t.physical
            return nil
        }
        // A read fill must not grant writes: writes fill their own bank (dirty bit set).
        tlbTag[idx] = tag
        tlbHost[idx] = UInt(bitPattern: host)
        return host
    }

    @inline(__always)
    func readLinear(_ la: UInt64, _ size: Int, user: Bool) throws(X86Fault) -> UInt64 {
        let off = Int(la & 0xFFF)
        if off &+ size <= 4096 {
            if let page = try hostPage(la, .read, user: user) {
                let p = page + off
                // SAFETY: the TLB holds only pointers to whole 4 KiB RAM pages; off+size <= 4096.
                switch size {
                case 1: return UInt64(p.load(as: UInt8.self))
                case 2: return UInt64(hostLoad16(p))
                case 4: return UInt64(hostLoad32(p))
                default: return hostLoad64(p)
                }
            }
            return try mmioRead(mmioPhysical, size)
        }
        return try readLinearCrossing(la, size, user: user)
    }

    /// A read that crosses a page: byte by byte, each through the TLB or MMIO. Kept out of
    /// line and not recursive so that `readLinear` itself can inline.
    @inline(never)
    func readLinearCrossing(_ la: UInt64, _ size: Int, user: Bool) throws(X86Fault) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<size {
            let a = (la &+ UInt64(i)) & linearMask
            let byte: UInt64
            if let page = try hostPage(a, .read, user: user) {
                // SAFETY: a TLB page is a whole 4 KiB RAM page; the offset is below 4096.
                byte = UInt64(page.load(fromByteOffset: Int(a & 0xFFF), as: UInt8.self))
            } else {
                byte = try mmioRead(mmioPhysical, 1)
            }
            v |= byte << UInt64(i &* 8)
        }
        return v
    }

    @inline(__always)
    func writeLinear(_ la: UInt64, _ size: Int, _ value: UInt64, user: Bool) throws(X86Fault) {
        let off = Int(la & 0xFFF)
        if off &+ size <= 4096 {
            if let page = try hostPage(la, .write, user: user) {
                let p = page + off
                // SAFETY: the TLB holds only pointers to whole 4 KiB RAM pages; off+size <= 4096.
                switch size {
                case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
                case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: value).littleEndian, as: UInt16.self)
                case 4: p.storeBytes(of: UInt32(truncatingIfNeeded: value).littleEndian, as: UInt32.self)
                default: p.storeBytes(of: value.littleEndian, as: UInt64.self)
                }
                return
            }
            try mmioWrite(mmioPhysical, size, value)
            return
        }
        try writeLinearCrossing(la, size, value, user: user)
    }

    /// A write that crosses a page: both pages are checked first, then byte by byte (each
    /// through the TLB or MMIO). Out of line and not recursive, like `readLinearCrossing`.
    @inline(never)
    func writeLinearCrossing(_ la: UInt64, _ size: Int, _ value: UInt64, user: Bool) throws(X86Fault) {
        _ = try hostPage(la, .write, user: user)
        _ = try hostPage((la &+ UInt64(size - 1)) & linearMask, .write, user: user)
        for i in 0..<size {
            let a = (la &+ UInt64(i)) & linearMask
            let byte = UInt8(truncatingIfNeeded: value >> UInt64(i &* 8))
            if let page = try hostPage(a, .write, user: user) {
                // SAFETY: a TLB page is a whole 4 KiB RAM page; the offset is below 4096.
                page.storeBytes(of: byte, toByteOffset: Int(a & 0xFFF), as: UInt8.self)
            } else {
                try mmioWrite(mmioPhysical, 1, UInt64(byte))
            }
        }
    }

    // MARK: MMIO

    func mmioRead(_ pa: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        if apic.enabled && pa & ~0xFFF == apic.baseAddress {
            return UInt64(apic.readRegister(UInt32(pa & 0xFFF), cpu: self))
        }
        if replayValid && replayKey == pa {
            replayValid = false
            return replayValue & sizeMask(size)
        }
        pendingExits.append(.mmio(address: pa, size: size, isWrite: false, value: 0))
        throw .needsExit
    }

    func mmioWrite(_ pa: UInt64, _ size: Int, _ value: UInt64) throws(X86Fault) {
        if apic.enabled && pa & ~0xFFF == apic.baseAddress {
            apic.writeRegister(UInt32(pa & 0xFFF), UInt32(truncatingIfNeeded: value), cpu: self)
            return
        }
        pendingExits.append(.mmio(address: pa, size: size, isWrite: true, value: value & sizeMask(size)))
    }

    // MARK: segmented access

    @inline(__always) func segBase(_ s: Int) -> UInt64 {
        if mode64 && s < 4 { return 0 }
        return seg[s].base
    }

    @inline(__always) func linear(_ s: Int, _ offset: UInt64) throws(X86Fault) -> UInt64 {
        let la = segBase(s) &+ offset
        if mode64 {
            if UInt64(bitPattern: Int64(bitPattern: la << 16) >> 16) != la {
                throw s == SReg.ss ? fault(Vec.ss, 0) : gpFault()
            }
            return la
        }
        return la & 0xFFFF_FFFF
    }

    @inline(__always) func readMem(_ s: Int, _ offset: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        try readLinear(try linear(s, offset), size, user: cpl == 3)
    }

    @inline(__always) func writeMem(_ s: Int, _ offset: UInt64, _ size: Int, _ v: UInt64) throws(X86Fault) {
        try writeLinear(try linear(s, offset), size, v, user: cpl == 3)
    }

    /// Supervisor-privilege accesses for descriptor tables, the TSS and interrupt frames.
    @inline(__always) func readSys(_ la: UInt64, _ size: Int) throws(X86Fault) -> UInt64 {
        try readLinear(la & linearMask, size, user: false)
    }
    @inline(__always) func writeSys(_ la: UInt64, _ size: Int, _ v: UInt64) throws(X86Fault) {
        try writeLinear(la & linearMask, size, v, user: false)
    }

    // MARK: instruction fetch

    @inline(__always) func fetch8(_ offset: Int) throws(X86Fault) -> UInt8 {
        if let p = insnBytes { return p.load(fromByteOffset: offset, as: UInt8.self) }
        let ip = (rip &+ UInt64(offset)) & ipMask
        let la = (segBase(SReg.cs) &+ ip) & linearMask
        let page = la & ~0xFFF
        if page == fetchPage, let h = fetchHost {
            // SAFETY: fetchHost is a whole RAM page from the TLB.
            return h.load(fromByteOffset: Int(la & 0xFFF), as: UInt8.self)
        }
        return try fetchSlow(la)
    }

    @inline(never) func fetchSlow(_ la: UInt64) throws(X86Fault) -> UInt8 {
        if mode64 && UInt64(bitPattern: Int64(bitPattern: la << 16) >> 16) != la { throw gpFault() }
        guard let h = try hostPage(la, .execute, user: cpl == 3) else {
            // Executing from MMIO is not supported.
            throw gpFault()
        }
        fetchPage = la & ~0xFFF
        fetchHost = h
        return h.load(fromByteOffset: Int(la & 0xFFF), as: UInt8.self)
    }

    // MARK: stack

    @inline(__always) func push(_ v: UInt64, _ size: Int) throws(X86Fault) {
        let sp = r[4] &- UInt64(size)
        switch stackSize {
        case 8:
            try writeMem(SReg.ss, sp, size, v)
            r[4] = sp
        case 4:
            let s = sp & 0xFFFF_FFFF
            try writeMem(SReg.ss, s, size, v)
            r[4] = s
        default:
            let s = sp & 0xFFFF
            try writeMem(SReg.ss, s, size, v)
            r[4] = (r[4] & ~0xFFFF) | s
        }
    }

    @inline(__always) func stackTop(_ extra: UInt64 = 0) -> UInt64 {
        switch stackSize {
        case 8: return r[4] &+ extra
        case 4: return (r[4] &+ extra) & 0xFFFF_FFFF
        default: return (r[4] &+ extra) & 0xFFFF
        }
    }

    @inline(__always) func pop(_ size: Int) throws(X86Fault) -> UInt64 {
        let v = try readMem(SReg.ss, stackTop(), size)
        adjustSP(UInt64(size))
        return v
    }

    @inline(__always) func adjustSP(_ n: UInt64) {
        switch stackSize {
        case 8: r[4] = r[4] &+ n
        case 4: r[4] = (r[4] &+ n) & 0xFFFF_FFFF
        default: r[4] = (r[4] & ~0xFFFF) | ((r[4] &+ n) & 0xFFFF)
        }
    }
}

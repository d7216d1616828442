import Hypervisor

/// MMX: the eight 64-bit registers alias the x87 significands (physical registers, not
/// the stack); every MMX instruction sets TOP to 0 and marks all tags valid, a write sets
/// the register's sign/exponent to all ones; EMMS empties the tags.
extension X86CPU {
    /// The checks every MMX instruction makes: CR0.EM #UD, CR0.TS #NM, pending x87 #MF;
    /// then the x87 state switches to MMX use.
    func mmxEnter() throws(X86Fault) {
        if cr0 & X86Bits.cr0EM != 0 { throw udFault() }
        if cr0 & X86Bits.cr0TS != 0 { throw fault(Vec.nm) }
        try x87Pending()
        fpu.fsw &= ~0x3800
        fpu.ftw = 0xFF
    }

    func emms() throws(X86Fault) {
        if cr0 & X86Bits.cr0EM != 0 { throw udFault() }
        if cr0 & X86Bits.cr0TS != 0 { throw fault(Vec.nm) }
        try x87Pending()
        fpu.ftw = 0
    }
}

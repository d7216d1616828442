/// Where the LOCK prefix is allowed: the read-modify-write instructions with a memory
/// destination (ADD ADC AND BTC BTR BTS CMPXCHG CMPXCHG8B/16B DEC INC NEG NOT OR SBB SUB
/// XADD XCHG XOR). Anywhere else, including their register forms, CMP, every SSE/SSE4.2
/// instruction (CRC32) and MOV to/from CR0 (AMD's LOCK MOV CR0 alias of CR8 is not
/// offered: CPUID says GenuineIntel without AltMovCr8), it raises #UD at decode, before
/// any operand is read. VEX-encoded instructions with LOCK fault in `decodeVEX`.
extension X86CPU {
    static func lockPermitted(op: Int, modrm: UInt8) -> Bool {
        guard modrm >> 6 != 3 else { return false }
        let reg = (modrm >> 3) & 7
        switch op {
        case 0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29, 0x30, 0x31,
             0x86, 0x87, 0x1AB, 0x1B0, 0x1B1, 0x1B3, 0x1BB, 0x1C0, 0x1C1:
            return true
        case 0x80, 0x81, 0x82, 0x83: return reg != 7          // not CMP
        case 0xF6, 0xF7: return reg == 2 || reg == 3          // NOT, NEG
        case 0xFE, 0xFF: return reg < 2                       // INC, DEC
        case 0x1BA: return reg >= 5                           // BTS, BTR, BTC imm8
        case 0x1C7: return reg == 1                           // CMPXCHG8B/16B
        default: return false
        }
    }

    /// Out of line: the decoder calls it only when a LOCK prefix was seen.
    @inline(never) func checkLockPrefix(_ op: Int, hasModRM: Bool) throws(X86Fault) {
        if !hasModRM || !X86CPU.lockPermitted(op: op, modrm: d.modrm) { throw udFault() }
    }
}

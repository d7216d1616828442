import Hypervisor

/// The three-byte opcode maps (0F 38 xx as 0x200 | xx, 0F 3A xx as 0x300 | xx): SSSE3,
/// SSE4.1 and SSE4.2 at level v2, MOVBE at v3; everything else (AES, SHA, ...) raises #UD.
/// VEX-encoded opcodes (0x400 and up) go to `executeVEX`.
extension X86CPU {
    func sse3Byte(_ op: Int) throws(X86Fault) {
        if op >= 0x400 { try executeVEX(op); return }
        if (op == 0x2F0 || op == 0x2F1) && d.rep != 0xF2 { try movbe(op); return }
        if X86CPU.isSSSE3Opcode(op) { try ssse3(op); return }
        if X86CPU.isSSE41Opcode(op) { try sse41(op); return }
        if X86CPU.isSSE42Opcode(op) { try sse42(op); return }
        throw udFault()
    }
}

import Hypervisor

/// SSE3 (x86-64-v2 and up): the data moves MOVSLDUP, MOVSHDUP, MOVDDUP and LDDQU here;
/// ADDSUBPS/PD and HADD/HSUB PS/PD run on the host (`SSEHost.swift`); FISTTP is in the
/// x87 unit. MONITOR/MWAIT are not offered (CPUID.1:ECX.MONITOR clear) and stay #UD.
extension X86CPU {
    /// Host-run SSE3 arithmetic: 66/F2 0F D0, 7C, 7D.
    static func isSSE3Arithmetic(_ b: Int, _ p: Int) -> Bool {
        (b == 0xD0 || b == 0x7C || b == 0x7D) && (p == 1 || p == 2)
    }

    /// The SSE3 moves; false if `b`/`p` is not one.
    func sse3Move(_ b: Int, _ p: Int) throws(X86Fault) -> Bool {
        switch (b, p) {
        case (0x12, 3), (0x16, 3):
            if !cpuLevelHas(.sse3) { throw udFault() }
            let s = asD(try xsrc(aligned: true))
            xw(d.reg, fromD(b == 0x12 ? D4(s[0], s[0], s[2], s[2]) : D4(s[1], s[1], s[3], s[3])))
        case (0x12, 2):
            if !cpuLevelHas(.sse3) { throw udFault() }
            let lo = try xsrcLow(8)
            xw(d.reg, V2(lo, lo))
        case (0xF0, 2):
            if !cpuLevelHas(.sse3) || d.mod == 3 { throw udFault() }
            xw(d.reg, try xsrc(aligned: false))
        default:
            return false
        }
        return true
    }
}

import Glibc

/// Debug tracing of the software CPU, switched on by the environment variable
/// `SWIFTVMM_EMU_TRACE` (a comma-separated list); off, it costs one load of a global on the
/// exception path and one per run slice:
///   `exceptions`  every exception the CPU raises (vector, error code, RIP, CR2, CS),
///                 the first `SWIFTVMM_EMU_TRACE_LIMIT` (default 200) of them
///   `rip`         RIP, mode and instruction count after every run slice (to stderr)
///   `jit`         every block the JIT compiles (its RIP and opcodes; see SWIFTVMM_JIT_LIMIT)
/// Output goes to stderr.
enum EmulatorTrace {
    struct Settings: Sendable {
        var exceptions = false
        var slices = false
        var jit = false
        var limit = 200
    }

    static let settings: Settings = {
        var s = Settings()
        guard let p = getenv("SWIFTVMM_EMU_TRACE") else { return s }
        let v = String(cString: p)
        for word in v.split(separator: ",") {
            switch word {
            case "exceptions": s.exceptions = true
            case "rip": s.slices = true
            case "jit": s.jit = true
            case "all": s.exceptions = true; s.slices = true
            default: break
            }
        }
        if let p = getenv("SWIFTVMM_EMU_TRACE_LIMIT"), let n = Int(String(cString: p)) { s.limit = n }
        return s
    }()

    static let enabled = settings.exceptions || settings.slices

    nonisolated(unsafe) static var printed = 0

    static func emit(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
}

extension X86CPU {
    @inline(never)
    func traceException(_ vector: UInt8, _ code: UInt32?) {
        guard EmulatorTrace.printed < EmulatorTrace.settings.limit else { return }
        EmulatorTrace.printed += 1
        let c = code.map { " code=" + EmulatorTrace.hex(UInt64($0)) } ?? ""
        EmulatorTrace.emit("emu: exception \(vector)\(c) rip=\(EmulatorTrace.hex(rip)) cs=\(EmulatorTrace.hex(UInt64(seg[SReg.cs].selector))) cr2=\(EmulatorTrace.hex(cr2)) cpl=\(cpl) insns=\(instructions)")
    }

    @inline(never)
    func traceSlice() {
        EmulatorTrace.emit("emu: rip=\(EmulatorTrace.hex(rip)) cs=\(EmulatorTrace.hex(UInt64(seg[SReg.cs].selector))) cr0=\(EmulatorTrace.hex(cr0)) cr3=\(EmulatorTrace.hex(cr3)) cr4=\(EmulatorTrace.hex(cr4)) if=\(interruptsEnabled) halted=\(halted) insns=\(instructions)")
    }
}

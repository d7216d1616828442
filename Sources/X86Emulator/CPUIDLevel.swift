/// The instruction-set level a machine offers (the psABI's x86-64 micro-architecture
/// levels). CPUID reports exactly the level's features and every instruction outside it
/// raises #UD, so a VM can be pinned to a level every host in a pool provides.
public enum X86CPULevel: String, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// x86-64 baseline: x87, MMX, SSE, SSE2, CMPXCHG8B, CMOV, FXSR (plus the system
    /// features: PAE, NX, SYSCALL, TSC-deadline, ...).
    case baseline
    /// x86-64-v2: + SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B, LAHF/SAHF in 64-bit mode.
    case v2
    /// x86-64-v3: v2 + AVX, AVX2, BMI1, BMI2, FMA, F16C, LZCNT, MOVBE, XSAVE (x87/SSE/AVX
    /// state). Its float operations run on the host's own units (`AVXFloat.swift`), so a
    /// machine may ask for it only on a host that has them (`runsOnThisHost`).
    case v3

    /// The default is v2: current distributions (RHEL 9 and its rebuilds) refuse to start
    /// below it, and every x86-64 host of the last decade has it. `--cpu-level baseline`
    /// (vm.conf `cpu-level baseline`) pins a VM to plain x86-64.
    public static let `default`: X86CPULevel = .v2

    /// The levels a machine may ask for (`vmm --cpu-level`, vm.conf `cpu-level`): the
    /// complete ones.
    public static let selectable: [X86CPULevel] = [.baseline, .v2, .v3]

    /// False for v3 on a host without AVX, AVX2, FMA and F16C (the software CPU runs FMA,
    /// F16C and the VEX compares as those host instructions).
    public var runsOnThisHost: Bool { self < .v3 || HostFloat.hostHasAVX }

    public var description: String { rawValue }

    private var rank: Int { X86CPULevel.allCases.firstIndex(of: self)! }
    public static func < (a: X86CPULevel, b: X86CPULevel) -> Bool { a.rank < b.rank }
}

/// Instruction-set extensions gated by the level.
enum ISAExtension {
    /// `lahf64`: LAHF/SAHF in 64-bit mode (outside it they are always there).
    case sse3, ssse3, sse41, sse42, popcnt, cx16, lahf64
    /// v3 (`lzcnt` is CPUID's ABM bit; `bmi1` includes TZCNT; `xsave`: XSAVE/XRSTOR/
    /// XGETBV/XSETBV and CR4.OSXSAVE).
    case movbe, lzcnt, bmi1, bmi2, xsave
    /// v3's vector extensions: AVX, AVX2, FMA, F16C (with XCR0.AVX and CR4.OSXSAVE).
    case avx

    var level: X86CPULevel {
        switch self {
        case .sse3, .ssse3, .sse41, .sse42, .popcnt, .cx16, .lahf64: return .v2
        case .movbe, .lzcnt, .bmi1, .bmi2, .xsave, .avx: return .v3
        }
    }
}

extension X86CPU {
    @inline(__always) func cpuLevelHas(_ e: ISAExtension) -> Bool { cpuLevel >= e.level }
}

extension X86CPULevel {
    /// CPUID.1:ECX feature bits of the level (besides TSC-deadline and hypervisor).
    var leaf1ECX: UInt32 {
        // SSE3(0) SSSE3(9) CX16(13) SSE4.1(19) SSE4.2(20) POPCNT(23)
        let v2: UInt32 = (1 << 0) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23)
        switch self {
        case .baseline: return 0
        case .v2: return v2
        // FMA, MOVBE, XSAVE (OSXSAVE, 27, follows CR4), AVX, F16C
        case .v3: return v2 | (1 << 12) | (1 << 22) | (1 << 26) | (1 << 28) | (1 << 29)
        }
    }

    /// CPUID.80000001H:ECX feature bits of the level: LAHF/SAHF in 64-bit mode (0), ABM
    /// (LZCNT, 5).
    var extLeaf1ECX: UInt32 {
        switch self {
        case .baseline: return 0
        case .v2: return 1 << 0
        case .v3: return (1 << 0) | (1 << 5)
        }
    }

    /// CPUID.(EAX=7,ECX=0):EBX feature bits of the level: BMI1 (3), AVX2 (5), BMI2 (8).
    var leaf7EBX: UInt32 {
        self >= .v3 ? (1 << 3) | (1 << 5) | (1 << 8) : 0
    }
}

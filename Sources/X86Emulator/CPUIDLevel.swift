/// The instruction-set level a machine offers (the psABI's x86-64 micro-architecture
/// levels). CPUID reports exactly the level's features and every instruction outside it
/// raises #UD, so a VM can be pinned to a level every host in a pool provides.
public enum X86CPULevel: String, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    /// x86-64 baseline: x87, MMX, SSE, SSE2, CMPXCHG8B, CMOV, FXSR (plus the system
    /// features: PAE, NX, SYSCALL, TSC-deadline, ...).
    case baseline
    /// x86-64-v2: + SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B, LAHF/SAHF in 64-bit mode.
    case v2

    /// The default is the baseline, like QEMU's default `qemu64` model: a guest gets v2
    /// only when the machine asks for it (`vmm --cpu-level v2`).
    public static let `default`: X86CPULevel = .baseline

    public var description: String { rawValue }

    private var rank: Int { X86CPULevel.allCases.firstIndex(of: self)! }
    public static func < (a: X86CPULevel, b: X86CPULevel) -> Bool { a.rank < b.rank }
}

/// Instruction-set extensions gated by the level.
enum ISAExtension {
    /// `lahf64`: LAHF/SAHF in 64-bit mode (outside it they are always there).
    case sse3, ssse3, sse41, sse42, popcnt, cx16, lahf64

    var level: X86CPULevel {
        switch self {
        case .sse3, .ssse3, .sse41, .sse42, .popcnt, .cx16, .lahf64: return .v2
        }
    }
}

extension X86CPU {
    @inline(__always) func cpuLevelHas(_ e: ISAExtension) -> Bool { cpuLevel >= e.level }
}

extension X86CPULevel {
    /// CPUID.1:ECX feature bits of the level (besides TSC-deadline and hypervisor).
    var leaf1ECX: UInt32 {
        switch self {
        case .baseline: return 0
        // SSE3(0) SSSE3(9) CX16(13) SSE4.1(19) SSE4.2(20) POPCNT(23)
        case .v2: return (1 << 0) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23)
        }
    }

    /// CPUID.80000001H:ECX feature bits of the level: LAHF/SAHF in 64-bit mode (0).
    var extLeaf1ECX: UInt32 {
        switch self {
        case .baseline: return 0
        case .v2: return 1 << 0
        }
    }
}

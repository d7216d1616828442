/// A seccomp-BPF allow-list compiled to classic BPF in Swift (issue 11, section 2).
///
/// The kernel runs the program on every system call with a `struct seccomp_data` as its
/// input: `nr` (u32 at 0), `arch` (u32 at 4), `instruction_pointer` (u64 at 8), `args[6]`
/// (u64 each from 16, little-endian, so argument i's low half is at 16 + 8i). The program
/// built here:
///
///     ld arch; jeq AUDIT_ARCH_X86_64 ? next : kill     (another ABI's numbers mean other calls)
///     ld nr;   jge 0x40000000 ? kill : next            (the x32 ABI shares the arch value)
///     per rule: jeq nr ? its block : next rule         (a block always ends in a return)
///     ret default                                      (SECCOMP_RET_KILL_PROCESS)
///
/// A rule's block tests each of its argument checks in turn (all must hold) and returns the
/// rule's action, or its failure action when one fails. Checks look at an argument's low
/// 32 bits only: every argument checked (ioctl's request, socket's family, clone's flags,
/// fcntl's command, ...) is an `int` or `unsigned int` in the kernel, which ignores the
/// upper half.

/// One classic-BPF instruction, laid out as the kernel's `struct sock_filter`.
public struct BPFInstruction: Equatable, Sendable, CustomStringConvertible {
    public var code: UInt16
    public var jt: UInt8
    public var jf: UInt8
    public var k: UInt32

    public init(code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32) {
        self.code = code
        self.jt = jt
        self.jf = jf
        self.k = k
    }

    // The opcodes the compiler emits (linux/bpf_common.h).
    public static let ldAbsW: UInt16 = 0x20   // BPF_LD | BPF_W | BPF_ABS
    public static let andK: UInt16 = 0x54     // BPF_ALU | BPF_AND | BPF_K
    public static let ja: UInt16 = 0x05       // BPF_JMP | BPF_JA
    public static let jeqK: UInt16 = 0x15     // BPF_JMP | BPF_JEQ | BPF_K
    public static let jgeK: UInt16 = 0x35     // BPF_JMP | BPF_JGE | BPF_K
    public static let retK: UInt16 = 0x06     // BPF_RET | BPF_K

    static func load(_ offset: UInt32) -> Self { .init(code: ldAbsW, k: offset) }
    static func ret(_ value: UInt32) -> Self { .init(code: retK, k: value) }

    public var description: String {
        "{ 0x\(String(code, radix: 16)), \(jt), \(jf), 0x\(String(k, radix: 16)) }"
    }
}

/// What the filter does with a system call.
public enum SeccompAction: Equatable, Sendable {
    case allow
    /// Fails the call with this errno, without running it.
    case errno(Int32)
    /// SECCOMP_RET_KILL_PROCESS: the whole process dies of SIGSYS.
    case killProcess

    public var returnValue: UInt32 {
        switch self {
        case .allow: return 0x7fff_0000
        case .errno(let e): return 0x0005_0000 | (UInt32(truncatingIfNeeded: e) & 0xffff)
        case .killProcess: return 0x8000_0000
        }
    }
}

/// A condition on one argument's low 32 bits.
public struct ArgumentCheck: Equatable, Sendable {
    public var index: Int
    /// Applied before comparing (all ones: the whole low half).
    public var mask: UInt32
    /// The masked value must be one of these.
    public var values: [UInt32]

    /// Argument `index` is one of `values`.
    public static func oneOf(_ index: Int, _ values: [UInt32]) -> Self {
        .init(index: index, mask: 0xffff_ffff, values: values)
    }
    /// Argument `index` has every bit of `bits` set.
    public static func hasBits(_ index: Int, _ bits: UInt32) -> Self {
        .init(index: index, mask: bits, values: [bits])
    }
    /// Argument `index` has no bit outside `allowed`.
    public static func onlyBits(_ index: Int, _ allowed: UInt32) -> Self {
        .init(index: index, mask: ~allowed, values: [0])
    }
}

/// One system call the filter knows: what to do when every check holds, and when one fails.
public struct SyscallRule: Equatable, Sendable {
    public var name: String
    public var number: UInt32
    public var checks: [ArgumentCheck]
    public var action: SeccompAction
    public var onFailedCheck: SeccompAction

    public init(_ name: String, _ number: Int32, checks: [ArgumentCheck] = [], action: SeccompAction = .allow,
                onFailedCheck: SeccompAction = .killProcess) {
        self.name = name
        self.number = UInt32(bitPattern: number)
        self.checks = checks
        self.action = action
        self.onFailedCheck = onFailedCheck
    }
}

public struct SeccompFilter: Equatable, Sendable {
    /// AUDIT_ARCH_X86_64 (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
    public static let auditArchX86_64: UInt32 = 0xc000_003e
    /// __X32_SYSCALL_BIT: numbers at or above it are the x32 ABI's.
    public static let x32SyscallBit: UInt32 = 0x4000_0000

    public var arch: UInt32
    public var rules: [SyscallRule]
    public var defaultAction: SeccompAction

    public init(arch: UInt32 = auditArchX86_64, rules: [SyscallRule], defaultAction: SeccompAction = .killProcess) {
        self.arch = arch
        self.rules = rules
        self.defaultAction = defaultAction
    }

    public struct CompileError: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// The BPF program. Fails when a check names an argument beyond the sixth, a check has no
    /// or more than 255 values, or the program exceeds the kernel's 4096 instructions.
    public func compile() throws(CompileError) -> [BPFInstruction] {
        let kill = SeccompAction.killProcess.returnValue
        var p: [BPFInstruction] = [
            .load(4),
            .init(code: BPFInstruction.jeqK, jt: 1, jf: 0, k: arch),
            .ret(kill),
            .load(0),
            .init(code: BPFInstruction.jgeK, jt: 0, jf: 1, k: Self.x32SyscallBit),
            .ret(kill),
        ]
        for rule in rules {
            let block = try Self.block(rule)
            if block.count <= 255 {
                p.append(.init(code: BPFInstruction.jeqK, jt: 0, jf: UInt8(block.count), k: rule.number))
            } else {
                p.append(.init(code: BPFInstruction.jeqK, jt: 1, jf: 0, k: rule.number))
                p.append(.init(code: BPFInstruction.ja, k: UInt32(block.count)))
            }
            p += block
        }
        p.append(.ret(defaultAction.returnValue))
        guard p.count <= 4096 else { throw CompileError(description: "the program has \(p.count) instructions (the kernel takes 4096)") }
        return p
    }

    /// A rule's block: each check falls through when it holds and jumps to the failure return
    /// when it does not; after the last, the rule's action.
    private static func block(_ rule: SyscallRule) throws(CompileError) -> [BPFInstruction] {
        var b: [BPFInstruction] = []
        var toFailure: [Int] = []  // indices of the `ja` instructions to patch
        for c in rule.checks {
            guard (0..<6).contains(c.index) else { throw CompileError(description: "\(rule.name): no argument \(c.index)") }
            guard !c.values.isEmpty, c.values.count <= 255 else {
                throw CompileError(description: "\(rule.name): argument \(c.index) needs 1-255 values, not \(c.values.count)")
            }
            b.append(.load(UInt32(16 + 8 * c.index)))
            if c.mask != 0xffff_ffff { b.append(.init(code: BPFInstruction.andK, k: c.mask)) }
            let n = c.values.count
            for (j, v) in c.values.enumerated() {
                // A match skips the remaining comparisons and the jump to the failure.
                b.append(.init(code: BPFInstruction.jeqK, jt: UInt8(n - j), jf: 0, k: v))
            }
            toFailure.append(b.count)
            b.append(.init(code: BPFInstruction.ja, k: 0))
        }
        b.append(.ret(rule.action.returnValue))
        if !toFailure.isEmpty {
            let failure = b.count
            b.append(.ret(rule.onFailedCheck.returnValue))
            for i in toFailure { b[i].k = UInt32(failure - i - 1) }
        }
        return b
    }
}

import Testing
@testable import VMDCore

/// A classic-BPF interpreter for the instructions `SeccompFilter` emits, run on a
/// `struct seccomp_data` as the kernel lays it out. Anything else it meets (an opcode the
/// compiler should not emit, a load outside seccomp_data, a jump out of the program, a
/// program without a return) is a failure, so the tests also check the program's shape.
struct BPFMachine {
    struct Fault: Error, CustomStringConvertible { var description: String }

    var nr: UInt32
    var arch: UInt32 = SeccompFilter.auditArchX86_64
    var args: [UInt64] = [0, 0, 0, 0, 0, 0]

    func word(_ offset: UInt32) throws -> UInt32 {
        switch offset {
        case 0: return nr
        case 4: return arch
        case 8, 12: return 0  // instruction_pointer
        case 16..<64 where offset % 4 == 0:
            let a = args[Int(offset - 16) / 8]
            return offset % 8 == 0 ? UInt32(truncatingIfNeeded: a) : UInt32(truncatingIfNeeded: a >> 32)
        default: throw Fault(description: "load at \(offset), outside seccomp_data")
        }
    }

    func run(_ program: [BPFInstruction]) throws -> UInt32 {
        var pc = 0, a: UInt32 = 0, steps = 0
        while pc < program.count {
            steps += 1
            guard steps <= program.count else { throw Fault(description: "more steps than instructions: a backward jump?") }
            let i = program[pc]
            pc += 1
            switch i.code {
            case BPFInstruction.ldAbsW: a = try word(i.k)
            case BPFInstruction.andK: a &= i.k
            case BPFInstruction.ja: pc += Int(i.k)
            case BPFInstruction.jeqK: pc += Int(a == i.k ? i.jt : i.jf)
            case BPFInstruction.jgeK: pc += Int(a >= i.k ? i.jt : i.jf)
            case BPFInstruction.retK: return i.k
            default: throw Fault(description: "opcode 0x\(String(i.code, radix: 16)) at \(pc - 1)")
            }
        }
        throw Fault(description: "ran off the end of the program")
    }
}

@Suite struct SeccompFilterTests {
    static let allow = SeccompAction.allow.returnValue
    static let kill = SeccompAction.killProcess.returnValue

    static let small = SeccompFilter(rules: [
        SyscallRule("read", 0),
        SyscallRule("ioctl", 16, checks: [.oneOf(1, [0xae80, 0x4008ae6a])]),
        SyscallRule("socket", 41, checks: [.oneOf(0, [1])], onFailedCheck: .errno(97)),
        SyscallRule("clone", 56, checks: [.hasBits(0, 0x10000), .onlyBits(0, 0x7fff_ff00)]),
        SyscallRule("clone3", 435, action: .errno(38)),
    ])

    func verdict(_ f: SeccompFilter, _ nr: UInt32, arch: UInt32 = SeccompFilter.auditArchX86_64, _ args: UInt64...) throws -> UInt32 {
        var m = BPFMachine(nr: nr, arch: arch)
        for (i, v) in args.enumerated() { m.args[i] = v }
        return try m.run(try f.compile())
    }

    @Test func theArchitectureIsCheckedFirst() throws {
        let p = try Self.small.compile()
        #expect(p[0] == BPFInstruction(code: BPFInstruction.ldAbsW, k: 4))
        // read under i386 (AUDIT_ARCH_I386) or any other ABI: killed, whatever its number.
        #expect(try verdict(Self.small, 0, arch: 0x4000_0003) == Self.kill)
        #expect(try verdict(Self.small, 0, arch: 0) == Self.kill)
        #expect(try verdict(Self.small, 0) == Self.allow)
    }

    @Test func x32NumbersAreKilled() throws {
        // x32's read is 0x40000000 | 0: same arch value, other ABI.
        #expect(try verdict(Self.small, 0x4000_0000) == Self.kill)
        #expect(try verdict(Self.small, 0x4000_0000 | 16, 0, 0xae80) == Self.kill)
    }

    @Test func unlistedCallsGetTheDefault() throws {
        #expect(try verdict(Self.small, 59) == Self.kill)  // execve
        #expect(try verdict(Self.small, 101) == Self.kill)  // ptrace
        var lenient = Self.small
        lenient.defaultAction = .errno(1)
        #expect(try verdict(lenient, 59) == SeccompAction.errno(1).returnValue)
    }

    @Test func argumentChecksLookAtTheLowHalf() throws {
        #expect(try verdict(Self.small, 16, 5, 0xae80) == Self.allow)
        #expect(try verdict(Self.small, 16, 5, 0x4008ae6a) == Self.allow)
        // The kernel's ioctl takes an unsigned int request: the upper half does not matter.
        #expect(try verdict(Self.small, 16, 5, 0xffff_ffff_0000_ae80) == Self.allow)
        #expect(try verdict(Self.small, 16, 5, 0x5401) == Self.kill)  // TCGETS: not listed
        #expect(try verdict(Self.small, 16, 5, 0) == Self.kill)
    }

    @Test func aFailedCheckTakesTheRulesFailureAction() throws {
        #expect(try verdict(Self.small, 41, 1) == Self.allow)  // AF_UNIX
        #expect(try verdict(Self.small, 41, 17) == SeccompAction.errno(97).returnValue)  // AF_PACKET: EAFNOSUPPORT
    }

    @Test func everyCheckOfARuleMustHold() throws {
        #expect(try verdict(Self.small, 56, 0x3d0f00) == Self.allow)  // pthread_create's flags
        #expect(try verdict(Self.small, 56, 0x1200011) == Self.kill)  // fork's: no CLONE_THREAD
        #expect(try verdict(Self.small, 56, 0x3d0f00 | 0x11) == Self.kill)  // an exit signal byte
        #expect(try verdict(Self.small, 435) == SeccompAction.errno(38).returnValue)
    }

    @Test func returnValuesAreTheKernels() {
        #expect(SeccompAction.allow.returnValue == 0x7fff_0000)
        #expect(SeccompAction.killProcess.returnValue == 0x8000_0000)
        #expect(SeccompAction.errno(38).returnValue == 0x0005_0026)
    }

    @Test func longBlocksAndBadRulesCompile() throws {
        // 300 values cannot be one check; 255 can, and the jump over its block still works.
        let values = (0..<255).map { UInt32($0) * 3 }
        let f = SeccompFilter(rules: [SyscallRule("ioctl", 16, checks: [.oneOf(1, values), .oneOf(0, values)]),
                                      SyscallRule("read", 0)])
        #expect(try verdict(f, 16, 9, 762) == Self.allow)
        #expect(try verdict(f, 16, 9, 763) == Self.kill)
        #expect(try verdict(f, 0) == Self.allow)
        #expect(throws: SeccompFilter.CompileError.self) {
            try SeccompFilter(rules: [SyscallRule("x", 1, checks: [.oneOf(1, (0..<300).map { UInt32($0) })])]).compile()
        }
        #expect(throws: SeccompFilter.CompileError.self) {
            try SeccompFilter(rules: [SyscallRule("x", 1, checks: [.oneOf(6, [0])])]).compile()
        }
    }
}

/// The VM process's own list (VMProcessSyscalls), run through the interpreter.
@Suite struct VMProcessSyscallsTests {
    static let pid: Int32 = 4242
    static let program: [BPFInstruction] = (try? VMProcessSyscalls.filter(pid: pid).compile()) ?? []
    static let allow = SeccompAction.allow.returnValue
    static let kill = SeccompAction.killProcess.returnValue

    func verdict(_ nr: UInt32, arch: UInt32 = SeccompFilter.auditArchX86_64, _ args: UInt64...) throws -> UInt32 {
        var m = BPFMachine(nr: nr, arch: arch)
        for (i, v) in args.enumerated() { m.args[i] = v }
        return try m.run(Self.program)
    }

    @Test func itCompilesWellInsideTheKernelsLimit() throws {
        let p = try VMProcessSyscalls.filter(pid: Self.pid).compile()
        #expect(p.count > 100 && p.count < 1024, "\(p.count) instructions")
        // Every listed call has one rule.
        let names = VMProcessSyscalls.rules(pid: Self.pid).map(\.name)
        #expect(Set(names).count == names.count)
    }

    @Test func anotherArchitectureIsKilledEvenForAllowedNumbers() throws {
        #expect(try verdict(0) == Self.allow)  // read
        #expect(try verdict(0, arch: 0x4000_0003) == Self.kill)  // i386's restart_syscall slot
        #expect(try verdict(3, arch: 0x4000_0003) == Self.kill)  // i386's read
    }

    @Test func theSurveyedCallsAreAllowed() throws {
        for nr: UInt32 in [0, 1, 7, 9, 10, 11, 12, 13, 14, 17, 18, 28, 39, 46, 47, 186, 202, 230, 231, 273, 293, 318, 334] {
            #expect(try verdict(nr) == Self.allow, "syscall \(nr)")
        }
        #expect(try verdict(60) == Self.allow)  // exit
        #expect(try verdict(231) == Self.allow)  // exit_group
    }

    @Test func ioctlTakesOnlyKVMTerminalAndTapOffloadRequests() throws {
        #expect(try verdict(16, 5, 0xae80) == Self.allow)  // KVM_RUN
        #expect(try verdict(16, 9, 0x5401) == Self.allow)  // TCGETS
        #expect(try verdict(16, 9, 0x541b) == Self.allow)  // FIONREAD
        #expect(try verdict(16, 9, 0x5412) == Self.kill)  // TIOCSTI: typing into a terminal
        #expect(try verdict(16, 9, 0x400454ca) == Self.kill)  // TUNSETIFF
        #expect(try verdict(16, 9, 0x400454d0) == Self.allow)  // TUNSETOFFLOAD: the guest's receive offloads
        #expect(try verdict(16, 9, 0x400454d8) == Self.kill)  // TUNSETVNETHDRSZ: set when the tap is opened
        #expect(try verdict(16, 4, 0xae01) == Self.kill)  // KVM_CREATE_VM: made before the sandbox
    }

    @Test func threadsButNoForks() throws {
        // glibc's pthread_create flags; fork's (SIGCHLD | CLONE_CHILD_*TID).
        #expect(try verdict(56, 0x3d0f00) == Self.allow)
        #expect(try verdict(56, 0x1200011) == Self.kill)
        #expect(try verdict(435) == SeccompAction.errno(38).returnValue)  // clone3: ENOSYS, glibc falls back
        #expect(try verdict(57) == Self.kill)  // fork
        #expect(try verdict(58) == Self.kill)  // vfork
    }

    @Test func signalsOnlyToItsOwnThreads() throws {
        #expect(try verdict(234, UInt64(Self.pid), 77, 10) == Self.allow)  // tgkill(self, tid, SIGUSR1)
        #expect(try verdict(234, 1, 1, 9) == Self.kill)
        #expect(try verdict(62, 1, 9) == Self.kill)  // kill
    }

    @Test func noFilesNoSocketsNoProcesses() throws {
        #expect(try verdict(257) == SeccompAction.errno(13).returnValue)  // openat: EACCES
        for nr: UInt32 in [2, 41, 42, 49, 59, 101, 165, 321, 322, 425, 437] {
            // open, socket, connect, bind, execve, ptrace, mount, bpf, execveat, io_uring_setup, openat2
            #expect(try verdict(nr) == Self.kill, "syscall \(nr)")
        }
        #expect(try verdict(157, 38) == Self.kill)  // prctl(PR_SET_NO_NEW_PRIVS...) and others
        #expect(try verdict(157, 15) == Self.allow)  // prctl(PR_SET_NAME)
        #expect(try verdict(72, 3, 1) == Self.allow)  // fcntl(F_GETFD)
        #expect(try verdict(72, 3, 37) == Self.kill)  // fcntl(F_OFD_SETLK)
    }
}

@Suite struct LandlockPolicyTests {
    @Test func eachABIHandlesWhatItKnows() {
        #expect(LandlockPolicy.denyAll(abi: 0) == nil)
        #expect(LandlockPolicy.denyAll(abi: -1) == nil)
        #expect(LandlockPolicy.denyAll(abi: 1) == LandlockPolicy(fs: 0x1fff, net: 0, scoped: 0))
        #expect(LandlockPolicy.denyAll(abi: 3) == LandlockPolicy(fs: 0x7fff, net: 0, scoped: 0))
        #expect(LandlockPolicy.denyAll(abi: 4) == LandlockPolicy(fs: 0x7fff, net: 3, scoped: 0))
        #expect(LandlockPolicy.denyAll(abi: 6) == LandlockPolicy(fs: 0xffff, net: 3, scoped: 3))
        // Later ABIs add nothing this policy knows how to handle yet.
        #expect(LandlockPolicy.denyAll(abi: 7) == LandlockPolicy.denyAll(abi: 6))
    }
}

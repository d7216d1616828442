import CKVM

/// The system calls a VM process may make once it runs its guest: the list measured with
/// `strace -f` on VM processes after their privilege drop (stand-in guests, the console and
/// virtio test kernels on KVM and on the software CPU, a Debian Linux boot on the software
/// CPU with a qcow2 virtio-blk disk, a virtio-net local interface and the console; docs/vmd.md
/// "The VM process's sandbox"), plus the few the same code paths reach on rarer branches
/// (named below). Everything else, execve, open, socket, ptrace, mount, bpf, ..., kills the
/// process (SECCOMP_RET_KILL_PROCESS).
public enum VMProcessSyscalls {
    /// The filter for the VM process `pid` (signals with tgkill only to its own threads).
    public static func filter(pid: Int32) -> SeccompFilter {
        SeccompFilter(rules: rules(pid: pid))
    }

    public static func rules(pid: Int32) -> [SyscallRule] {
        // Hot calls first: the filter walks the list in order on every system call.
        var r: [SyscallRule] = [
            SyscallRule("ioctl", SYS_ioctl, checks: [.oneOf(1, ioctlRequests)]),
            SyscallRule("futex", SYS_futex),
            SyscallRule("read", SYS_read),
            SyscallRule("write", SYS_write),
            SyscallRule("poll", SYS_poll),
            SyscallRule("ppoll", SYS_ppoll),
            SyscallRule("pread64", SYS_pread64),
            SyscallRule("pwrite64", SYS_pwrite64),
            SyscallRule("preadv", SYS_preadv),
            SyscallRule("pwritev", SYS_pwritev),
            SyscallRule("readv", SYS_readv),
            SyscallRule("writev", SYS_writev),
            SyscallRule("recvmsg", SYS_recvmsg),
            SyscallRule("sendmsg", SYS_sendmsg),
            SyscallRule("rt_sigprocmask", SYS_rt_sigprocmask),
            SyscallRule("clock_nanosleep", SYS_clock_nanosleep),
            SyscallRule("nanosleep", SYS_nanosleep),
            SyscallRule("clock_gettime", SYS_clock_gettime),
            SyscallRule("gettimeofday", SYS_gettimeofday),
            SyscallRule("sched_yield", SYS_sched_yield),
            SyscallRule("gettid", SYS_gettid),
            SyscallRule("getpid", SYS_getpid),
            // Memory: malloc, thread stacks, guest RAM is mapped before the sandbox.
            SyscallRule("mmap", SYS_mmap),
            SyscallRule("munmap", SYS_munmap),
            SyscallRule("mprotect", SYS_mprotect),
            SyscallRule("madvise", SYS_madvise),
            SyscallRule("mremap", SYS_mremap),
            SyscallRule("brk", SYS_brk),
            // Threads: glibc tries clone3 first (its flags sit in a struct the filter cannot
            // read), so clone3 fails with ENOSYS and glibc falls back to clone, whose flags
            // must make a thread (CLONE_VM | CLONE_THREAD | CLONE_SIGHAND): no fork.
            SyscallRule("clone3", SYS_clone3, action: .errno(38)),  // ENOSYS
            SyscallRule("clone", SYS_clone, checks: [.hasBits(0, cloneThreadFlags)]),
            SyscallRule("set_robust_list", SYS_set_robust_list),
            SyscallRule("rseq", SYS_rseq),
            SyscallRule("exit", SYS_exit),
            SyscallRule("exit_group", SYS_exit_group),
            // Signals: vCPU kicks (SIGUSR1 to a vCPU thread), abort's raise, glibc's setxid
            // broadcast; only to threads of this process.
            SyscallRule("tgkill", SYS_tgkill, checks: [.oneOf(0, [UInt32(bitPattern: pid)])]),
            SyscallRule("rt_sigaction", SYS_rt_sigaction),
            SyscallRule("rt_sigreturn", SYS_rt_sigreturn),
            SyscallRule("sigaltstack", SYS_sigaltstack),
            // Descriptors it already holds: disks (qcow2 grows, flushes), eventfds and pipes
            // made for devices and the console, close.
            SyscallRule("close", SYS_close),
            SyscallRule("fcntl", SYS_fcntl, checks: [.oneOf(1, fcntlCommands)]),
            SyscallRule("lseek", SYS_lseek),
            SyscallRule("fsync", SYS_fsync),
            SyscallRule("fdatasync", SYS_fdatasync),
            SyscallRule("fallocate", SYS_fallocate),
            SyscallRule("ftruncate", SYS_ftruncate),
            SyscallRule("fstat", SYS_fstat),
            // newfstatat with AT_EMPTY_PATH is glibc's fstat; a path would need it too, but
            // nothing here looks names up (and open is refused anyway).
            SyscallRule("newfstatat", SYS_newfstatat),
            SyscallRule("eventfd2", SYS_eventfd2),
            SyscallRule("pipe2", SYS_pipe2),
            SyscallRule("getrandom", SYS_getrandom),
            // Thread names (ps, gdb): PR_SET_NAME / PR_GET_NAME only.
            SyscallRule("prctl", SYS_prctl, checks: [.oneOf(0, [15, 16])]),  // PR_SET_NAME, PR_GET_NAME
            SyscallRule("sched_getaffinity", SYS_sched_getaffinity),
            SyscallRule("getuid", SYS_getuid),
            SyscallRule("geteuid", SYS_geteuid),
            SyscallRule("getgid", SYS_getgid),
            SyscallRule("getegid", SYS_getegid),
        ]
        // Foundation names threads by writing /proc/thread-self/comm: no file is opened in
        // the sandbox, so that open fails with EACCES (the name stays the inherited one).
        r.append(SyscallRule("openat", SYS_openat, action: .errno(13)))
        return r
    }

    /// CLONE_VM | CLONE_SIGHAND | CLONE_THREAD.
    public static let cloneThreadFlags: UInt32 = 0x0000_0100 | 0x0000_0800 | 0x0001_0000

    /// F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC. No locks: vmd took the
    /// disks' OFD locks and they travel with the descriptors.
    public static let fcntlCommands: [UInt32] = [0, 1, 2, 3, 4, 1030]

    /// Requests on the descriptors the process holds: KVM (system, VM and vCPU ioctls),
    /// the console pty (termios, FIONREAD), FIONBIO, the taps' TUNSETOFFLOAD. KVM_RUN first:
    /// it is the hot one.
    public static let ioctlRequests: [UInt32] = {
        let kvm: [UInt] = [
            CKVM_RUN, CKVM_IRQ_LINE, CKVM_IRQ_LINE_STATUS, CKVM_SIGNAL_MSI, CKVM_IOEVENTFD, CKVM_IRQFD,
            CKVM_GET_REGS, CKVM_SET_REGS, CKVM_GET_SREGS, CKVM_SET_SREGS, CKVM_GET_MSRS, CKVM_SET_MSRS,
            CKVM_GET_FPU, CKVM_SET_FPU, CKVM_GET_LAPIC, CKVM_SET_LAPIC, CKVM_GET_VCPU_EVENTS,
            CKVM_SET_VCPU_EVENTS, CKVM_GET_MP_STATE, CKVM_SET_MP_STATE, CKVM_INTERRUPT, CKVM_NMI,
            CKVM_SET_SIGNAL_MASK, CKVM_SET_CPUID2, CKVM_GET_CPUID2, CKVM_GET_TSC_KHZ,
            CKVM_SET_USER_MEMORY_REGION, CKVM_SET_GSI_ROUTING, CKVM_ENABLE_CAP, CKVM_GET_CLOCK,
            CKVM_SET_CLOCK, CKVM_GET_DIRTY_LOG, CKVM_REGISTER_COALESCED_MMIO, CKVM_GET_IRQCHIP,
            CKVM_SET_IRQCHIP, CKVM_GET_PIT2, CKVM_SET_PIT2, CKVM_CREATE_VCPU, CKVM_CHECK_EXTENSION,
            CKVM_GET_VCPU_MMAP_SIZE, CKVM_GET_SUPPORTED_CPUID, CKVM_GET_MSR_INDEX_LIST, CKVM_GET_API_VERSION,
            // The state stream (vmctl send / receive): FPU and SSE/AVX state, XCR0.
            CKVM_GET_XSAVE, CKVM_SET_XSAVE, CKVM_GET_XCRS, CKVM_SET_XCRS,
        ]
        // TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIONREAD, FIONBIO, FIOCLEX.
        let tty: [UInt] = [0x5401, 0x5402, 0x5403, 0x5404, 0x5413, 0x541b, 0x5421, 0x5451]
        // TUNSETOFFLOAD = _IOW('T', 208, unsigned int): the guest's driver picks its receive
        // offloads when it starts the device, after the sandbox is up (HostNet's TunIoctl).
        let tun: [UInt] = [0x4004_54D0]
        return (kvm + tty + tun).map { UInt32(truncatingIfNeeded: $0) }
    }()
}

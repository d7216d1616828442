#ifndef CKVM_H
#define CKVM_H
/*
 * The only C in the project: what Swift cannot import from <linux/kvm.h> by itself (and,
 * in chostatomics.h beside this header, the software CPU's atomics on guest-RAM pointers).
 *
 *  - ioctl request numbers (built from the _IO* function-like macros) re-exported as
 *    constants;
 *  - typed copies of the KVM_EXIT_* / KVM_CAP_* / KVM_MP_STATE_* values, so Swift compares
 *    them with the right integer type;
 *  - inline accessors for the kvm_run union (Swift would copy the whole union on each
 *    access in debug builds) and for flexible-array structs (kvm_cpuid2, kvm_msrs,
 *    kvm_irq_routing);
 *  - eventfd, a u64-argument ioctl and a signal helper;
 *  - per-thread credentials and path resolution for vmd's file opener (raw system calls:
 *    glibc's setgroups changes every thread, and syscall(2) is variadic);
 *  - the VM process's sandbox: system call numbers (<sys/syscall.h>), struct sock_filter,
 *    and the variadic prctl/syscall calls that set no_new_privs and install the filter.
 *
 * Debian 12's linux-libc-dev is 6.1 while the kernel can be much newer: constants that
 * appeared later are defined under #ifndef.
 */
#include <linux/kvm.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <linux/filter.h>

/* ---- constants newer than the 6.1 headers ---- */
#ifndef KVM_CAP_USER_MEMORY2
#define KVM_CAP_USER_MEMORY2 231
#endif
#ifndef KVM_CAP_X86_APIC_BUS_CYCLES_NS
#define KVM_CAP_X86_APIC_BUS_CYCLES_NS 237
#endif
#ifndef KVM_SYSTEM_EVENT_SEV_TERM
#define KVM_SYSTEM_EVENT_SEV_TERM 6
#endif
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif
#ifndef KVM_EXIT_NOTIFY
#define KVM_EXIT_NOTIFY 37
#endif

/* ---- ioctl request numbers ---- */
/* system ioctls (on /dev/kvm) */
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
/* VM ioctls */
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_IRQ_LINE_STATUS = KVM_IRQ_LINE_STATUS;
static const unsigned long CKVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long CKVM_REGISTER_COALESCED_MMIO = KVM_REGISTER_COALESCED_MMIO;
static const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
/* vCPU ioctls */
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_GET_CPUID2 = KVM_GET_CPUID2;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_INTERRUPT = KVM_INTERRUPT;
static const unsigned long CKVM_NMI = KVM_NMI;
static const unsigned long CKVM_SET_SIGNAL_MASK = KVM_SET_SIGNAL_MASK;
static const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;

/* ---- typed constants ---- */
static const int32_t CKVM_API_VERSION = KVM_API_VERSION;

enum {
    CKVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN,
    CKVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION,
    CKVM_EXIT_IO = KVM_EXIT_IO,
    CKVM_EXIT_HYPERCALL = KVM_EXIT_HYPERCALL,
    CKVM_EXIT_DEBUG = KVM_EXIT_DEBUG,
    CKVM_EXIT_HLT = KVM_EXIT_HLT,
    CKVM_EXIT_MMIO = KVM_EXIT_MMIO,
    CKVM_EXIT_IRQ_WINDOW_OPEN = KVM_EXIT_IRQ_WINDOW_OPEN,
    CKVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN,
    CKVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY,
    CKVM_EXIT_INTR = KVM_EXIT_INTR,
    CKVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR,
    CKVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT,
    CKVM_EXIT_IOAPIC_EOI = KVM_EXIT_IOAPIC_EOI,
    CKVM_EXIT_X86_RDMSR = KVM_EXIT_X86_RDMSR,
    CKVM_EXIT_X86_WRMSR = KVM_EXIT_X86_WRMSR,
    CKVM_EXIT_NOTIFY = KVM_EXIT_NOTIFY,
    CKVM_EXIT_MEMORY_FAULT = KVM_EXIT_MEMORY_FAULT,
};

enum {
    CKVM_INTERNAL_ERROR_EMULATION = KVM_INTERNAL_ERROR_EMULATION,
    CKVM_INTERNAL_ERROR_SIMUL_EX = KVM_INTERNAL_ERROR_SIMUL_EX,
    CKVM_INTERNAL_ERROR_DELIVERY_EV = KVM_INTERNAL_ERROR_DELIVERY_EV,
    CKVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};

enum {
    CKVM_SYSTEM_EVENT_SHUTDOWN = KVM_SYSTEM_EVENT_SHUTDOWN,
    CKVM_SYSTEM_EVENT_RESET = KVM_SYSTEM_EVENT_RESET,
    CKVM_SYSTEM_EVENT_CRASH = KVM_SYSTEM_EVENT_CRASH,
};

enum {
    CKVM_MP_STATE_RUNNABLE = KVM_MP_STATE_RUNNABLE,
    CKVM_MP_STATE_UNINITIALIZED = KVM_MP_STATE_UNINITIALIZED,
    CKVM_MP_STATE_INIT_RECEIVED = KVM_MP_STATE_INIT_RECEIVED,
    CKVM_MP_STATE_HALTED = KVM_MP_STATE_HALTED,
    CKVM_MP_STATE_SIPI_RECEIVED = KVM_MP_STATE_SIPI_RECEIVED,
};

enum {
    CKVM_CAP_IRQCHIP = KVM_CAP_IRQCHIP,
    CKVM_CAP_HLT = KVM_CAP_HLT,
    CKVM_CAP_USER_MEMORY = KVM_CAP_USER_MEMORY,
    CKVM_CAP_SET_TSS_ADDR = KVM_CAP_SET_TSS_ADDR,
    CKVM_CAP_EXT_CPUID = KVM_CAP_EXT_CPUID,
    CKVM_CAP_NR_VCPUS = KVM_CAP_NR_VCPUS,
    CKVM_CAP_NR_MEMSLOTS = KVM_CAP_NR_MEMSLOTS,
    CKVM_CAP_MP_STATE = KVM_CAP_MP_STATE,
    CKVM_CAP_COALESCED_MMIO = KVM_CAP_COALESCED_MMIO,
    CKVM_CAP_IRQ_ROUTING = KVM_CAP_IRQ_ROUTING,
    CKVM_CAP_IRQ_INJECT_STATUS = KVM_CAP_IRQ_INJECT_STATUS,
    CKVM_CAP_IRQFD = KVM_CAP_IRQFD,
    CKVM_CAP_PIT2 = KVM_CAP_PIT2,
    CKVM_CAP_IOEVENTFD = KVM_CAP_IOEVENTFD,
    CKVM_CAP_SET_IDENTITY_MAP_ADDR = KVM_CAP_SET_IDENTITY_MAP_ADDR,
    CKVM_CAP_VCPU_EVENTS = KVM_CAP_VCPU_EVENTS,
    CKVM_CAP_XCRS = KVM_CAP_XCRS,
    CKVM_CAP_ENABLE_CAP = KVM_CAP_ENABLE_CAP,
    CKVM_CAP_XSAVE = KVM_CAP_XSAVE,
    CKVM_CAP_GET_TSC_KHZ = KVM_CAP_GET_TSC_KHZ,
    CKVM_CAP_SIGNAL_MSI = KVM_CAP_SIGNAL_MSI,
    CKVM_CAP_TSC_DEADLINE_TIMER = KVM_CAP_TSC_DEADLINE_TIMER,
    CKVM_CAP_IMMEDIATE_EXIT = KVM_CAP_IMMEDIATE_EXIT,
    CKVM_CAP_MAX_VCPUS = KVM_CAP_MAX_VCPUS,
    CKVM_CAP_MAX_VCPU_ID = KVM_CAP_MAX_VCPU_ID,
    CKVM_CAP_READONLY_MEM = KVM_CAP_READONLY_MEM,
    CKVM_CAP_SPLIT_IRQCHIP = KVM_CAP_SPLIT_IRQCHIP,
    CKVM_CAP_X2APIC_API = KVM_CAP_X2APIC_API,
    CKVM_CAP_COALESCED_PIO = KVM_CAP_COALESCED_PIO,
    CKVM_CAP_USER_MEMORY2 = KVM_CAP_USER_MEMORY2,
};

enum {
    CKVM_IRQ_ROUTING_IRQCHIP = KVM_IRQ_ROUTING_IRQCHIP,
    CKVM_IRQ_ROUTING_MSI = KVM_IRQ_ROUTING_MSI,
    CKVM_IRQCHIP_PIC_MASTER = KVM_IRQCHIP_PIC_MASTER,
    CKVM_IRQCHIP_PIC_SLAVE = KVM_IRQCHIP_PIC_SLAVE,
    CKVM_IRQCHIP_IOAPIC = KVM_IRQCHIP_IOAPIC,
};

static const uint32_t CKVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const uint32_t CKVM_IOEVENTFD_FLAG_PIO = KVM_IOEVENTFD_FLAG_PIO;
static const uint32_t CKVM_IOEVENTFD_FLAG_DEASSIGN = KVM_IOEVENTFD_FLAG_DEASSIGN;
static const uint32_t CKVM_IRQFD_FLAG_DEASSIGN = KVM_IRQFD_FLAG_DEASSIGN;
static const uint32_t CKVM_IRQFD_FLAG_RESAMPLE = KVM_IRQFD_FLAG_RESAMPLE;
static const uint32_t CKVM_MEM_READONLY = KVM_MEM_READONLY;
static const uint32_t CKVM_MEM_LOG_DIRTY_PAGES = KVM_MEM_LOG_DIRTY_PAGES;
static const uint32_t CKVM_PIT_SPEAKER_DUMMY = KVM_PIT_SPEAKER_DUMMY;
static const uint32_t CKVM_CPUID_FLAG_SIGNIFCANT_INDEX = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
static const uint32_t CKVM_X2APIC_API_USE_32BIT_IDS = KVM_X2APIC_API_USE_32BIT_IDS;
static const uint32_t CKVM_X2APIC_API_DISABLE_BROADCAST_QUIRK = KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK;

/* ---- kvm_run accessors (read through the pointer, never copy the union) ---- */
static inline uint32_t ckvm_run_exit_reason(const struct kvm_run *r) { return r->exit_reason; }
static inline void ckvm_run_set_immediate_exit(struct kvm_run *r, uint8_t v) {
    __atomic_store_n(&r->immediate_exit, v, __ATOMIC_SEQ_CST);
}
static inline uint8_t ckvm_run_immediate_exit(const struct kvm_run *r) {
    return __atomic_load_n(&r->immediate_exit, __ATOMIC_SEQ_CST);
}
static inline uint8_t ckvm_run_if_flag(const struct kvm_run *r) { return r->if_flag; }
static inline uint8_t ckvm_run_ready_for_interrupt_injection(const struct kvm_run *r) {
    return r->ready_for_interrupt_injection;
}
static inline void ckvm_run_set_request_interrupt_window(struct kvm_run *r, uint8_t v) {
    r->request_interrupt_window = v;
}
/* KVM_EXIT_IO */
static inline uint8_t ckvm_run_io_direction(const struct kvm_run *r) { return r->io.direction; }
static inline uint8_t ckvm_run_io_size(const struct kvm_run *r) { return r->io.size; }
static inline uint16_t ckvm_run_io_port(const struct kvm_run *r) { return r->io.port; }
static inline uint32_t ckvm_run_io_count(const struct kvm_run *r) { return r->io.count; }
static inline uint64_t ckvm_run_io_data_offset(const struct kvm_run *r) { return r->io.data_offset; }
/* KVM_EXIT_MMIO */
static inline uint64_t ckvm_run_mmio_phys_addr(const struct kvm_run *r) { return r->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_len(const struct kvm_run *r) { return r->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *r) { return r->mmio.is_write; }
static inline void *ckvm_run_mmio_data(struct kvm_run *r) { return r->mmio.data; }
/* KVM_EXIT_FAIL_ENTRY / KVM_EXIT_UNKNOWN / KVM_EXIT_EXCEPTION */
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *r) {
    return r->fail_entry.hardware_entry_failure_reason;
}
static inline uint64_t ckvm_run_hw_exit_reason(const struct kvm_run *r) { return r->hw.hardware_exit_reason; }
static inline uint32_t ckvm_run_ex_exception(const struct kvm_run *r) { return r->ex.exception; }
static inline uint32_t ckvm_run_ex_error_code(const struct kvm_run *r) { return r->ex.error_code; }
/* KVM_EXIT_SYSTEM_EVENT */
static inline uint32_t ckvm_run_system_event_type(const struct kvm_run *r) { return r->system_event.type; }
/* KVM_EXIT_INTERNAL_ERROR */
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *r) { return r->internal.suberror; }
static inline uint32_t ckvm_run_internal_ndata(const struct kvm_run *r) { return r->internal.ndata; }
static inline uint64_t ckvm_run_internal_data(const struct kvm_run *r, uint32_t i) {
    return i < 16 ? r->internal.data[i] : 0;
}
/* KVM_EXIT_X86_RDMSR / WRMSR */
static inline uint32_t ckvm_run_msr_index(const struct kvm_run *r) { return r->msr.index; }
static inline uint64_t ckvm_run_msr_data(const struct kvm_run *r) { return r->msr.data; }
static inline void ckvm_run_msr_set_data(struct kvm_run *r, uint64_t d) { r->msr.data = d; }
static inline void ckvm_run_msr_set_error(struct kvm_run *r, uint8_t e) { r->msr.error = e; }

/* ---- flexible-array structs ---- */
static inline size_t ckvm_cpuid2_size(uint32_t n) {
    return sizeof(struct kvm_cpuid2) + (size_t)n * sizeof(struct kvm_cpuid_entry2);
}
static inline struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }

static inline size_t ckvm_msrs_size(uint32_t n) {
    return sizeof(struct kvm_msrs) + (size_t)n * sizeof(struct kvm_msr_entry);
}
static inline struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *m) { return m->entries; }

static inline size_t ckvm_msr_list_size(uint32_t n) {
    return sizeof(struct kvm_msr_list) + (size_t)n * sizeof(uint32_t);
}
static inline uint32_t *ckvm_msr_list_indices(struct kvm_msr_list *l) { return l->indices; }

static inline size_t ckvm_irq_routing_size(uint32_t n) {
    return sizeof(struct kvm_irq_routing) + (size_t)n * sizeof(struct kvm_irq_routing_entry);
}
static inline struct kvm_irq_routing_entry *ckvm_irq_routing_entries(struct kvm_irq_routing *r) {
    return r->entries;
}
/* Fills one routing entry (the u union does not import as something easy to write). */
static inline void ckvm_irq_routing_set_irqchip(struct kvm_irq_routing_entry *e, uint32_t gsi,
                                                uint32_t chip, uint32_t pin) {
    memset(e, 0, sizeof(*e));
    e->gsi = gsi;
    e->type = KVM_IRQ_ROUTING_IRQCHIP;
    e->u.irqchip.irqchip = chip;
    e->u.irqchip.pin = pin;
}
static inline void ckvm_irq_routing_set_msi(struct kvm_irq_routing_entry *e, uint32_t gsi,
                                            uint64_t address, uint32_t data) {
    memset(e, 0, sizeof(*e));
    e->gsi = gsi;
    e->type = KVM_IRQ_ROUTING_MSI;
    e->u.msi.address_lo = (uint32_t)address;
    e->u.msi.address_hi = (uint32_t)(address >> 32);
    e->u.msi.data = data;
}

/* ---- calls Swift cannot make directly ---- */
/* ioctl with an integer argument of full width (Swift's overlay only has CInt). */
static inline int ckvm_ioctl_u64(int fd, unsigned long request, uint64_t arg) {
    return ioctl(fd, request, (unsigned long)arg);
}
static inline int ckvm_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
static inline int ckvm_efd_cloexec(void) { return EFD_CLOEXEC; }
static inline int ckvm_efd_nonblock(void) { return EFD_NONBLOCK; }

/* Installs a no-op handler for `sig` without SA_RESTART, so a blocking KVM_RUN returns
 * EINTR when the signal is delivered to the vCPU thread. Returns 0 or -1 (errno set). */
int ckvm_install_kick_handler(int sig);
/* Unblocks `sig` for the calling thread (threads started from libdispatch workers inherit
 * a mask that blocks it). */
int ckvm_unblock_signal(int sig);
/* Names the calling thread (first 15 bytes), for ps/top/gdb (prctl PR_SET_NAME). */
int ckvm_set_thread_name(const char *name);

/* ---- per-thread file-system credentials (vmd opens a user's files as that user) ---- */
/* setfsuid/setfsgid: per thread on Linux; return the previous id. */
int ckvm_thread_setfsuid(uint32_t uid);
int ckvm_thread_setfsgid(uint32_t gid);
/* The raw setgroups system call: changes the calling thread only (glibc's wrapper makes
 * every thread of the process change). 0 or -1 (errno set). */
int ckvm_thread_setgroups(size_t n, const uint32_t *gids);
/* setresuid/setresgid of the calling thread only (raw system calls; -1 keeps an id).
 * Tests use them to connect to vmd as another user from one thread. 0 or -1. */
int ckvm_thread_setresuid(int64_t r, int64_t e, int64_t s);
int ckvm_thread_setresgid(int64_t r, int64_t e, int64_t s);
/* faccessat2(dirfd, path, mode, AT_EACCESS): checks with the thread's file-system ids.
 * 0 or -1 (errno set). */
int ckvm_access_as_fsuid(const char *path, int mode);
/* openat2(AT_FDCWD, path, flags, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): opens `path`
 * only if no component of it is a symbolic link. -1 with errno ENOSYS on kernels before
 * 5.6, ELOOP when a component is a link. */
int ckvm_open_no_symlinks(const char *path, int flags);

/* ---- the VM process's sandbox (Sources/VMDTool/Sandbox.swift) ---- */
/* prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0): execve can no longer grant privileges, which
 * also lets an unprivileged process install a seccomp filter. 0 or -1 (errno set). */
int ckvm_set_no_new_privs(void);
/* seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog) with `flags` SECCOMP_FILTER_FLAG_TSYNC
 * when `all_threads`: every thread of the process gets the filter, or none does. Returns 0,
 * -1 with errno set, or (TSYNC) the id of a thread that could not be synchronized. */
long ckvm_seccomp_set_filter(const struct sock_filter *code, unsigned short len, int all_threads);
/* Landlock: the ABI version the kernel offers (>= 1), or -1 with errno (ENOSYS, EOPNOTSUPP:
 * none). */
int ckvm_landlock_abi(void);
/* A Landlock ruleset that handles `fs`, `net` and `scoped` rights and allows none of them
 * (no rules), enforced on the calling thread and the threads it creates afterwards. Needs
 * no_new_privs. 0 or -1 (errno set). */
int ckvm_landlock_restrict_all(uint64_t fs, uint64_t net, uint64_t scoped);
/* The modes /proc/self/status reports: prctl(PR_GET_SECCOMP) and PR_GET_NO_NEW_PRIVS. */
int ckvm_get_seccomp_mode(void);
int ckvm_get_no_new_privs(void);

#endif

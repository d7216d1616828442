#define _GNU_SOURCE
#include "ckvm.h"
#include <sys/syscall.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <sys/prctl.h>
#include <linux/seccomp.h>

static void ckvm_kick_handler(int sig) { (void)sig; }

int ckvm_install_kick_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must come back with EINTR */
    return sigaction(sig, &sa, NULL);
}

int ckvm_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, 15);
    buf[15] = 0;
    /* prctl, not pthread_setname_np: no /proc file is opened, so it also works inside the
     * VM process's sandbox, where open is refused. */
    return prctl(PR_SET_NAME, buf, 0, 0, 0);
}

int ckvm_unblock_signal(int sig) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int ckvm_thread_setfsuid(uint32_t uid) { return (int)syscall(SYS_setfsuid, (uid_t)uid); }
int ckvm_thread_setfsgid(uint32_t gid) { return (int)syscall(SYS_setfsgid, (gid_t)gid); }

int ckvm_thread_setgroups(size_t n, const uint32_t *gids) {
    return (int)syscall(SYS_setgroups, n, gids);
}

int ckvm_thread_setresuid(int64_t r, int64_t e, int64_t s) {
    return (int)syscall(SYS_setresuid, (uid_t)r, (uid_t)e, (uid_t)s);
}
int ckvm_thread_setresgid(int64_t r, int64_t e, int64_t s) {
    return (int)syscall(SYS_setresgid, (gid_t)r, (gid_t)e, (gid_t)s);
}

#ifndef SYS_faccessat2
#define SYS_faccessat2 439
#endif
int ckvm_access_as_fsuid(const char *path, int mode) {
    return (int)syscall(SYS_faccessat2, AT_FDCWD, path, mode, AT_EACCESS);
}

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
struct ckvm_open_how { uint64_t flags, mode, resolve; };
int ckvm_open_no_symlinks(const char *path, int flags) {
    struct ckvm_open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t)(unsigned int)flags;
    how.resolve = 0x04 /* RESOLVE_NO_SYMLINKS */ | 0x02 /* RESOLVE_NO_MAGICLINKS */;
    return (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
}

int ckvm_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }

long ckvm_seccomp_set_filter(const struct sock_filter *code, unsigned short len, int all_threads) {
    struct sock_fprog prog = { .len = len, .filter = (struct sock_filter *)code };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, all_threads ? SECCOMP_FILTER_FLAG_TSYNC : 0, &prog);
}

int ckvm_get_seccomp_mode(void) { return prctl(PR_GET_SECCOMP, 0, 0, 0, 0); }
int ckvm_get_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
/* struct landlock_ruleset_attr as of ABI 6 (the 6.1 headers lack the later fields); the
 * size passed tells the kernel how much of it there is. */
struct ckvm_landlock_ruleset_attr { uint64_t handled_access_fs, handled_access_net, scoped; };

int ckvm_landlock_abi(void) {
    return (int)syscall(SYS_landlock_create_ruleset, NULL, 0, 1u /* LANDLOCK_CREATE_RULESET_VERSION */);
}

int ckvm_landlock_restrict_all(uint64_t fs, uint64_t net, uint64_t scoped) {
    struct ckvm_landlock_ruleset_attr attr = { fs, net, scoped };
    size_t size = scoped ? 24 : net ? 16 : 8;
    int fd = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0u);
    if (fd < 0) return -1;
    int rc = (int)syscall(SYS_landlock_restrict_self, fd, 0u);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* The vsock initramfs's guest program (guests/debian/build.sh --variant vsock), built
 * with gcc -static. Usage: vsock-echo PORT HOSTPORT
 *  1. listens on vsock port PORT (any CID);
 *  2. connects to the host (CID 2) port HOSTPORT, sends "HELLO-FROM-GUEST\n", prints
 *     "SWIFTVMM-VSOCK-GUEST-GOT <the line the host answered>";
 *  3. accepts one connection on PORT and echoes it until end of stream, then prints
 *     "SWIFTVMM-VSOCK-ECHOED <bytes>".
 * Every step is bounded by alarm(): a host that never comes does not hang the guest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

static int fail(const char *what) {
    printf("SWIFTVMM-VSOCK-FAILED %s\n", what);
    perror(what);
    fflush(stdout);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: vsock-echo PORT HOSTPORT\n"); return 2; }
    unsigned port = (unsigned)strtoul(argv[1], 0, 10), hostport = (unsigned)strtoul(argv[2], 0, 10);
    alarm(300);

    int ls = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (ls < 0) return fail("socket");
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4) < 0) return fail("listen");

    int c = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm h = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = hostport };
    if (c < 0 || connect(c, (struct sockaddr *)&h, sizeof h) < 0) return fail("connect");
    const char *hello = "HELLO-FROM-GUEST\n";
    if (write(c, hello, strlen(hello)) != (ssize_t)strlen(hello)) return fail("write");
    char line[128];
    size_t n = 0;
    while (n + 1 < sizeof line) {
        ssize_t r = read(c, line + n, 1);
        if (r <= 0 || line[n] == '\n') break;
        n++;
    }
    line[n] = 0;
    printf("SWIFTVMM-VSOCK-GUEST-GOT %s\n", line);
    fflush(stdout);
    close(c);

    int s = accept(ls, 0, 0);
    if (s < 0) return fail("accept");
    char buf[65536];
    unsigned long total = 0;
    for (;;) {
        ssize_t r = read(s, buf, sizeof buf);
        if (r < 0) return fail("read");
        if (r == 0) break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(s, buf + off, (size_t)(r - off));
            if (w <= 0) return fail("echo");
            off += w;
        }
        total += (unsigned long)r;
    }
    printf("SWIFTVMM-VSOCK-ECHOED %lu\n", total);
    fflush(stdout);
    close(s);
    close(ls);
    return 0;
}

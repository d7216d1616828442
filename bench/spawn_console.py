"""Shared by the bench timers: start COMMAND with its stdout (the guest's serial console)
on a pipe and stdin/stderr on /dev/null. Returns (pid, read_fd, t0 from time.monotonic)."""
import os, time

def spawn(argv):
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 2)
        os.close(r); os.close(w)
        os.execvp(argv[0], argv)
    os.close(w)
    return pid, r, t0

#!/usr/bin/env python3
"""Time from process start until PATTERN appears on its stdout (the serial console), then
kill it. Usage: firmware-prompt.py RUNS TIMEOUT_S PATTERN -- COMMAND...
Prints one line per run: "ms_to_pattern cpu_s" (nan when the pattern never came)."""
import os, sys, time, select, signal
from spawn_console import spawn

def once(argv, pattern, limit):
    pid, r, t0 = spawn(argv)
    seen, found = b"", None
    while found is None:
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        seen = (seen + chunk)[-4096:]
        if pattern in seen:
            found = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _, _, rusage = os.wait4(pid, 0)
    os.close(r)
    ms = (found - t0) * 1000 if found else float("nan")
    return ms, rusage.ru_utime + rusage.ru_stime

def main():
    runs, limit, pattern = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode()
    argv = sys.argv[sys.argv.index("--") + 1:]
    for _ in range(runs):
        ms, cpu = once(argv, pattern, limit)
        print(f"{ms:.1f} {cpu:.2f}", flush=True)

main()

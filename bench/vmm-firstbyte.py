#!/usr/bin/env python3
"""Time from process start to the first byte on its stdout (the guest's first serial
byte), then let it run to the end. Usage: vmm-firstbyte.py RUNS -- COMMAND...
Prints one line per run: "first_byte_ms total_ms exit_status max_rss_kib"."""
import os, sys, time, select
from spawn_console import spawn

def once(argv):
    pid, r, t0 = spawn(argv)
    first = None
    while True:
        ready, _, _ = select.select([r], [], [], 30)
        if not ready:
            os.kill(pid, 9)
            break
        chunk = os.read(r, 65536)
        if first is None and chunk:
            first = time.monotonic()
        if not chunk:
            break
    _, status, rusage = os.wait4(pid, 0)
    t1 = time.monotonic()
    os.close(r)
    code = os.waitstatus_to_exitcode(status)
    fb = (first - t0) * 1000 if first else float("nan")
    return fb, (t1 - t0) * 1000, code, rusage.ru_maxrss

def main():
    runs = int(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1:]
    for _ in range(runs):
        fb, total, code, rss = once(argv)
        print(f"{fb:.2f} {total:.2f} {code} {rss}", flush=True)

main()

"""Driver for bench/snapshot.sh: python3 snapshot.py VMM GUEST RUNS MEM...

For each memory size and run: start the guest, wait for "count 3" on its console, ask for
a save (vmm: SIGUSR2 with --save-to; QEMU: `stop`, then `migrate -d exec:cat>FILE` on its
monitor, no bandwidth cap), time it until the file is complete, then start a new process
from the file (QEMU: `-incoming`, then `cont`, as its source was stopped) and time until a
count line newer than the saved ones appears on its console."""
import os, re, signal, socket, statistics, subprocess, sys, tempfile, time

vmm, guest, runs, mems = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
tmp = tempfile.mkdtemp(prefix="snapbench-")

def wait_for(pred, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v: return v
        time.sleep(0.001)
    raise RuntimeError("timed out")

def last_count(text):
    m = re.findall(r"count (\d+)\r?\n", text)
    return int(m[-1]) if m else 0

class Reader:
    """Collects a file descriptor's output (non-blocking)."""
    def __init__(self, fd): self.fd, self.buf = fd, b""; os.set_blocking(fd, False)
    def text(self):
        try:
            while True:
                b = os.read(self.fd, 65536)
                if not b: break
                self.buf += b
        except BlockingIOError: pass
        return self.buf.decode(errors="replace")

def ours(mem):
    f = os.path.join(tmp, "vmm.state")
    p = subprocess.Popen([vmm, "-k", guest, "-m", mem, "--accel", "emulator", "--save-to", f],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = Reader(p.stdout.fileno())
    wait_for(lambda: "count 3\r\n" in out.text())
    t0 = time.monotonic(); p.send_signal(signal.SIGUSR2); p.wait()
    save = (time.monotonic() - t0) * 1000
    saved = last_count(out.text()); size = os.path.getsize(f)
    t0 = time.monotonic()
    q = subprocess.Popen([vmm, "--restore", f], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out2 = Reader(q.stdout.fileno())
    wait_for(lambda: last_count(out.text() + out2.text()) > saved)
    restore = (time.monotonic() - t0) * 1000
    q.kill(); q.wait()
    return size, save, restore

class Monitor:
    """QEMU's human monitor over its socket, one command at a time: each call sends a line
    and reads up to the next "(qemu) " prompt (so the socket never fills)."""
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        # The socket file may exist a moment before QEMU listens.
        wait_for(lambda: self.s.connect_ex(path) == 0)
        self.read()
    def read(self, timeout=120):
        buf = b""; self.s.settimeout(timeout)
        while not buf.endswith(b"(qemu) "):
            b = self.s.recv(65536)
            if not b: raise RuntimeError("qemu monitor closed")
            buf += b
        return buf.decode(errors="replace")
    def __call__(self, cmd, timeout=120):
        self.s.sendall((cmd + "\n").encode())
        return self.read(timeout)
    def close(self): self.s.close()

def qemu(mem):
    f = os.path.join(tmp, "qemu.state"); serial = os.path.join(tmp, "serial.txt"); mon = os.path.join(tmp, "mon.sock")
    for x in (f, serial, mon):
        if os.path.exists(x): os.unlink(x)
    base = ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", mem, "-kernel", guest, "-display", "none",
            "-net", "none", "-no-reboot", "-serial", "file:" + serial, "-monitor", "unix:%s,server,nowait" % mon]
    p = subprocess.Popen(base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # QEMU's serial file has the guest's bare "\n" (our console shows "\r\n").
    wait_for(lambda: os.path.exists(serial) and last_count(open(serial, errors="replace").read()) >= 3)
    wait_for(lambda: os.path.exists(mon))
    m = Monitor(mon)
    # No bandwidth cap (QEMU's default, 32 MiB/s, is for live migration over a network),
    # and `migrate -d` polled with `info migrate`: HMP's waiting migrate checks once a second.
    m("migrate_set_parameter max-bandwidth 100G")
    t0 = time.monotonic()
    m("stop"); m('migrate -d "exec:cat > %s"' % f)
    def done():
        i = m("info migrate")
        if re.search(r"Migration status: (failed|cancelled)", i): raise RuntimeError("qemu migrate failed")
        return "Migration status: completed" in i
    wait_for(done, timeout=120)
    save = (time.monotonic() - t0) * 1000
    saved = last_count(open(serial, errors="replace").read()); size = os.path.getsize(f)
    m.close(); p.kill(); p.wait(); os.unlink(serial); os.unlink(mon)
    t0 = time.monotonic()
    q = subprocess.Popen(base + ["-incoming", "exec:cat %s" % f],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The source was stopped before `migrate`, so the incoming side ends paused: `cont` it
    # once the migration is in (`info status` no longer says "inmigrate").
    wait_for(lambda: os.path.exists(mon))
    m = Monitor(mon)
    wait_for(lambda: re.search(r"VM status: (paused|running)\r?\n", m("info status")))
    m("cont")
    wait_for(lambda: os.path.exists(serial) and last_count(open(serial, errors="replace").read()) > saved)
    restore = (time.monotonic() - t0) * 1000
    m.close(); q.kill(); q.wait()
    return size, save, restore

have_qemu = subprocess.run(["which", "qemu-system-x86_64"], capture_output=True).returncode == 0
for mem in mems:
    rows = {}
    for name, fn in (("ours", ours), ("qemu", qemu)):
        if name == "qemu" and not have_qemu: continue
        try:
            r = [fn(mem) for _ in range(runs)]
        except RuntimeError as e:
            print("snapshot %s: %s failed: %s" % (mem, name, e)); continue
        rows[name] = tuple(statistics.median(x[i] for x in r) for i in range(3))
    o = rows["ours"]
    print("snapshot %s: ours %.0f KiB, save %.1f ms, restore to counting %.1f ms" % (mem, o[0] / 1024, o[1], o[2]))
    if "qemu" in rows:
        q = rows["qemu"]
        print("snapshot %s: qemu-tcg %.0f KiB, save %.1f ms, restore to counting %.1f ms" % (mem, q[0] / 1024, q[1], q[2]))
        print("snapshot %s: ratio ours/qemu size %.2f, save %.2f, restore %.2f" % (mem, o[0] / q[0], o[1] / q[1], o[2] / q[2]))

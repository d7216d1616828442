"""Driver for bench/snapshot.sh: python3 snapshot.py VMM GUEST RUNS MEM...

For each memory size and run: start the guest, wait for "count 3" on its console, ask for
a save (vmm: SIGUSR2 with --save-to; QEMU: `migrate exec:cat>FILE` on its monitor), time it
until the file is complete, then start a new process from the file and time until a count
line newer than the saved ones appears on its console."""
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

def qmp_hmp(sock, cmd):
    sock.sendall((cmd + "\n").encode())

def qemu(mem):
    f = os.path.join(tmp, "qemu.state"); serial = os.path.join(tmp, "serial.txt"); mon = os.path.join(tmp, "mon.sock")
    for x in (f, serial, mon):
        if os.path.exists(x): os.unlink(x)
    base = ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", mem, "-kernel", guest, "-display", "none",
            "-net", "none", "-no-reboot", "-serial", "file:" + serial, "-monitor", "unix:%s,server,nowait" % mon]
    p = subprocess.Popen(base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(serial) and "count 3\r\n" in open(serial, errors="replace").read())
    wait_for(lambda: os.path.exists(mon))
    s = socket.socket(socket.AF_UNIX); s.connect(mon)
    t0 = time.monotonic()
    qmp_hmp(s, "stop"); qmp_hmp(s, 'migrate "exec:cat > %s"' % f)
    # Completion: poll `info migrate` until it says completed.
    buf = b""; s.settimeout(0.01)
    end = time.monotonic() + 120
    while b"completed" not in buf:
        if time.monotonic() > end: raise RuntimeError("qemu migrate did not complete")
        qmp_hmp(s, "info migrate")
        try: buf += s.recv(65536)
        except socket.timeout: pass
    save = (time.monotonic() - t0) * 1000
    saved = last_count(open(serial, errors="replace").read()); size = os.path.getsize(f)
    s.close(); p.kill(); p.wait(); os.unlink(serial); os.unlink(mon)
    t0 = time.monotonic()
    q = subprocess.Popen([a for a in base if a] + ["-incoming", "exec:cat %s" % f],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(serial) and last_count(open(serial, errors="replace").read()) > 0)
    restore = (time.monotonic() - t0) * 1000
    q.kill(); q.wait()
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

#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<harness>/ (committed; rerun to regenerate).
qcow2 seeds come from qemu-img; everything else is built here byte by byte."""
import os, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")

def put(h, name, data):
    d = os.path.join(OUT, h)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# vm.conf: the golden inputs and the OpenBSD regress inputs.
for src in ("Tests/VMConfigTests/Golden", "Tests/VMConfigTests/OpenBSD"):
    p = os.path.join(ROOT, src)
    if os.path.isdir(p):
        for n in sorted(os.listdir(p)):
            if n.endswith(".conf"):
                put("vmconf", n, open(os.path.join(p, n), "rb").read())

# Control frames: 4-byte big-endian length + JSON, as vmctl sends and vmd answers.
def frame(j):
    b = j.encode()
    return struct.pack(">I", len(b)) + b
reqs = [
    '{"version":1,"request":{"status":{}}}',
    '{"version":1,"request":{"status":{"target":{"name":{"_0":"web"}}}}}',
    '{"version":1,"request":{"stop":{"target":{"id":{"_0":3}},"force":true,"wait":false}}}',
    '{"version":1,"request":{"start":{"_0":{"target":{"name":{"_0":"a"}},"disks":[{"path":"/d.img","format":"qcow2"}],"switches":["sw"],"memory":1048576,"localInterface":false,"attachConsole":true}}}}',
    '{"version":1,"request":{"reset":{"_0":"all"}}}',
    '{"version":1,"request":{"log":{"verbose":true}}}',
    '{"version":2,"request":{"reload":{}}}',
    '{"version":1,"reply":{"ok":{"_0":"done"}}}',
    '{"version":1,"reply":{"failure":{"_0":{"code":"notFound","message":"vm x: not found"}}}}',
]
for i, r in enumerate(reqs):
    put("control", "frame%d" % i, frame(r))
put("control", "two-frames", frame(reqs[0]) + frame(reqs[4]))

# qcow2 images from qemu-img (small clusters keep them small), + 8 bytes of offsets.
tmp = tempfile.mkdtemp()
try:
    def qimg(name, opts, size=None):
        path = os.path.join(tmp, name)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *opts, path]
                       + ([size] if size else []), check=True)
        return path
    tail = bytes([0, 1, 0, 40, 0, 2, 3, 1])
    base = qimg("base.qcow2", ["-o", "cluster_size=512"], "1M")
    subprocess.run(["qemu-io", "-c", "write -P 0x55 0 8k", base], check=True,
                   stdout=subprocess.DEVNULL)
    put("qcow2", "written-v3", open(base, "rb").read() + tail)
    v2 = qimg("v2.qcow2", ["-o", "compat=0.10,cluster_size=512"], "1M")
    put("qcow2", "empty-v2", open(v2, "rb").read() + tail)
    ov = qimg("overlay.qcow2", ["-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2"])
    put("qcow2", "overlay", open(ov, "rb").read() + tail)
    raw = os.path.join(tmp, "data.raw")
    with open(raw, "wb") as f:
        f.write(bytes(range(256)) * 64)
    comp = os.path.join(tmp, "comp.qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-O", "qcow2", "-o", "cluster_size=4096",
                    raw, comp], check=True)
    put("qcow2", "compressed", open(comp, "rb").read() + tail)
except (OSError, subprocess.CalledProcessError) as e:
    print("qcow2 seeds skipped:", e, file=sys.stderr)
finally:
    shutil.rmtree(tmp)

# Kernels: minimal ELF64/ELF32 with a PT_LOAD (and a PVH note), a multiboot header, a
# bzImage setup header.
def elf64(pvh):
    code = b"\xf4" * 16
    notes = b""
    if pvh:
        desc = struct.pack("<I", 0x100000)
        notes = struct.pack("<III", 4, len(desc), 18) + b"Xen\0" + desc
    phnum = 2 if pvh else 1
    off = 64 + 56 * phnum
    eh = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, off, 0x100000, 0x100000, len(code), len(code), 0x1000)
    if pvh:
        ph += struct.pack("<IIQQQQQQ", 4, 4, off + len(code), 0, 0, len(notes), len(notes), 4)
    return eh + ph + code + notes
def elf32():
    code = b"\xf4" * 16
    eh = b"\x7fELF\x01\x01\x01" + b"\0" * 9 + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x100000, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    ph = struct.pack("<IIIIIIII", 1, 84, 0x100000, 0x100000, 16, 16, 5, 0x1000)
    return eh + ph + code
def multiboot():
    flags = 0x10003 | 0  # page align, memory info, address fields
    hdr = struct.pack("<III", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xffffffff)
    hdr += struct.pack("<IIIII", 0x100000, 0x100000, 0x100040, 0x101000, 0x100020)
    return (hdr + b"\xf4" * 32).ljust(64, b"\0")
def bzimage():
    b = bytearray(0x4000)
    b[0x1f1] = 1                       # setup_sects
    b[0x1fe:0x200] = b"\x55\xaa"
    b[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", b, 0x206, 0x020f)   # protocol 2.15
    b[0x211] = 1                       # loadflags: LOADED_HIGH
    struct.pack_into("<I", b, 0x214, 0x100000)
    struct.pack_into("<I", b, 0x228, 0)
    struct.pack_into("<I", b, 0x230, 0x200000)  # kernel_alignment
    b[0x234] = 1                       # relocatable
    struct.pack_into("<H", b, 0x236, 3)         # xloadflags: 64-bit entry
    struct.pack_into("<I", b, 0x238, 255)       # cmdline_size
    struct.pack_into("<I", b, 0x260, 0x400000)  # init_size
    return bytes(b)
put("kernel", "elf64", elf64(False))
put("kernel", "elf64-pvh", elf64(True))
put("kernel", "elf32", elf32())
put("kernel", "multiboot", multiboot())
put("kernel", "bzimage", bzimage())

# Virtio: header (see fuzz/support/VirtioFuzz.swift) + guest RAM with a descriptor table
# at 0, the avail ring at 0x1000, the used ring at 0x2000, buffers from 0x3000.
def virtio(chains, flags=0, features=0, queue=0):
    ram = bytearray(0x4000)
    descs = []
    heads = []
    for chain in chains:
        heads.append(len(descs))
        for i, (addr, length, write) in enumerate(chain):
            nxt = len(descs) + 1 if i + 1 < len(chain) else 0
            fl = (1 if i + 1 < len(chain) else 0) | (2 if write else 0)
            descs.append((addr, length, fl, nxt))
    for i, (a, l, fl, n) in enumerate(descs):
        struct.pack_into("<QIHH", ram, 16 * i, a, l, fl, n)
    struct.pack_into("<HH", ram, 0x1000, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", ram, 0x1004 + 2 * i, h)
    hdr = bytes([queue, 4, 0, 0, 0x08, 0x00, 0x08, 0x00, 0, 0, flags]) + struct.pack("<Q", features)
    return hdr, ram
def put_virtio(h, name, chains, **kw):
    hdr, ram = virtio(chains, **kw)
    put(h, name, hdr + bytes(ram))
put_virtio("virtq", "two-chains", [[(0x3000, 64, False), (0x3100, 64, True)], [(0x3200, 32, True)]])
put_virtio("virtq", "event-idx", [[(0x3000, 16, False)]], flags=3)
# virtio-blk: header (type, reserved, sector) + data + status byte.
def blkreq(kind, sector, data_len, write):
    return [(0x3000, 16, False), (0x3100, data_len, write), (0x3f00, 1, True)]
hdr, ram = virtio([blkreq(0, 2, 512, True), blkreq(1, 4, 512, False)])
struct.pack_into("<IIQ", ram, 0x3000, 0, 0, 2)
put("virtio-blk", "read-write", hdr + bytes(ram))
hdr, ram = virtio([[(0x3000, 16, False), (0x3100, 20, True), (0x3f00, 1, True)]])
struct.pack_into("<IIQ", ram, 0x3000, 8, 0, 0)          # GET_ID
put("virtio-blk", "get-id", hdr + bytes(ram))
hdr, ram = virtio([[(0x3000, 16, False), (0x3100, 16, False), (0x3f00, 1, True)]])
struct.pack_into("<IIQ", ram, 0x3000, 13, 0, 0)         # WRITE_ZEROES
struct.pack_into("<QII", ram, 0x3100, 8, 16, 0)
put("virtio-blk", "write-zeroes", hdr + bytes(ram) + b"\x00")
# virtio-net: queue 1 transmit (12-byte header + frame), queue 0 receive.
put_virtio("virtio-net", "tx", [[(0x3000, 12, False), (0x3100, 60, False)]], queue=1)
put_virtio("virtio-net", "rx", [[(0x3000, 1526, True)], [(0x3800, 1526, True)]], queue=0,
           features=1 << 15)
put("virtio-net", "rx-frames", open(os.path.join(OUT, "virtio-net", "rx"), "rb").read() + b"\x10\x20\x03")
put_virtio("virtio-console", "rx", [[(0x3000, 64, True)]], queue=0)
put_virtio("virtio-console", "tx", [[(0x3000, 5, False)]], queue=1)
put_virtio("virtio-rng", "fill", [[(0x3000, 64, True)], [(0x3100, 4096, True)]])

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Privilege separation of file access: vmd opens each VM's kernel, initrd, cdrom and disks
/// (the whole qcow2 backing chain) and passes the descriptors to the VM process, which
/// opens no guest file by name and then gives up root.
@Suite(.serialized) struct DiskFDTests {
    /// A scratch directory readable by everyone (VM processes run as an unprivileged user).
    static func scratch(_ tag: String) throws -> String {
        var template = Array((NSTemporaryDirectory() + "vmd-fds-\(tag).XXXXXX").utf8CString)
        guard let d = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
        let dir = String(cString: d)
        chmod(dir, 0o755)
        return dir
    }

    /// `vmctl create` (our DiskImage) must succeed.
    static func create(_ args: String...) throws {
        let r = try run(Binaries.vmctl, ["create"] + args)
        #expect(r.status == 0, "vmctl create \(args): \(r.stderr)")
    }

    /// The targets of /proc/<pid>/fd/* (nil entries dropped).
    static func openFiles(_ pid: Int32) -> [String] {
        let dir = "/proc/\(pid)/fd"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0) }
    }

    /// "Uid:" of /proc/<pid>/status: real, effective, saved, fs.
    static func uids(_ pid: Int32) -> [String] {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return [] }
        for line in s.split(separator: "\n") where line.hasPrefix("Uid:") {
            return line.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }).map(String.init)
        }
        return []
    }

    @Test func aMissingDiskKernelOrInitrdFailsTheStartWithOneLineAndVmdLosesNothing() throws {
        try #require(Binaries.available)
        let dir = try Self.scratch("missing")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/kernel"
        try Data("not really a kernel".utf8).write(to: URL(fileURLWithPath: kernel))
        try Self.create("-s", "1M", dir + "/good.raw")
        try Self.create("-s", "1M", dir + "/base.raw")
        try Self.create("-b", dir + "/base.raw", dir + "/orphan.qcow2")
        unlink(dir + "/base.raw")
        let conf = """
            vm "ok" {
              boot "\(kernel)"
              disk "\(dir)/good.raw"
            }
            vm "enabled-but-broken" {
              boot "\(kernel)"
              disk "\(dir)/gone-at-boot.raw"
            }
            vm "nodisk" {
              disable
              boot "\(kernel)"
              disk "\(dir)/missing.raw"
            }
            vm "nokernel" {
              disable
              boot "\(dir)/missing-kernel"
            }
            vm "noinitrd" {
              disable
              boot "\(kernel)"
              initrd "\(dir)/missing-initrd"
            }
            vm "nobase" {
              disable
              boot "\(kernel)"
              disk "\(dir)/orphan.qcow2"
            }
            vm "dirdisk" {
              disable
              boot "\(kernel)"
              disk "\(dir)"
            }

            """
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        let before = try d.waitForStatus { row($0, "ok")?[1] != "-" && row($0, "ok") != nil }
        let okPID = try #require(row(before, "ok")?[1])
        #expect(okPID != "-", "\(before)")

        let expected: [(String, String)] = [
            ("nodisk", "vmctl: vm nodisk: disk \(dir)/missing.raw: No such file or directory"),
            ("nokernel", "vmctl: vm nokernel: kernel \(dir)/missing-kernel: No such file or directory"),
            ("noinitrd", "vmctl: vm noinitrd: initrd \(dir)/missing-initrd: No such file or directory"),
            ("nobase", "vmctl: vm nobase: disk \(dir)/orphan.qcow2: its backing file \(dir)/base.raw cannot be found"),
            ("dirdisk", "vmctl: vm dirdisk: disk \(dir): Is a directory"),
        ]
        for (name, line) in expected {
            let r = try d.vmctl("start", name)
            #expect(r.status != 0, "\(name): \(r.stdout)")
            #expect(r.stderr == line + "\n", "\(name): \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        // The enabled VM with a missing disk failed at vmd's start, in one log line.
        #expect(d.log.snapshot().contains("vm enabled-but-broken: disk \(dir)/gone-at-boot.raw: No such file or directory"),
                "\(d.log.snapshot())")

        // vmd is still serving, the running VM is untouched, the failed ones are stopped
        // and startable once their file is there.
        #expect(d.process.isRunning)
        let after = try d.vmctl("status").stdout
        #expect(row(after, "ok")?[1] == okPID, "\(after)")
        for name in expected.map(\.0) + ["enabled-but-broken"] { #expect(row(after, name)?[1] == "-", "\(after)") }
        try Self.create("-s", "1M", dir + "/missing.raw")
        let retry = try d.vmctl("start", "nodisk")
        #expect(retry.status == 0, "\(retry.stderr)")
    }

    /// The fake guest builds its disks from the passed descriptors as a machine does: its
    /// open files are those (the whole qcow2 chain, the cdrom), none other of the VM's.
    @Test func theVMProcessHoldsExactlyThePassedFilesAndNoLongerRunsAsRoot() throws {
        try #require(Binaries.available)
        let dir = try Self.scratch("held")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/kernel", initrd = dir + "/initrd", cdrom = dir + "/cd.iso"
        for f in [kernel, initrd, cdrom] { try Data(count: 4096).write(to: URL(fileURLWithPath: f)) }
        try Self.create("-s", "1M", dir + "/base.raw")
        try Self.create("-b", dir + "/base.raw", dir + "/mid.qcow2")
        try Self.create("-b", dir + "/mid.qcow2", dir + "/top.qcow2")
        try Self.create("-s", "1M", dir + "/second.raw")
        let conf = """
            vm "held" {
              boot "\(kernel)"
              initrd "\(initrd)"
              cdrom "\(cdrom)"
              disk "\(dir)/top.qcow2"
              disk "\(dir)/second.raw" format raw
            }

            """
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        let status = try d.waitForStatus { (row($0, "held")?[1] ?? "-") != "-" }
        let pid = try #require(Int32(row(status, "held")?[1] ?? ""), "\(status)")
        // The PID shows as soon as the VM process exists; it closes the kernel and initrd
        // once loaded, and vmd closes its copies once sent: wait (bounded) for both.
        let expected = [dir + "/base.raw", cdrom, dir + "/mid.qcow2", dir + "/second.raw", dir + "/top.qcow2"]
        var mine: [String] = []
        var vmdHolds: [String] = []
        for _ in 0..<100 {
            mine = Self.openFiles(pid).filter { $0.hasPrefix(dir + "/") }.sorted()
            vmdHolds = Self.openFiles(d.process.processIdentifier).filter { $0.hasPrefix(dir + "/") }
            if mine == expected && vmdHolds.isEmpty { break }
            usleep(50_000)
        }
        #expect(mine == expected, "\(Self.openFiles(pid))")
        // Descriptors vmd passed are not left open in vmd.
        #expect(vmdHolds.isEmpty, "\(vmdHolds)")
        // Run as root, vmd has the VM process give up root once it holds its files.
        if geteuid() == 0 {
            // Each VM process its own uid: 2^30 + the VM's id.
            let expectUID = (1 << 30) + (Int(row(try d.vmctl("status").stdout, "held")?[0] ?? "") ?? -1)
            #expect(Self.uids(pid) == Array(repeating: String(expectUID), count: 4), "\(Self.uids(pid))")
            // Its console still works, and vmd still controls it.
            #expect(try d.vmctl("pause", "held").status == 0)
            #expect(try d.vmctl("unpause", "held").status == 0)
            let console = try d.vmctl("console", "held", stdin: "hello\rpoweroff\r")
            #expect(console.stdout.contains("echo: hello"), "\(console.stdout)")
            #expect(console.stdout.contains("held: powering off"), "\(console.stdout)")
            let waited = try d.vmctl("wait", "held")
            #expect(waited.stdout == "vmctl: vm held stopped: exited normally\n", "\(waited.stdout)")
        }
    }

    /// A real guest (guests/virtio-test.c) started by vmd reads sector 0 of a qcow2 overlay
    /// (from its raw base) and writes sectors 1-2, all through the descriptors vmd passed.
    @Test(.enabled(if: RealGuestTests.kvm, "/dev/kvm is not usable here"))
    func aRealGuestReadsAndWritesItsDiskThroughThePassedDescriptors() throws {
        try #require(Binaries.available)
        let dir = try Self.scratch("guest")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/virtio-test.elf"
        let build = try run("/bin/sh", [RealGuestTests.repoRoot + "/guests/build-virtio-test.sh", kernel], timeout: 60)
        try #require(build.status == 0, "cannot build the test guest: \(build.stderr.prefix(200))")
        var base = [UInt8](repeating: 0, count: 1 << 20)
        let marker = Array("HOST-MARKER-SECTOR-ZERO".utf8)
        base.replaceSubrange(0..<marker.count, with: marker)
        try Data(base).write(to: URL(fileURLWithPath: dir + "/base.raw"))
        try Self.create("-b", dir + "/base.raw", dir + "/top.qcow2")
        let d = try TestDaemon(config: "vm \"guest\" {\n disable\n boot \"\(kernel)\"\n memory 64M\n disk \"\(dir)/top.qcow2\"\n}\n", fake: false)
        defer { d.stop() }
        let start = try d.vmctl("start", "guest")
        #expect(start.status == 0, "\(start.stderr)")
        let waited = try d.vmctl("wait", "guest")
        // virtio-test ends through the debug-exit port: status 1 is its PASS (3 a failure).
        #expect(waited.stdout == "vmctl: vm guest stopped: exited with status 1\n", "\(waited.stdout)\(d.log.snapshot())")
        // The guest's writes went to the overlay, the base is untouched.
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/base.raw")) == Data(base))
        let check = try run(Binaries.vmctl, ["create", "-i", dir + "/top.qcow2", dir + "/flat.raw"])
        #expect(check.status == 0, "\(check.stderr)")
        let flat = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/flat.raw")))
        #expect(flat.count == 1 << 20)
        if flat.count == 1 << 20 {
            #expect(Array(flat[0..<marker.count]) == marker)
            #expect(Array(flat[512..<528]) == Array("GUEST-WROTE-THIS".utf8))
            #expect((16..<1024).allSatisfy { flat[512 + $0] == UInt8(truncatingIfNeeded: $0 * 13 + 7) })
        }
    }

    /// vmd opens files as root, so a file a user names in a start request (an instance's
    /// `-d`, `-b`, `-r`) must be one that user could open: read and write for a disk, read
    /// for its backing files, the kernel, the cdrom (as OpenBSD's vmd checks).
    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func aUserCannotHaveVmdOpenFilesTheyCouldNotOpen() throws {
        try #require(Binaries.available)
        try PermissionTests.ensureUsers()
        let dir = try Self.scratch("perm")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/kernel"
        try Data(count: 4096).write(to: URL(fileURLWithPath: kernel))
        try Self.create("-s", "1M", dir + "/secret.raw")
        chmod(dir + "/secret.raw", 0o600)
        try Self.create("-s", "1M", dir + "/readonly.raw")
        chmod(dir + "/readonly.raw", 0o644)
        try Self.create("-s", "1M", dir + "/shared.raw")
        chmod(dir + "/shared.raw", 0o666)
        try Self.create("-b", dir + "/secret.raw", dir + "/peek.qcow2")
        chmod(dir + "/peek.qcow2", 0o666)
        let conf = """
            socket owner root:vmdtestctl
            vm "tmpl" {
                disable
                boot "\(kernel)"
                allow instance { boot, cdrom, disk, owner vmdtest2 }
            }

            """
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        let cases: [([String], String)] = [
            (["-d", dir + "/secret.raw"], "disk \(dir)/secret.raw: Permission denied"),
            (["-d", dir + "/readonly.raw"], "disk \(dir)/readonly.raw: Permission denied"),
            (["-d", dir + "/peek.qcow2"], "backing file \(dir)/secret.raw: Permission denied"),
            (["-r", dir + "/secret.raw"], "cdrom \(dir)/secret.raw: Permission denied"),
            (["-b", dir + "/secret.raw"], "kernel \(dir)/secret.raw: Permission denied"),
        ]
        for (i, (args, message)) in cases.enumerated() {
            let r = try run(Binaries.vmctl, ["--socket", d.socket, "start", "-t", "tmpl"] + args + ["inst\(i)"],
                            prefix: ["/usr/bin/setpriv", "--reuid=vmdtest2", "--regid=vmdtest2", "--init-groups", "--"])
            #expect(r.status == 1)
            #expect(r.stderr == "vmctl: vm inst\(i): \(message)\n", "\(args): \(r.stderr)")
        }
        // Files the user may use are fine; root may use any.
        let ok = try d.vmctl("start", "-t", "tmpl", "-d", dir + "/shared.raw", "-r", dir + "/readonly.raw", "good", as: "vmdtest2")
        #expect(ok.status == 0, "\(ok.stderr)")
        let root = try d.vmctl("start", "-t", "tmpl", "-d", dir + "/secret.raw", "rootinst")
        #expect(root.status == 0, "\(root.stderr)")
    }

    /// A multiboot image (a.out-kludge addresses, loaded at 1 MiB) whose code idles for
    /// ever: `sti; hlt; jmp back`.
    static func idleKernel() -> [UInt8] {
        var bytes = [UInt8](repeating: 0x90, count: 4096)
        let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 0x0001_0000
        let words: [UInt32] = [magic, flags, 0 &- (magic &+ flags), 0x10_0000, 0x10_0000, 0, 0, 0x10_0040]
        for (i, w) in words.enumerated() { for b in 0..<4 { bytes[i * 4 + b] = UInt8(truncatingIfNeeded: w >> (8 * b)) } }
        // mov dx, 0x3f8; (mov al, c; out dx, al) per character; sti; hlt; jmp back to sti.
        var code: [UInt8] = [0x66, 0xba, 0xf8, 0x03]
        for c in "IDLE-GUEST-UP\r\n".utf8 { code += [0xb0, c, 0xee] }
        code += [0xfb, 0xf4, 0xeb, 0xfc]
        bytes.replaceSubrange(0x40..<(0x40 + code.count), with: code)
        return bytes
    }

    /// A real machine in a VM process: it holds its disks' descriptors (the qcow2 chain),
    /// has closed the kernel's and initrd's after reading them, and runs as the
    /// unprivileged user while the guest runs.
    @Test(.enabled(if: RealGuestTests.kvm, "/dev/kvm is not usable here"))
    func aRealMachineHoldsOnlyThePassedDisksAndRunsUnprivileged() throws {
        try #require(Binaries.available)
        let dir = try Self.scratch("machine")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/idle.elf", initrd = dir + "/initrd"
        try Data(Self.idleKernel()).write(to: URL(fileURLWithPath: kernel))
        try Data(count: 8192).write(to: URL(fileURLWithPath: initrd))
        try Self.create("-s", "1M", dir + "/base.raw")
        try Self.create("-b", dir + "/base.raw", dir + "/top.qcow2")
        let conf = "vm \"idle\" {\n disable\n boot \"\(kernel)\"\n initrd \"\(initrd)\"\n memory 32M\n disk \"\(dir)/top.qcow2\"\n}\n"
        let d = try TestDaemon(config: conf, fake: false)
        defer { d.stop() }
        let start = try d.vmctl("start", "idle")
        #expect(start.status == 0, "\(start.stderr)")
        let status = try d.vmctl("status").stdout
        let pid = try #require(Int32(row(status, "idle")?[1] ?? ""), "\(status)")
        let mine = Self.openFiles(pid).filter { $0.hasPrefix(dir + "/") }.sorted()
        #expect(mine == [dir + "/base.raw", dir + "/top.qcow2"], "\(Self.openFiles(pid))")
        #expect(Self.openFiles(pid).contains("/dev/kvm") || Self.openFiles(pid).contains { $0.hasPrefix("anon_inode:kvm") })
        if geteuid() == 0 {
            // Each VM process its own uid: 2^30 + the VM's id.
            let expectUID = (1 << 30) + (Int(row(try d.vmctl("status").stdout, "idle")?[0] ?? "") ?? -1)
            #expect(Self.uids(pid) == Array(repeating: String(expectUID), count: 4), "\(Self.uids(pid))")
        }
        // Its console still works (vmctl stays attached: stopped by the timeout).
        let console = try run(Binaries.vmctl, ["--socket", d.socket, "console", "idle"], timeout: 2)
        #expect(console.stdout.contains("IDLE-GUEST-UP"), "\(console.stdout)")
        // vmd still controls it.
        #expect(try d.vmctl("pause", "idle").status == 0)
        #expect(try d.vmctl("unpause", "idle").status == 0)
        let stop = try d.vmctl("stop", "-f", "idle")
        #expect(stop.status == 0, "\(stop.stderr)")
        _ = try d.vmctl("wait", "idle")
        #expect(row(try d.vmctl("status").stdout, "idle")?[1] == "-")
    }
}

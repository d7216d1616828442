import Foundation
import Testing

/// Bad input to the `vmm` command: one clear line on stderr, exit status 2, no crash.
@Suite struct VMMCommandErrorTests {
    func expectOneLineError(_ args: [String], mentions: [String]) throws {
        let r = try Harness.vmm(args)
        #expect(r.status == 2, "vmm \(args) exited with \(r.status): \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(r.stderr)")
        for m in mentions { #expect(r.stderr.contains(m), "'\(r.stderr)' does not mention \(m)") }
        #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("Backtrace"))
        #expect(r.stdout.isEmpty)
    }

    @Test func missingKernel() throws {
        try expectOneLineError(["-k", "/no/such/vmlinuz"], mentions: ["/no/such/vmlinuz", "No such file"])
    }

    @Test func aFileThatIsNotAKernel() throws {
        try expectOneLineError(["-k", "/etc/passwd"], mentions: ["/etc/passwd", "not a kernel"])
    }

    @Test func aDirectoryAsKernel() throws {
        try expectOneLineError(["-k", "/tmp"], mentions: ["/tmp"])
    }

    @Test func tooLittleAndTooMuchMemory() throws {
        try expectOneLineError(["-k", "/etc/passwd", "-m", "1M"], mentions: ["memory size 1M is too small"])
        try expectOneLineError(["-k", "/etc/passwd", "-m", "100T"], mentions: ["memory size 100T is too large"])
        try expectOneLineError(["-k", "/etc/passwd", "-m", "lots"], mentions: ["'lots'"])
    }

    @Test func badCPUCount() throws {
        try expectOneLineError(["-k", "/etc/passwd", "-c", "0"], mentions: ["0 vCPUs"])
    }

    @Test func badVsock() throws {
        try expectOneLineError(["-k", "/etc/passwd", "--vsock", "2,/tmp/v.sock"], mentions: ["vsock '2,/tmp/v.sock'", "CID '2'"])
        try expectOneLineError(["-k", "/etc/passwd", "--vsock", "/tmp/v.sock"], mentions: ["expected CID,PATH"])
        try expectOneLineError(["-k", "/etc/passwd", "--vsock", "3,"], mentions: ["path is empty"])
        let kernel = try Harness.testGuest("longmode")
        try expectOneLineError(["-k", kernel, "--accel", "emulator", "--vsock", "3,/etc/passwd"],
                               mentions: ["/etc/passwd", "not a socket"])
        try expectOneLineError(["-k", kernel, "--accel", "emulator", "--vsock", "3,/no/such/dir/v.sock"],
                               mentions: ["/no/such/dir/v.sock", "directory /no/such/dir does not exist"])
    }

    @Test func missingInitrd() throws {
        let kernel = try Harness.testGuest("longmode")
        try expectOneLineError(["-k", kernel, "-i", "/no/initrd.img"], mentions: ["/no/initrd.img"])
    }

    /// A scratch directory with a FIFO in it, and a qcow2 image whose backing file is
    /// that FIFO (made while it was still a file).
    func fifoFiles() throws -> (dir: String, fifo: String, overlay: String) {
        let dir = NSTemporaryDirectory() + "vmm-fifo-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let fifo = dir + "/fifo", overlay = dir + "/over.qcow2"
        FileManager.default.createFile(atPath: fifo, contents: Data(count: 1 << 20))
        let r = try Harness.run([Harness.vmmBinary.replacingOccurrences(of: "/vmm", with: "/vmctl"), "create", "-b", fifo, overlay])
        #expect(r.status == 0, "\(r.stderr)")
        unlink(fifo)
        #expect(mkfifo(fifo, 0o644) == 0)
        return (dir, fifo, overlay)
    }

    /// A FIFO never hangs vmm (nobody writes to it): one line, at once (issue 11, hole 4).
    @Test func aFIFOAsKernelInitrdDiskOrBackingFileIsRefusedAtOnce() throws {
        let (dir, fifo, overlay) = try fifoFiles()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = try Harness.testGuest("longmode")
        for args in [["-k", fifo], ["-k", kernel, "-i", fifo], ["-k", kernel, "-d", fifo], ["-k", kernel, "-d", overlay]] {
            let r = try Harness.vmm(args, timeout: 15)
            #expect(r.status == 2, "vmm \(args) exited with \(r.status): \(r.stderr)")
            let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("vmm: error") }
            #expect(errors.count == 1, "\(args): \(r.stderr)")
            #expect(r.stderr.contains(fifo) && r.stderr.contains("not a regular file"), "\(args): \(r.stderr)")
        }
    }

    /// One writable image twice in a machine: two allocators on one file would lose writes.
    @Test func theSameWritableImageTwiceIsRefused() throws {
        let dir = NSTemporaryDirectory() + "vmm-twice-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/x.qcow2"
        let made = try Harness.run([Harness.vmmBinary.replacingOccurrences(of: "/vmm", with: "/vmctl"), "create", "-s", "1M", image])
        #expect(made.status == 0, "\(made.stderr)")
        let kernel = try Harness.testGuest("longmode")
        let r = try Harness.vmm(["-k", kernel, "--accel", "emulator", "-d", image, "-d", dir + "/./x.qcow2"], timeout: 15)
        #expect(r.status == 2, "\(r.stderr)")
        let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("vmm: error") }
        #expect(errors.count == 1 && errors[0].contains(dir + "/./x.qcow2") && errors[0].contains("in use"), "\(r.stderr)")
    }
}

/// A large file that is no kernel is refused from its head, never read whole (issue 11).
@Suite struct LargeNonKernelTests {
    /// Under a 200 MB data limit (prlimit), reading the 300 MB file whole would abort vmm;
    /// refusing it from its first 64 KiB is the one clear line.
    @Test(.enabled(if: access("/usr/bin/prlimit", X_OK) == 0, "needs prlimit (util-linux)"))
    func a300MBFileThatIsNoKernelIsRefusedWithoutBeingRead() throws {
        let path = NSTemporaryDirectory() + "vmm-big-" + UUID().uuidString
        let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        #expect(fd >= 0)
        #expect(ftruncate(fd, 300 << 20) == 0)
        close(fd)
        defer { unlink(path) }
        let r = try Harness.run(["/usr/bin/prlimit", "--data=\(200 << 20)", Harness.vmmBinary, "-k", path])
        #expect(r.status == 2, "exit status \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("\(path) is not a kernel"), "\(r.stderr)")
    }
}

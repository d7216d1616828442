#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Files that are not what they seem, handed to vmd (issue 11, holes 2 and 4): FIFOs that
/// nobody writes, one writable image named twice or by two VMs.
@Suite(.serialized) struct HostileFileTests {
    /// A FIFO in place of each kind of file fails that VM's start at once with one line; the
    /// enabled VM after a FIFO-kernel VM still starts when vmd does.
    @Test func aFIFOInPlaceOfAFileNeverBlocksVmd() throws {
        try #require(Binaries.available)
        let dir = try DiskFDTests.scratch("fifo")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/kernel", fifo = dir + "/fifo"
        try Data(count: 4096).write(to: URL(fileURLWithPath: kernel))
        try DiskFDTests.create("-s", "1M", fifo)
        try DiskFDTests.create("-b", fifo, dir + "/over.qcow2")
        unlink(fifo)
        #expect(mkfifo(fifo, 0o644) == 0)
        try DiskFDTests.create("-s", "1M", dir + "/good.raw")
        let conf = """
            vm "first" {
              boot "\(fifo)"
            }
            vm "after" {
              boot "\(kernel)"
              disk "\(dir)/good.raw"
            }
            vm "fifo-initrd" {
              disable
              boot "\(kernel)"
              initrd "\(fifo)"
            }
            vm "fifo-cdrom" {
              disable
              boot "\(kernel)"
              cdrom "\(fifo)"
            }
            vm "fifo-disk" {
              disable
              boot "\(kernel)"
              disk "\(fifo)"
            }
            vm "fifo-backing" {
              disable
              boot "\(kernel)"
              disk "\(dir)/over.qcow2"
            }

            """
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        let status = try d.waitForStatus { row($0, "after")?[7] == "running" }
        #expect(row(status, "after")?[7] == "running", "\(status)\(d.log.snapshot())")
        #expect(d.log.snapshot().contains("vm first: kernel \(fifo): not a regular file"), "\(d.log.snapshot())")
        let expected: [(String, String)] = [
            ("fifo-initrd", "vm fifo-initrd: initrd \(fifo): not a regular file"),
            ("fifo-cdrom", "vm fifo-cdrom: cdrom \(fifo): not a regular file or block device"),
            ("fifo-disk", "vm fifo-disk: disk \(fifo): not a regular file or block device"),
            ("fifo-backing", "vm fifo-backing: backing file \(fifo): not a regular file or block device"),
        ]
        for (name, line) in expected {
            let r = try d.vmctl("start", name)
            #expect(r.status == 1, "\(name): \(r.stdout)")
            #expect(r.stderr == "vmctl: " + line + "\n", "\(name): \(r.stderr)")
        }
        #expect(d.process.isRunning)
    }

    /// A writable image has one user: a second VM, the same VM naming it twice, and vmm
    /// while vmd runs it are refused; a shared backing file is fine.
    @Test func aWritableImageIsUsedByOneVMAtATime() throws {
        try #require(Binaries.available)
        let dir = try DiskFDTests.scratch("lock")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/kernel"
        try Data(DiskFDTests.idleKernel()).write(to: URL(fileURLWithPath: kernel))
        try DiskFDTests.create("-s", "1M", dir + "/base.raw")
        try DiskFDTests.create("-b", dir + "/base.raw", dir + "/x.qcow2")
        try DiskFDTests.create("-b", dir + "/base.raw", dir + "/y.qcow2")
        func vm(_ name: String, _ disks: [String]) -> String {
            "vm \"\(name)\" {\n disable\n boot \"\(kernel)\"\n" + disks.map { " disk \"\($0)\"\n" }.joined() + "}\n"
        }
        let conf = vm("one", [dir + "/x.qcow2"]) + vm("two", [dir + "/x.qcow2"]) + vm("twice", [dir + "/y.qcow2", dir + "/./y.qcow2"])
            + vm("other", [dir + "/y.qcow2"])
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        #expect(try d.vmctl("start", "one").status == 0)
        let two = try d.vmctl("start", "two")
        #expect(two.status == 1)
        #expect(two.stderr.hasPrefix("vmctl: vm two: disk \(dir)/x.qcow2: the image is in use"), "\(two.stderr)")
        let twice = try d.vmctl("start", "twice")
        #expect(twice.stderr.hasPrefix("vmctl: vm twice: disk \(dir)/./y.qcow2: the image is in use"), "\(twice.stderr)")
        // y.qcow2 shares base.raw with the running x.qcow2: fine.
        let other = try d.vmctl("start", "other")
        #expect(other.status == 0, "\(other.stderr)")
        // vmm on the running VM's disk is refused too.
        let vmm = try run(Binaries.directory + "/vmm", ["-k", kernel, "--accel", "emulator", "-d", dir + "/x.qcow2"], timeout: 10)
        #expect(vmm.status != 0)
        #expect(vmm.stderr.contains("in use"), "\(vmm.stderr)")
        // Once the VM is gone, the image is free again.
        #expect(try d.vmctl("stop", "-f", "-w", "one").status == 0)
        let again = try d.vmctl("start", "two")
        #expect(again.status == 0, "\(again.stderr)")
    }
}

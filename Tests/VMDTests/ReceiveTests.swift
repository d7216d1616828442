#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `vmctl receive` (docs/snapshot.md): a stream from `vmctl send` started by vmd as another
/// VM goes on from where the sent one stopped; bad streams are one line and start nothing;
/// start's permissions apply.
@Suite(.serialized) struct ReceiveTests {
    /// On the software CPU, and on KVM when /dev/kvm is usable (the VM process's sandbox
    /// must allow every KVM call the state needs).
    @Test(.enabled(if: SendTests.counterKernel != nil, "the counter guest cannot be built"),
          arguments: RealGuestTests.accelerators)
    func sendPipedIntoReceiveCountsOnAsAnotherVM(accel: String) throws {
        try #require(Binaries.available)
        let kernel = try #require(SendTests.counterKernel)
        // Templates for `receive -t`: one a received machine fits, one with an interface.
        let templates = "vm \"tmpl\" {\n disable\n}\nvm \"nettmpl\" {\n disable\n interfaces 1\n}\n"
        let d = try TestDaemon(config: RealGuestTests.vmBlock("cnt", kernel: kernel, accel: accel) + templates, fake: false)
        defer { d.stop() }
        #expect(try d.vmctl("start", "cnt").status == 0, "\(d.log.snapshot())")
        let c = try ConsoleClient(socket: d.socket, name: "cnt")
        // Long enough that a guest started over could not reach the same count while the
        // receiving console attaches (KVM's port exits are slow on this nested host).
        #expect(c.waitFor("count \(accel == "kvm" ? 5 : 40)\r\n", timeout: 60), "\(c.output.snapshot())")
        let vmctl = "'\(Binaries.vmctl)' --socket '\(d.socket)'"
        let file = d.dir + "/cnt.state"
        // The pipe, with a copy of the stream kept for the truncation case below.
        let moved = try run("/bin/sh", ["-c", "\(vmctl) send cnt | tee '\(file)' | \(vmctl) receive cnt2"], timeout: 60)
        #expect(moved.status == 0, "\(moved.stdout) \(moved.stderr) / \(d.log.snapshot())")
        // A disabled VM that is not running shows as "disabled".
        #expect(try RealGuestTests.waitState(d, "cnt", ["stopped", "disabled"], timeout: 20)?[7] == "disabled", "the sent VM stops")
        let last = try #require(SendTests.counts(c.output.snapshot()).last)
        let status = try d.vmctl("status", "cnt2").stdout
        #expect(row(status, "cnt2")?[7] == "running", "\(status)")
        #expect(row(status, "cnt2")?[3] == "32M", "the stream's memory: \(status)")
        #expect(moved.stdout.contains("started vm \(row(status, "cnt2")?[0] ?? "?") successfully"), "\(moved.stdout)")

        let c2 = try ConsoleClient(socket: d.socket, name: "cnt2")
        #expect(c2.waitFor("\r\n", count: 3, timeout: 30), "\(c2.output.snapshot())")
        #expect(c2.waitFor("count ", count: 2, timeout: 30), "\(c2.output.snapshot())")
        let after = SendTests.counts(c2.output.snapshot())
        #expect(!c2.output.snapshot().contains("counter: page at"), "the guest started over")
        #expect(after.count >= 2 && after[0] > last && after[1] == after[0] + 1,
                "counted on from \(last): \(after.prefix(5))")

        // The same stream cut short: one line, and no VM left behind.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: file + ".cut"))
        let cut = try run("/bin/sh", ["-c", "\(vmctl) receive cnt3 < '\(file).cut'"], timeout: 60)
        #expect(cut.status == 1 && cut.stderr.hasPrefix("vmctl: vm cnt3: ") && cut.stderr.contains("truncated"),
                "\(cut.stderr)")
        #expect(cut.stderr.split(separator: "\n").count == 1, "\(cut.stderr)")
        #expect(row(try d.vmctl("status").stdout, "cnt3") == nil, "a failed receive leaves no VM")
        // A running VM's name is taken.
        let taken = try run("/bin/sh", ["-c", "\(vmctl) receive cnt2 < '\(file)'"], timeout: 60)
        #expect(taken.status == 1 && taken.stderr.contains("already running"), "\(taken.stderr)")

        // As an instance of a template (-t): a new VM with the stream's memory, counting on.
        let inst = try run("/bin/sh", ["-c", "\(vmctl) receive -t tmpl cnt4 < '\(file)'"], timeout: 60)
        #expect(inst.status == 0 && inst.stdout.contains("started vm"), "\(inst.stderr) / \(d.log.snapshot())")
        let instRow = row(try d.vmctl("status", "cnt4").stdout, "cnt4")
        #expect(instRow?[7] == "running" && instRow?[3] == "32M", "\(String(describing: instRow))")
        let c4 = try ConsoleClient(socket: d.socket, name: "cnt4")
        #expect(c4.waitFor("count ", count: 2, timeout: 30), "\(c4.output.snapshot())")
        let fromInstance = SendTests.counts(c4.output.snapshot())
        #expect(!c4.output.snapshot().contains("counter: page at"), "the instance started over")
        #expect(fromInstance.first.map { $0 > last } ?? false, "counted on from \(last): \(fromInstance.prefix(5))")
        // A template a received machine cannot be (an interface): one line, no instance kept.
        let net = try run("/bin/sh", ["-c", "\(vmctl) receive -t nettmpl cnt5 < '\(file)'"], timeout: 60)
        #expect(net.status == 1 && net.stderr.hasPrefix("vmctl: vm cnt5: its configuration has network interfaces"),
                "\(net.stderr)")
        #expect(net.stderr.split(separator: "\n").count == 1, "\(net.stderr)")
        #expect(row(try d.vmctl("status").stdout, "cnt5") == nil, "a refused instance is not kept")
    }

    @Test func garbageIsOneLineAndStartsNothing() throws {
        try #require(Binaries.available)
        let d = try TestDaemon(config: "vm \"idle\" {\n disable\n}\n")
        defer { d.stop() }
        let bad = try d.vmctl("receive", "newvm", stdin: "this is not a state stream at all")
        #expect(bad.status == 1 && bad.stderr == "vmctl: vm newvm: not a swiftvmm state stream (bad magic)\n", "\(bad.stderr)")
        let empty = try d.vmctl("receive", "newvm", stdin: "")
        #expect(empty.status == 1 && empty.stderr.contains("truncated"), "\(empty.stderr)")
        let name = try d.vmctl("receive", "9bad", stdin: "x")
        #expect(name.status == 1 && name.stderr.contains("invalid name"), "\(name.stderr)")
        // -t: start -t's checks, each one line; a bad stream keeps no instance.
        let noTemplate = try d.vmctl("receive", "-t", "nosuch", "inst", stdin: "x")
        #expect(noTemplate.status == 1 && noTemplate.stderr == "vmctl: vm nosuch: no such vm\n", "\(noTemplate.stderr)")
        let exists = try d.vmctl("receive", "-t", "idle", "idle", stdin: "x")
        #expect(exists.status == 1 && exists.stderr == "vmctl: vm idle: already exists\n", "\(exists.stderr)")
        let badInstance = try d.vmctl("receive", "-t", "idle", "inst", stdin: "this is not a state stream at all")
        #expect(badInstance.status == 1 && badInstance.stderr == "vmctl: vm inst: not a swiftvmm state stream (bad magic)\n",
                "\(badInstance.stderr)")
        let status = try d.vmctl("status").stdout
        #expect(row(status, "newvm") == nil && row(status, "inst") == nil && row(status, "idle") != nil, "\(status)")
        #expect(try d.vmctl("status").status == 0, "vmd carries on")
    }

    /// The head of a state stream (docs/snapshot.md): header and CONF section, all vmd reads
    /// before it decides; the rest is the VM process's to read.
    static func streamHead(memory: UInt64, vcpus: Int) throws -> Data {
        let conf: [String: Any] = ["kernelPath": "/elsewhere/kernel", "cmdline": "", "memorySize": memory, "vcpus": vcpus,
                                   "diskPaths": [String](), "backend": "emulator", "ram": [[0, memory]]]
        let json = [UInt8](try JSONSerialization.data(withJSONObject: conf))
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        var crc: UInt32 = 0xFFFF_FFFF
        for b in json {
            crc ^= UInt32(b)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return Data(Array("SVMSTATE".utf8) + le(UInt32(1)) + le(UInt32(0)) + Array("CONF".utf8) + le(UInt64(json.count))
                    + json + le(~crc))
    }

    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func receiveHasStartsPermissions() throws {
        try #require(Binaries.available)
        try PermissionTests.ensureUsers()
        let d = try TestDaemon(config: PermissionTests.config)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "alice-vm")?[7] == "running" }
        // A new VM is root's to create; somebody else's VM is refused before the stream is read.
        let create = try d.vmctl("receive", "mine", stdin: "x", as: "vmdtest1")
        #expect(create.stderr == "vmctl: vm mine: permission denied (only root may create vms)\n", "\(create.stderr)")
        let other = try d.vmctl("receive", "root-vm", stdin: "x", as: "vmdtest1")
        #expect(other.stderr == "vmctl: vm root-vm: permission denied\n", "\(other.stderr)")
        let disks = try d.vmctl("receive", "-d", "/tmp/x.img", "ops-vm", stdin: "x", as: "vmdtest2")
        #expect(disks.stderr.contains("only root may change its settings"), "\(disks.stderr)")
        // -t: the template's allow instance rules (tmpl: memory, owner vmdtest2).
        let notAllowed = try d.vmctl("receive", "-t", "tmpl", "inst1", stdin: "x", as: "vmdtest1")
        #expect(notAllowed.stderr == "vmctl: vm tmpl: permission denied to create instances\n", "\(notAllowed.stderr)")
        let instDisk = try d.vmctl("receive", "-t", "tmpl", "-d", "/tmp/x.img", "inst2", stdin: "x", as: "vmdtest2")
        #expect(instDisk.stderr == "vmctl: vm tmpl: instances may not change that setting\n", "\(instDisk.stderr)")
        let allowed = try d.vmctl("receive", "-t", "tmpl", "inst2", stdin: "not a state stream, but long enough", as: "vmdtest2")
        #expect(allowed.stderr == "vmctl: vm inst2: not a swiftvmm state stream (bad magic)\n", "\(allowed.stderr)")
        #expect(row(try d.vmctl("status").stdout, "inst2") == nil, "a failed receive keeps no instance")
        // A stream's head (what vmd decides on) with the template's allowed memory change
        // passes; a vCPU count the template does not have is root's. The stand-in guest
        // then refuses the restore, so nothing runs either way.
        let head = d.dir + "/head.state"
        let vmctl = "/usr/bin/setpriv --reuid=vmdtest2 --regid=vmdtest2 --init-groups -- '\(Binaries.vmctl)' --socket '\(d.socket)'"
        try Self.streamHead(memory: 64 << 20, vcpus: 1).write(to: URL(fileURLWithPath: head))
        let bigger = try run("/bin/sh", ["-c", "\(vmctl) receive -t tmpl inst3 < '\(head)'"], timeout: 30)
        #expect(bigger.status == 1 && bigger.stderr == "vmctl: vm inst3: a stand-in guest cannot be restored from a state stream\n", "\(bigger.stderr)")
        try Self.streamHead(memory: 64 << 20, vcpus: 2).write(to: URL(fileURLWithPath: head))
        let vcpus = try run("/bin/sh", ["-c", "\(vmctl) receive -t tmpl inst3 < '\(head)'"], timeout: 30)
        #expect(vcpus.status == 1 && vcpus.stderr.hasPrefix("vmctl: vm inst3: the stream's machine (64M, 2 vcpu(s), emulator) differs")
                && vcpus.stderr.hasSuffix("only root may change its settings\n"), "\(vcpus.stderr)")
        #expect(row(try d.vmctl("status").stdout, "inst3") == nil, "a failed receive keeps no instance")
        // The owner passes the checks and gets to the stream (which is not one).
        let own = try d.vmctl("stop", "-w", "alice-vm", as: "vmdtest1")
        #expect(own.status == 0)
        let owner = try d.vmctl("receive", "alice-vm", stdin: "not a state stream, but long enough", as: "vmdtest1")
        #expect(owner.stderr == "vmctl: vm alice-vm: not a swiftvmm state stream (bad magic)\n", "\(owner.stderr)")
        #expect(row(try d.vmctl("status").stdout, "alice-vm")?[7] == "stopped")
    }
}

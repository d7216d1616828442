#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `vmctl send` (docs/snapshot.md): only root or the VM's owner may send; a sent VM stops
/// and its stream, run with `vmm --restore`, goes on counting from where it was.
@Suite(.serialized) struct SendTests {
    static let counterKernel: String? = {
        let dir = RealGuestTests.repoRoot + "/.build/guests-vmd"
        let elf = dir + "/counter.elf"
        guard let r = try? run("/usr/bin/make", ["-s", "-C", RealGuestTests.repoRoot + "/guests", "BUILD=" + dir, elf], timeout: 120),
              r.status == 0, access(elf, R_OK) == 0 else { return nil }
        return elf
    }()

    static func counts(_ text: String) -> [Int] {
        text.split(whereSeparator: \.isNewline).compactMap { l in
            l.hasPrefix("count ") ? Int(l.dropFirst(6).prefix { $0.isNumber }) : nil
        }
    }

    @Test(.enabled(if: SendTests.counterKernel != nil, "the counter guest cannot be built"))
    func aSentCounterGuestStopsAndCountsOnWhenRestored() throws {
        try #require(Binaries.available)
        let kernel = try #require(Self.counterKernel)
        let d = try TestDaemon(config: RealGuestTests.vmBlock("cnt", kernel: kernel, accel: "emulator"), fake: false)
        defer { d.stop() }
        #expect(try d.vmctl("start", "cnt").status == 0, "\(d.log.snapshot())")
        let c = try ConsoleClient(socket: d.socket, name: "cnt")
        #expect(c.waitFor("count 3\r\n", timeout: 30), "\(c.output.snapshot())")
        let file = d.dir + "/cnt.state"
        let sent = try run("/bin/sh", ["-c", "'\(Binaries.vmctl)' --socket '\(d.socket)' send cnt > '\(file)'"], timeout: 60)
        #expect(sent.status == 0, "\(sent.stderr) / \(d.log.snapshot())")
        #expect(sent.stderr.contains("sent vm cnt successfully"), "\(sent.stderr)")
        // A disabled VM that is not running shows as "disabled".
        #expect(try RealGuestTests.waitState(d, "cnt", ["stopped", "disabled"], timeout: 20)?[7] == "disabled", "a sent VM stops")
        let before = Self.counts(c.output.snapshot())
        let last = try #require(before.last)

        // The stream runs again in a plain vmm; it was cut off by the timeout.
        let vmm = Binaries.directory + "/vmm"
        let restored = try run(vmm, ["--restore", file], timeout: 8)
        let after = Self.counts(restored.stdout)
        #expect(!restored.stdout.contains("counter: page at"), "the guest started over: \(restored.stdout.prefix(200))")
        #expect((after.first ?? 0) >= last && (after.first ?? .max) <= last + 2 && after.count > 2,
                "counted on from \(last): \(after.prefix(5)) / \(restored.stderr)")
    }

    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func onlyRootOrTheOwnerMaySend() throws {
        try #require(Binaries.available)
        try PermissionTests.ensureUsers()
        let d = try TestDaemon(config: PermissionTests.config)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "alice-vm")?[7] == "running" }
        let stranger = try d.vmctl("send", "alice-vm", as: "vmdtest2")   // may reach vmd, does not own it
        #expect(stranger.status != 0 && stranger.stderr.contains("permission denied"), "\(stranger.stderr)")
        #expect(row(try d.vmctl("status").stdout, "alice-vm")?[7] == "running", "a refused send leaves it running")
        // The owner passes the check; the stand-in guest has no state, so nothing is sent.
        let owner = try d.vmctl("send", "alice-vm", as: "vmdtest1")
        #expect(owner.status != 0 && !owner.stderr.contains("permission denied"), "\(owner.stderr)")
        #expect(row(try d.vmctl("status").stdout, "alice-vm")?[7] == "running", "a failed send leaves it running")
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Real unprivileged users (created here with groupadd/useradd) against a running vmd:
/// owners may control their VMs and nobody else's; root-only commands stay root's.
@Suite(.serialized) struct PermissionTests {
    static let usable: Bool = getuid() == 0 && access("/usr/sbin/useradd", X_OK) == 0
        && access("/usr/bin/setpriv", X_OK) == 0

    /// Makes the test users once per run (suites run in parallel: two useradd at once race).
    static func ensureUsers() throws { try madeUsers.get() }

    private static let madeUsers: Result<Void, any Error> = Result { try makeUsers() }

    private static func makeUsers() throws {
        for g in ["vmdtestctl", "vmdtestops"] {
            try run("/usr/sbin/groupadd", ["-f", g])
        }
        let users = [("vmdtest1", "vmdtestctl"), ("vmdtest2", "vmdtestctl,vmdtestops"), ("vmdtest3", "vmdtestops")]
        for (u, groups) in users {
            if try run("/usr/bin/id", [u]).status != 0 {
                let r = try run("/usr/sbin/useradd", ["-M", "-U", "-s", "/bin/sh", "-G", groups, u])
                #expect(r.status == 0, "useradd \(u): \(r.stderr)")
            }
        }
    }

    static let config = """
        socket owner root:vmdtestctl
        vm "alice-vm" {
            owner vmdtest1
        }
        vm "ops-vm" {
            disable
            owner :vmdtestops
        }
        vm "root-vm" {
            disable
        }
        vm "tmpl" {
            disable
            allow instance { memory, owner vmdtest2 }
        }

        """

    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func ownersControlTheirVMsAndNothingElse() throws {
        try #require(Binaries.available)
        try Self.ensureUsers()
        let d = try TestDaemon(config: Self.config)
        defer { d.stop() }
        _ = try d.waitForStatus { row($0, "alice-vm")?[7] == "running" }

        // vmdtest1 owns alice-vm.
        #expect(try d.vmctl("status", as: "vmdtest1").status == 0)
        #expect(try d.vmctl("pause", "alice-vm", as: "vmdtest1").status == 0)
        #expect(try d.vmctl("unpause", "alice-vm", as: "vmdtest1").status == 0)
        let console = try d.vmctl("console", "alice-vm", stdin: "hi\r~.", as: "vmdtest1")
        #expect(console.status == 0)
        #expect(console.stdout.contains("Connected to /dev/pts/"))
        #expect(try d.vmctl("stop", "-w", "alice-vm", as: "vmdtest1").status == 0)
        #expect(try d.vmctl("start", "alice-vm", as: "vmdtest1").status == 0)
        let other = try d.vmctl("start", "root-vm", as: "vmdtest1")
        #expect(other.status == 1)
        #expect(other.stderr == "vmctl: vm root-vm: permission denied\n")
        #expect(try d.vmctl("start", "-m", "1G", "alice-vm", as: "vmdtest1").stderr.contains("only root"))
        #expect(try d.vmctl("reload", as: "vmdtest1").stderr == "vmctl: reload: permission denied\n")
        #expect(try d.vmctl("log", "verbose", as: "vmdtest1").status == 1)
        #expect(try d.vmctl("reset", as: "vmdtest1").status == 1)

        // vmdtest2: group owner of ops-vm, may make instances of tmpl, may not touch alice-vm.
        #expect(try d.vmctl("start", "ops-vm", as: "vmdtest2").status == 0)
        let stopAlice = try d.vmctl("stop", "alice-vm", as: "vmdtest2")
        #expect(stopAlice.stderr == "vmctl: vm alice-vm: permission denied\n")
        let consoleAlice = try d.vmctl("console", "alice-vm", as: "vmdtest2")
        #expect(consoleAlice.status == 1)
        #expect(try d.vmctl("start", "-t", "tmpl", "-m", "128M", "mine", as: "vmdtest2").status == 0)
        let mine = try #require(row(try d.vmctl("status").stdout, "mine"))
        #expect(mine[3] == "128M" && mine[7] == "running" && mine[6] == "vmdtest2")
        #expect(try d.vmctl("stop", "mine", as: "vmdtest2").status == 0)
        let forbidden = try d.vmctl("start", "-t", "tmpl", "-r", "/etc/hostname", "mine2", as: "vmdtest2")
        #expect(forbidden.stderr == "vmctl: vm tmpl: instances may not change that setting\n")
        #expect(try d.vmctl("start", "-t", "tmpl", "theirs", as: "vmdtest1").stderr
                == "vmctl: vm tmpl: permission denied to create instances\n")

        // vmdtest3 is not in the socket's group: the socket itself keeps it out.
        let outsider = try d.vmctl("status", as: "vmdtest3")
        #expect(outsider.status == 1)
        #expect(outsider.stderr.contains("Permission denied"))

        // Root can do everything, and vmd lost nothing along the way.
        #expect(try d.vmctl("stop", "-w", "alice-vm").status == 0)
        #expect(try d.vmctl("start", "root-vm").status == 0)
        #expect(row(try d.vmctl("status").stdout, "ops-vm")?[7] == "running")
    }
}

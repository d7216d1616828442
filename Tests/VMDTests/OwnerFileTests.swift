#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// vmd runs as root, but the files of a VM with a non-root owner (vm.conf's or a start
/// request's, with every backing file) are opened with the owner's rights: the kernel checks
/// directories, modes and ACLs as for the owner, and links the owner could have made are
/// refused (issue 11, hole 1).
@Suite(.serialized) struct OwnerFileTests {
    @Test(.enabled(if: PermissionTests.usable, "needs root, useradd and setpriv"))
    func aVMsFilesAreOpenedWithItsOwnersRights() throws {
        try #require(Binaries.available)
        try PermissionTests.ensureUsers()
        let joe = try #require(getpwnam("vmdtest1")?.pointee.pw_uid)
        let dir = try DiskFDTests.scratch("owner")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/kernel"
        try Data(count: 4096).write(to: URL(fileURLWithPath: kernel))
        chmod(kernel, 0o644)
        // Root's: a secret, and a directory the owner cannot enter with an open file in it.
        try DiskFDTests.create("-s", "1M", dir + "/secret.raw")
        chmod(dir + "/secret.raw", 0o600)
        mkdir(dir + "/private", 0o700)
        try DiskFDTests.create("-s", "1M", dir + "/private/open.raw")
        chmod(dir + "/private/open.raw", 0o666)
        // The owner's directory: their disk, a link to the secret, an image backed by it.
        let home = dir + "/joe"
        mkdir(home, 0o755)
        chown(home, joe, gid_t.max)
        try DiskFDTests.create("-s", "1M", home + "/own.raw")
        chown(home + "/own.raw", joe, gid_t.max)
        symlink(dir + "/secret.raw", home + "/link.raw")
        symlink(home + "/own.raw", home + "/link-to-own.raw")
        try DiskFDTests.create("-b", dir + "/secret.raw", home + "/peek.qcow2")
        chown(home + "/peek.qcow2", joe, gid_t.max)
        // A link root made where the owner cannot write is followed.
        try DiskFDTests.create("-s", "1M", home + "/other.raw")
        chown(home + "/other.raw", joe, gid_t.max)
        symlink(home + "/other.raw", dir + "/root-link.raw")

        func vm(_ name: String, _ disk: String) -> String {
            "vm \"\(name)\" {\n disable\n owner vmdtest1\n boot \"\(kernel)\"\n disk \"\(disk)\"\n}\n"
        }
        let conf = "socket owner root:vmdtestctl\n" + vm("link", home + "/link.raw") + vm("backing", home + "/peek.qcow2")
            + vm("hidden", dir + "/private/open.raw") + vm("ownlink", home + "/link-to-own.raw")
            + vm("own", home + "/own.raw") + vm("rootlink", dir + "/root-link.raw")
        let d = try TestDaemon(config: conf)
        defer { d.stop() }
        let refused: [(String, String)] = [
            ("link", "vm link: disk \(home)/link.raw: \(home)/link.raw is a symbolic link vmdtest1 could have made"),
            ("backing", "vm backing: backing file \(dir)/secret.raw: Permission denied"),
            ("hidden", "vm hidden: disk \(dir)/private/open.raw: Permission denied"),
            ("ownlink", "vm ownlink: disk \(home)/link-to-own.raw: \(home)/link-to-own.raw is a symbolic link vmdtest1 could have made"),
        ]
        // Whoever asks (the owner, or root): the owner's rights decide.
        for user in ["vmdtest1", nil] {
            for (name, message) in refused {
                let r = try d.vmctl("start", name, as: user)
                #expect(r.status == 1, "\(name) as \(user ?? "root"): \(r.stdout)")
                #expect(r.stderr.hasPrefix("vmctl: " + message), "\(name) as \(user ?? "root"): \(r.stderr)")
                #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
            }
        }
        // What the owner may open is fine, and nothing was lost along the way.
        let own = try d.vmctl("start", "own", as: "vmdtest1")
        #expect(own.status == 0, "\(own.stderr)")
        let rootlink = try d.vmctl("start", "rootlink")
        #expect(rootlink.status == 0, "\(rootlink.stderr)")
        let status = try d.vmctl("status").stdout
        for (name, _) in refused { #expect(row(status, name)?[1] == "-", "\(status)") }
        #expect(row(status, "own")?[7] == "running", "\(status)")
    }
}

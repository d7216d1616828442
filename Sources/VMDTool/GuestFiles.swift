#if canImport(Glibc)
import Glibc
#endif
import Control
import Storage
import VMConfig
import VMM

// Privilege separation of file access (docs/vmd.md, "Privilege separation"): vmd opens a
// VM's kernel, initrd, cdrom and disks (every file of a qcow2 backing chain) and passes the
// descriptors to the VM process, which opens no guest file by name and, when vmd runs as
// root, then gives up root.

/// The descriptors vmd opened for one VM start and the table saying which is which.
struct OpenedGuestFiles {
    var fds: [Int32] = []
    var table = ChildFiles()

    func closeAll() { for fd in fds { close(fd) } }
}

/// Who asked for files named in a start request (vmctl start -b/-d/-r/-I of a non-root
/// user, through an instance): each such file must be accessible to them, as OpenBSD's
/// vmd checks, so that vmd's root does not open for them what they could not.
struct FileRequester {
    var uid: UInt32
    var gids: Set<UInt32>
}

enum GuestFiles {
    /// Opens every file the VM needs. The error is one line naming the VM and the file.
    /// `requester` applies to the files in `fromRequest` (the paths a start request set).
    static func open(_ d: VMDefinition, requester: FileRequester?, fromRequest: Set<String>) -> Result<OpenedGuestFiles, GuestError> {
        var out = OpenedGuestFiles()
        func fail(_ m: String) -> Result<OpenedGuestFiles, GuestError> {
            out.closeAll()
            return .failure(GuestError(description: "vm \(d.name): \(m)"))
        }
        func checked(_ fd: Int32, _ what: String, _ path: String, write: Bool) -> String? {
            guard fromRequest.contains(path) else { return nil }
            return accessProblem(fd, what, path, write: write)
        }
        func accessProblem(_ fd: Int32, _ what: String, _ path: String, write: Bool) -> String? {
            guard let r = requester else { return nil }
            var st = stat()
            guard fstat(fd, &st) == 0 else { return "\(what) \(path): \(String(cString: strerror(errno)))" }
            if !mayAccess(st, r, write: write) { return "\(what) \(path): \(String(cString: strerror(EACCES)))" }
            return nil
        }
        func plain(_ what: String, _ path: String?) -> Result<ChildFiles.File?, GuestError> {
            guard let path else { return .success(nil) }
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return .failure(GuestError(description: "\(what) \(path): \(String(cString: strerror(errno)))")) }
            var st = stat()
            if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
                close(fd)
                return .failure(GuestError(description: "\(what) \(path): it is a directory"))
            }
            if let problem = checked(fd, what, path, write: false) {
                close(fd)
                return .failure(GuestError(description: problem))
            }
            out.fds.append(fd)
            return .success(ChildFiles.File(index: out.fds.count - 1, path: path))
        }
        for (what, path, slot) in [("kernel", d.boot, \ChildFiles.kernel), ("initrd", d.initrd, \ChildFiles.initrd),
                                   ("cdrom", d.cdrom, \ChildFiles.cdrom)] as [(String, String?, WritableKeyPath<ChildFiles, ChildFiles.File?>)] {
            switch plain(what, path) {
            case .failure(let m): return fail(m.description)
            case .success(let f): out.table[keyPath: slot] = f
            }
        }
        for disk in d.disks {
            let chain: [OpenedImageFile]
            do {
                chain = try DiskImage.openChain(path: disk.path, format: disk.format.flatMap { DiskImageFormat(rawValue: $0.rawValue) })
            } catch let StorageError.system(path, _, err) {
                return fail("disk \(path): \(String(cString: strerror(err)))")
            } catch {
                let text = "\(error)"
                return fail(text.hasPrefix(disk.path + ": ") ? "disk \(text)" : "disk \(disk.path): \(text)")
            }
            var images: [ChildFiles.Image] = []
            for (i, f) in chain.enumerated() {
                out.fds.append(f.fd)
                images.append(ChildFiles.Image(index: out.fds.count - 1, path: f.path, format: f.format.rawValue, readOnly: f.readOnly))
                // A backing file of a disk the request named was named by the request too.
                if fromRequest.contains(disk.path),
                   let problem = accessProblem(f.fd, i == 0 ? "disk" : "backing file", f.path, write: i == 0) {
                    // Close the rest of this chain too.
                    for g in chain[(i + 1)...] { close(g.fd) }
                    return fail(problem)
                }
            }
            out.table.disks.append(images)
        }
        out.table.count = out.fds.count
        return .success(out)
    }

    /// Whether the file's owner/group/other bits let `r` read (and write).
    static func mayAccess(_ st: stat, _ r: FileRequester, write: Bool) -> Bool {
        let mode = st.st_mode
        let (rb, wb): (mode_t, mode_t)
        if st.st_uid == r.uid {
            (rb, wb) = (S_IRUSR, S_IWUSR)
        } else if r.gids.contains(st.st_gid) {
            (rb, wb) = (S_IRGRP, S_IWGRP)
        } else {
            (rb, wb) = (S_IROTH, S_IWOTH)
        }
        return mode & rb != 0 && (!write || mode & wb != 0)
    }

    /// Sends the descriptors after the spec, `ControlChannel.maxFDsPerFrame` per frame.
    static func send(_ fds: [Int32], over ch: ControlChannel) throws {
        var i = 0
        while i < fds.count {
            let n = min(ControlChannel.maxFDsPerFrame, fds.count - i)
            try ch.send(ParentMessage.files, fds: Array(fds[i..<(i + n)]))
            i += n
        }
    }

    // MARK: the VM process side

    /// Receives the `spec.files.count` descriptors that follow the spec.
    static func receive(_ count: Int, over ch: ControlChannel) throws -> [Int32] {
        var fds: [Int32] = []
        while fds.count < count {
            guard let (msg, got) = try ch.receive(ParentMessage.self) else {
                for f in fds { close(f) }
                throw GuestError(description: "vmd went away while passing the guest's files")
            }
            guard case .files = msg else {
                for f in fds + got { close(f) }
                throw GuestError(description: "expected the guest's files from vmd")
            }
            fds += got
        }
        guard fds.count == count else {
            for f in fds { close(f) }
            throw GuestError(description: "vmd passed \(fds.count) files, \(count) were announced")
        }
        return fds
    }

    /// The machine's view: descriptors by role. The cdrom becomes a read-only disk after
    /// the others.
    static func passedFiles(_ t: ChildFiles, _ fds: [Int32]) throws -> PassedFiles {
        func fd(_ i: Int) throws -> Int32 {
            guard i >= 0, i < fds.count else { throw GuestError(description: "vmd's file table is out of range") }
            return fds[i]
        }
        guard let kernel = t.kernel else { throw GuestError(description: "no kernel was passed") }
        var disks: [[OpenedImageFile]] = []
        for chain in t.disks {
            disks.append(try chain.map { img in
                OpenedImageFile(fd: try fd(img.index), path: img.path,
                                format: DiskImageFormat(rawValue: img.format) ?? .raw, readOnly: img.readOnly)
            })
        }
        if let c = t.cdrom {
            disks.append([OpenedImageFile(fd: try fd(c.index), path: c.path, format: .raw, readOnly: true)])
        }
        return PassedFiles(kernel: try fd(kernel.index), initrd: try t.initrd.map { try fd($0.index) }, disks: disks)
    }

    /// Becomes `id` (supplementary groups: only its gid), for good. Called once the process
    /// holds its guest files, /dev/kvm and its console; nothing later opens a file.
    static func dropPrivileges(to id: DropIdentity?) throws {
        guard let id, geteuid() == 0, id.uid != 0 else { return }
        var groups = [gid_t(id.gid)]
        guard setgroups(1, &groups) == 0 else { throw GuestError(description: "setgroups: \(String(cString: strerror(errno)))") }
        // As root, setgid/setuid set the real, effective and saved ids.
        guard setgid(id.gid) == 0 else { throw GuestError(description: "setgid(\(id.gid)): \(String(cString: strerror(errno)))") }
        guard setuid(id.uid) == 0 else { throw GuestError(description: "setuid(\(id.uid)): \(String(cString: strerror(errno)))") }
        // Root must be gone for good: getting it back has to fail.
        guard setuid(0) != 0, getuid() == id.uid, geteuid() == id.uid else {
            throw GuestError(description: "could not give up root for user \(id.user)")
        }
    }

    /// The user VM processes run as when vmd runs as root: `name` if given, else the first
    /// of _vmd, vmd, nobody that exists; nil when there is none (or it is root).
    static func dropIdentity(user name: String?) -> DropIdentity? {
        guard geteuid() == 0 else { return nil }
        for candidate in name.map({ [$0] }) ?? ["_vmd", "vmd", "nobody"] {
            var pw = passwd()
            var result: UnsafeMutablePointer<passwd>?
            var buf = [CChar](repeating: 0, count: 16384)
            // SAFETY: buf outlives the call; the fields used are copied at once.
            if getpwnam_r(candidate, &pw, &buf, buf.count, &result) == 0, result != nil {
                if pw.pw_uid == 0 { return nil }
                return DropIdentity(user: candidate, uid: pw.pw_uid, gid: pw.pw_gid)
            }
        }
        return nil
    }
}

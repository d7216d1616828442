#if canImport(Glibc)
import Glibc
#endif
import Control
import Storage
import VMConfig
import VMM
import VMDCore

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

enum GuestFiles {
    /// Opens every file the VM needs. The error is one line naming the VM and the file.
    /// `identity` (the VM's non-root owner): every file, whether from vm.conf or from a
    /// start request, with the whole backing chain, is opened with that user's rights on a
    /// thread of its own (UserFileAccess), refusing symbolic links the user could have made.
    /// Only regular files (and block devices for disks and the cdrom) are accepted; a FIFO
    /// or device never blocks the open. Disks are locked exclusively, backing files and the
    /// cdrom shared (OFD locks, ImageFile.lockImage).
    static func open(_ d: VMDefinition, as identity: FileIdentity?) -> Result<OpenedGuestFiles, GuestError> {
        do {
            return try UserFileAccess.run(as: identity) { openAll(d, as: identity) }
        } catch {
            return .failure(GuestError(description: "vm \(d.name): \(error)"))
        }
    }

    private static func openAll(_ d: VMDefinition, as identity: FileIdentity?) -> Result<OpenedGuestFiles, GuestError> {
        var out = OpenedGuestFiles()
        func fail(_ m: String) -> Result<OpenedGuestFiles, GuestError> {
            out.closeAll()
            return .failure(GuestError(description: "vm \(d.name): \(m)"))
        }
        let opener: ImageOpener? = identity.map { id in { path, flags in try UserFileAccess.open(path, flags: flags, as: id) } }
        // The kernel and initrd: regular files only, read once by the VM process.
        func plain(_ what: String, _ path: String?) -> Result<ChildFiles.File?, GuestError> {
            guard let path else { return .success(nil) }
            let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY
            let fd: Int32
            do {
                if let opener { fd = try opener(path, flags) } else {
                    fd = Glibc.open(path, flags)
                    if fd < 0 { throw StorageError.system(path: path, operation: "open", errno: errno) }
                }
            } catch {
                return .failure(GuestError(description: describe(error, role: { _ in what })))
            }
            var st = stat()
            let isRegular = fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFREG
            guard isRegular else {
                let dir = st.st_mode & S_IFMT == S_IFDIR
                close(fd)
                return .failure(GuestError(description: "\(what) \(path): \(dir ? "it is a directory" : "not a regular file")"))
            }
            let fl = fcntl(fd, F_GETFL)
            if fl >= 0 { _ = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) }
            out.fds.append(fd)
            return .success(ChildFiles.File(index: out.fds.count - 1, path: path))
        }
        for (what, path, slot) in [("kernel", d.boot, \ChildFiles.kernel), ("initrd", d.initrd, \ChildFiles.initrd)]
            as [(String, String?, WritableKeyPath<ChildFiles, ChildFiles.File?>)] {
            switch plain(what, path) {
            case .failure(let m): return fail(m.description)
            case .success(let f): out.table[keyPath: slot] = f
            }
        }
        // The cdrom: read-only, a regular file or block device, shared-locked.
        if let cdrom = d.cdrom {
            do {
                let f = try DiskImage.openChain(path: cdrom, format: .raw, readOnly: true, opener: opener)
                out.fds.append(f[0].fd)
                out.table.cdrom = ChildFiles.File(index: out.fds.count - 1, path: cdrom)
            } catch {
                return fail(describe(error, role: { _ in "cdrom" }))
            }
        }
        for disk in d.disks {
            let chain: [OpenedImageFile]
            do {
                chain = try DiskImage.openChain(path: disk.path, format: disk.format.flatMap { DiskImageFormat(rawValue: $0.rawValue) },
                                                opener: opener)
            } catch {
                return fail(describe(error, role: { $0 == disk.path ? "disk" : "backing file" }, top: disk.path))
            }
            var images: [ChildFiles.Image] = []
            for f in chain {
                out.fds.append(f.fd)
                images.append(ChildFiles.Image(index: out.fds.count - 1, path: f.path, format: f.format.rawValue, readOnly: f.readOnly))
            }
            out.table.disks.append(images)
        }
        out.table.count = out.fds.count
        return .success(out)
    }

    /// One line for an error opening a file: "ROLE PATH: what", the role from the path the
    /// error names (`top`: the disk named in the VM's settings, for errors naming no file).
    static func describe(_ error: any Error, role: (String) -> String, top: String? = nil) -> String {
        if case let StorageError.system(path, _, err)? = error as? StorageError {
            return "\(role(path)) \(path): \(String(cString: strerror(err)))"
        }
        let text = "\(error)"
        if let range = text.range(of: ": ") {
            let path = String(text[..<range.lowerBound])
            if path.contains("/") || path == top { return "\(role(path)) \(text)" }
        }
        if let top { return "\(role(top)) \(top): \(text)" }
        return text
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

    /// The `--vm-user` every VM process becomes when vmd runs as root; nil when there is no
    /// such user (or it is root).
    static func dropIdentity(user name: String) -> DropIdentity? {
        guard geteuid() == 0 else { return nil }
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16384)
        // SAFETY: buf outlives the call; the fields used are copied at once.
        guard getpwnam_r(name, &pw, &buf, buf.count, &result) == 0, result != nil, pw.pw_uid != 0 else { return nil }
        return DropIdentity(user: name, uid: pw.pw_uid, gid: pw.pw_gid)
    }
}

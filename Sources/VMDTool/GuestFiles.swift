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
    private(set) var fds: [Int32] = []
    private(set) var files: [GuestFile] = []

    /// Adds one descriptor and what it is (the two lists stay in step).
    mutating func add(_ fd: Int32, _ file: GuestFile) {
        fds.append(fd)
        files.append(file)
    }

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
        func plain(_ what: String, _ role: GuestFile.Role, _ path: String?) -> GuestError? {
            guard let path else { return nil }
            let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY
            let fd: Int32
            do {
                if let opener { fd = try opener(path, flags) } else {
                    fd = Glibc.open(path, flags)
                    if fd < 0 { throw StorageError.system(path: path, operation: "open", errno: errno) }
                }
            } catch {
                return GuestError(description: describe(error, role: { _ in what }))
            }
            var st = stat()
            let isRegular = fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFREG
            guard isRegular else {
                let dir = st.st_mode & S_IFMT == S_IFDIR
                close(fd)
                return GuestError(description: "\(what) \(path): \(dir ? "it is a directory" : "not a regular file")")
            }
            let fl = fcntl(fd, F_GETFL)
            if fl >= 0 { _ = fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) }
            out.add(fd, GuestFile(role: role, path: path, format: nil, readOnly: true))
            return nil
        }
        // With boot device net, `boot` is the network boot file, served by TFTP, not a kernel.
        if let m = plain("kernel", .kernel, d.bootDevice == .net ? nil : d.boot) ?? plain("initrd", .initrd, d.initrd) { return fail(m.description) }
        // The cdrom: read-only, a regular file or block device, shared-locked.
        if let cdrom = d.cdrom {
            do {
                let f = try DiskImage.openChain(path: cdrom, format: .raw, readOnly: true, opener: opener)
                out.add(f[0].fd, GuestFile(role: .cdrom, path: cdrom, format: .raw, readOnly: true))
            } catch {
                return fail(describe(error, role: { _ in "cdrom" }))
            }
        }
        for (n, disk) in d.disks.enumerated() {
            let chain: [OpenedImageFile]
            do {
                chain = try DiskImage.openChain(path: disk.path, format: disk.format.flatMap { DiskImageFormat(rawValue: $0.rawValue) },
                                                opener: opener)
            } catch {
                return fail(describe(error, role: { $0 == disk.path ? "disk" : "backing file" }, top: disk.path))
            }
            for (depth, f) in chain.enumerated() {
                out.add(f.fd, GuestFile(role: depth == 0 ? .disk(n) : .backing(disk: n, depth: depth), path: f.path,
                                        format: f.format, readOnly: f.readOnly))
            }
        }
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

    /// The machine's view: descriptors by role. Taps are left to the caller.
    static func passedFiles(_ files: [GuestFile], _ fds: [Int32]) throws -> PassedFiles {
        guard files.count == fds.count else { throw GuestError(description: "vmd's file list does not match the descriptors passed") }
        func fd(_ role: GuestFile.Role) -> Int32? { files.firstIndex { $0.role == role }.map { fds[$0] } }
        return PassedFiles(kernel: fd(.kernel), initrd: fd(.initrd), disks: try diskChains(files, fds), cdrom: fd(.cdrom))
    }

    /// One chain per disk (the image, then its backing files), in disk order. The cdrom is
    /// not among them: it is the machine's virtio-scsi CD-ROM (`PassedFiles.cdrom`).
    static func diskChains(_ files: [GuestFile], _ fds: [Int32]) throws -> [[OpenedImageFile]] {
        guard files.count == fds.count else { throw GuestError(description: "vmd's file list does not match the descriptors passed") }
        var disks: [[OpenedImageFile]] = []
        for (i, f) in files.enumerated() {
            guard let format = f.format else { continue }
            switch f.role {
            case .disk(let n):
                guard n == disks.count else { throw GuestError(description: "vmd passed disk \(n) out of order") }
                disks.append([OpenedImageFile(fd: fds[i], path: f.path, format: format, readOnly: f.readOnly)])
            case .backing(let n, _):
                guard n == disks.count - 1 else { throw GuestError(description: "vmd passed a backing file of disk \(n) out of order") }
                disks[n].append(OpenedImageFile(fd: fds[i], path: f.path, format: format, readOnly: true))
            default: break
            }
        }
        return disks
    }

    /// Becomes `id` (no supplementary groups at all), for good. Called once the process
    /// holds its guest files, /dev/kvm and its console; nothing later opens a file.
    static func dropPrivileges(to id: DropIdentity?) throws {
        guard let id, geteuid() == 0, id.uid != 0 else { return }
        guard setgroups(0, nil) == 0 else { throw GuestError(description: "setgroups: \(String(cString: strerror(errno)))") }
        // As root, setgid/setuid set the real, effective and saved ids.
        guard setgid(id.gid) == 0 else { throw GuestError(description: "setgid(\(id.gid)): \(String(cString: strerror(errno)))") }
        guard setuid(id.uid) == 0 else { throw GuestError(description: "setuid(\(id.uid)): \(String(cString: strerror(errno)))") }
        // Root must be gone for good: getting it back has to fail.
        guard setuid(0) != 0, getuid() == id.uid, geteuid() == id.uid, getgid() == id.gid, getegid() == id.gid,
              getgroups(0, nil) == 0 else {
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

#if canImport(Glibc)
import Glibc
#endif
import Storage

/// Guest files opened by someone else (vmd, the privileged parent) and handed over as
/// descriptors. When a `MachineConfig` carries them, `Machine` opens no guest file by name:
/// the config's paths (`kernelPath`, `initrdPath`, `diskPaths`) then only name the files
/// in messages. `Machine.init` takes ownership of every descriptor (the kernel's and the
/// initrd's are closed once read; a disk's stay with its image).
public struct PassedFiles: Sendable {
    public var kernel: Int32
    public var initrd: Int32?
    /// One chain per disk, in `diskPaths` order: the image, then its backing files.
    public var disks: [[OpenedImageFile]]

    public init(kernel: Int32, initrd: Int32? = nil, disks: [[OpenedImageFile]] = []) {
        self.kernel = kernel
        self.initrd = initrd
        self.disks = disks
    }

    /// Every descriptor held.
    public var allDescriptors: [Int32] {
        [kernel] + (initrd.map { [$0] } ?? []) + disks.flatMap { $0.map(\.fd) }
    }

    /// Closes every descriptor (when the machine is not built after all).
    public func closeAll() {
        for fd in allDescriptors { close(fd) }
    }
}

/// Reads a whole regular file from an open descriptor (from offset 0) and closes it.
/// Errors are sentences naming `path`.
func readAllAndClose(fd: Int32, path: String, limit: Int = 1 << 31,
                     unreadable: (String, String) -> VMMError) throws -> [UInt8] {
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw unreadable(path, errnoString(errno)) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw unreadable(path, "it is not a regular file") }
    guard st.st_size <= limit else { throw unreadable(path, "it is larger than \(limit) bytes") }
    var out = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    while done < out.count {
        // SAFETY: reads into the array's own storage, never past its count.
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
        if n < 0 {
            if errno == EINTR { continue }
            throw unreadable(path, errnoString(errno))
        }
        if n == 0 { break }
        done += n
    }
    if done < out.count { out.removeLast(out.count - done) }
    return out
}

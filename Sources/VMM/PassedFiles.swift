#if canImport(Glibc)
import Glibc
#endif
import Storage
import Boot

/// Guest files opened by someone else (vmd, the privileged parent) and handed over as
/// descriptors. When a `MachineConfig` carries them, `Machine` opens no guest file by name:
/// the config's paths (`kernelPath`, `initrdPath`, `diskPaths`, `cdromPath`) then only name
/// the files in messages. `Machine.init` takes ownership of every descriptor (the kernel's
/// and the initrd's are closed once read; a disk's and the CD's stay with their images).
/// The firmware image is not passed: it is a system file (Debian's seabios) the VM process
/// reads by name before it gives up root.
public struct PassedFiles: Sendable {
    /// nil for a firmware boot (no kernel).
    public var kernel: Int32?
    public var initrd: Int32?
    /// One chain per disk, in `diskPaths` order: the image, then its backing files.
    public var disks: [[OpenedImageFile]]
    /// The CD-ROM's ISO (`cdromPath`), read-only.
    public var cdrom: Int32?

    public init(kernel: Int32?, initrd: Int32? = nil, disks: [[OpenedImageFile]] = [], cdrom: Int32? = nil) {
        self.kernel = kernel
        self.initrd = initrd
        self.disks = disks
        self.cdrom = cdrom
    }

    /// Every descriptor held.
    public var allDescriptors: [Int32] {
        [kernel, initrd, cdrom].compactMap { $0 } + disks.flatMap { $0.map(\.fd) }
    }

    /// Closes every descriptor (when the machine is not built after all).
    public func closeAll() {
        for fd in allDescriptors { close(fd) }
    }
}

/// Reads a whole regular file from an open descriptor (from offset 0) and closes it.
/// Errors are sentences naming `path`. `check` sees the head first (Boot.readWholeFile).
func readAllAndClose(fd: Int32, path: String, limit: Int = 1 << 31, check: (([UInt8]) throws -> Void)? = nil,
                     unreadable: (String, String) -> VMMError) throws -> [UInt8] {
    defer { close(fd) }
    return try readWholeFile(fd: fd, path: path, limit: limit, check: check) { reason in
        unreadable(path, reason == "not a regular file" ? "it is not a regular file" : reason)
    }
}

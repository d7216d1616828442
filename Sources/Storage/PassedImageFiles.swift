#if canImport(Glibc)
import Glibc
#endif

/// One file of a disk image opened by a privileged process (vmd) for a process that opens
/// nothing by name (the VM process): the descriptor travels over a unix socket, the rest
/// in a message. `path` names the file in messages only.
public struct OpenedImageFile: Sendable, Equatable {
    public var fd: Int32
    public var path: String
    public var format: DiskImageFormat
    public var readOnly: Bool

    public init(fd: Int32, path: String, format: DiskImageFormat, readOnly: Bool) {
        self.fd = fd; self.path = path; self.format = format; self.readOnly = readOnly
    }
}

extension DiskImage {
    /// Opens a disk image and every file of its backing chain, top image first: what vmd
    /// does before handing a disk to a VM process. Backing file names are resolved as
    /// `Qcow2Image` resolves them (relative to the image that names them), with the same
    /// errors for a missing base, a loop and a chain deeper than `Qcow2Image.maxChainDepth`.
    /// Backing files are opened read-only. Only the headers are read (the image itself is
    /// checked by `open(chain:)` in the process that uses it). `format` nil: by magic.
    /// The caller owns the returned descriptors (close-on-exec); on error none stay open.
    /// Each file is locked as `ImageFile.lockImage` says (the locks travel with the
    /// descriptors); `opener` replaces open(2) for every file of the chain (vmd: as the
    /// VM's owner, refusing symbolic links).
    public static func openChain(path: String, format: DiskImageFormat? = nil,
                                 readOnly: Bool = false, opener: ImageOpener? = nil) throws -> [OpenedImageFile] {
        var opened: [OpenedImageFile] = []
        var success = false
        defer { if !success { for f in opened { close(f.fd) } } }
        var current = path
        var currentFormat = format
        var currentReadOnly = readOnly
        var above: [String] = []  // canonical paths of the images opened so far
        while true {
            let file = try ImageFile.open(current, readOnly: currentReadOnly, opener: opener)
            let head = try file.readBytes(count: 4, at: 0)
            let kind = currentFormat ?? (head.count == 4 && head.be32(0) == Qcow2Header.magic ? .qcow2 : .raw)
            var backing: (name: String, format: String?)?
            if kind == .qcow2 {
                let (h, first) = try Qcow2Image.readHeader(file)
                if let name = try Qcow2Image.backingName(h, first, path: current) { backing = (name, h.backingFormat) }
            }
            opened.append(OpenedImageFile(fd: file.release(), path: current, format: kind, readOnly: currentReadOnly))
            guard let backing else { break }
            let resolved = Qcow2Image.resolveBacking(backing.name, of: current)
            guard let canonical = ImageFile.canonicalPath(resolved) else {
                throw StorageError.backingMissing(path: current, backing: resolved)
            }
            above.append(ImageFile.canonicalPath(current) ?? current)
            if above.contains(canonical) { throw StorageError.backingLoop(path: current, backing: resolved) }
            if above.count >= Qcow2Image.maxChainDepth {
                throw StorageError.backingTooDeep(path: current, limit: Qcow2Image.maxChainDepth)
            }
            switch backing.format {
            case "qcow2": currentFormat = .qcow2
            case "raw": currentFormat = .raw
            case nil, "": currentFormat = nil
            case let other?: throw StorageError.unsupported(path: current, feature: "backing format \"\(other)\"")
            }
            current = resolved
            currentReadOnly = true
        }
        success = true
        return opened
    }

    /// Builds a disk from the files `openChain` opened (usually in another process): the
    /// top image first, then its backing files in chain order. Opens nothing by name.
    /// Takes ownership of every descriptor, also when it throws. Each qcow2 image's
    /// backing file is the next file; a chain that is shorter or longer than the images'
    /// headers say is an error.
    public static func open(chain: [OpenedImageFile]) throws -> any DiskBackend {
        // Adopted at once, so every descriptor is closed however this ends.
        let files = chain.enumerated().map { i, f in
            ImageFile.adopt(fd: f.fd, path: f.path, readOnly: i > 0 || f.readOnly)
        }
        guard !files.isEmpty else { throw StorageError.badArgument("no image files were passed for the disk") }
        var used = 1
        func build(_ i: Int) throws -> any DiskBackend {
            switch chain[i].format {
            case .raw: return try RawImage(file: files[i])
            case .qcow2:
                return try Qcow2Image(file: files[i], chain: [], backingOpener: { name, format, path, _ in
                    let j = i + 1
                    guard j < files.count else {
                        throw StorageError.backingMissing(path: path, backing: Qcow2Image.resolveBacking(name, of: path))
                    }
                    if let format, !format.isEmpty, format != chain[j].format.rawValue {
                        throw StorageError.badArgument("\(path): its backing file \(chain[j].path) was passed as \(chain[j].format.rawValue), but the image says \(format)")
                    }
                    used = max(used, j + 1)
                    return try build(j)
                })
            }
        }
        let disk = try build(0)
        guard used == files.count else {
            throw StorageError.badArgument("\(chain[0].path): \(files.count - used) more files were passed than its backing chain has")
        }
        return disk
    }
}

#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Storage

/// `vmctl create [-b base | -i input] [-s size] disk` as in OpenBSD's vmctl(8).
struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a VM disk image.",
        discussion: """
            The disk may carry a format prefix (raw:disk or qcow2:disk); otherwise the format \
            comes from the file name's extension (.qcow2) and defaults to raw. With -b the disk \
            is a qcow2 overlay on the base image, which is never modified. With -i the input \
            image is copied and converted (raw <-> qcow2). The size (scan_scaled: 4.5G) must be at least 1MB and is rounded down to megabytes with a warning; \
            it may be omitted with -b or -i (the base's or input's size is used), and a qcow2 \
            disk may be larger than its base.
            """)

    @Option(name: .customShort("b"), help: ArgumentHelp("Base image for a qcow2 overlay.", valueName: "base"))
    var base: String?

    @Option(name: .customShort("i"), help: ArgumentHelp("Input image to copy and convert.", valueName: "input"))
    var input: String?

    @Option(name: .customShort("s"), help: ArgumentHelp("Size, e.g. 512M or 10G (bytes without a unit).", valueName: "size"))
    var size: String?

    @Argument(help: ArgumentHelp("The disk image to create.", valueName: "disk"))
    var disk: String

    func validate() throws {
        if base != nil, input != nil { throw ValidationError("-b and -i cannot be used together") }
        if size == nil, base == nil, input == nil { throw ValidationError("missing size: use -s size") }
    }

    func run() throws {
        var (format, path) = DiskImage.parseSpec(disk)
        if format == nil { format = base != nil ? .qcow2 : (DiskImage.formatFromExtension(path) ?? .raw) }
        var bytes: UInt64?
        if let size {
            bytes = try parseSize(size, type: "disk")
        }
        let bar = ProgressBar(enabled: input != nil && isatty(STDERR_FILENO) != 0)
        do {
            _ = try DiskImage.create(path: path, format: format!, size: bytes, base: base, input: input,
                                     progress: bar.enabled ? { bar.draw($0, $1) } : nil)
        } catch {
            bar.finish()
            throw error
        }
        bar.finish()
        print("vmctl: \(format!.rawValue) imagefile created")
    }
}

/// A one-line progress bar on standard error, redrawn at most once per percent.
final class ProgressBar {
    let enabled: Bool
    private var lastPercent = -1
    private var drawn = false

    init(enabled: Bool) { self.enabled = enabled }

    func draw(_ done: UInt64, _ total: UInt64) {
        guard enabled else { return }
        let percent = total == 0 ? 100 : Int(done * 100 / total)
        if percent == lastPercent { return }
        lastPercent = percent
        let width = 40
        let filled = width * percent / 100
        let line = "\r[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
            + "] \(percent)% (\(done >> 20)/\(total >> 20) MiB)"
        writeStandardError(line)
        drawn = true
    }

    func finish() {
        if drawn { writeStandardError("\n") }
        drawn = false
    }
}

private func writeStandardError(_ text: String) {
    let bytes = Array(text.utf8)
    // SAFETY: write(2) reads bytes.count bytes from the array's storage.
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Logging

/// A log handler for the `vmm` process: one line per message on stderr, "vmm: message".
public struct VMMLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let prefix: String

    public init(label: String, level: Logger.Level = .info) {
        self.prefix = label; self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let line = "\(prefix): \(event.level >= .warning ? "\(event.level): " : "")\(event.message)\n"
        var bytes = Array(line.utf8)
        // SAFETY: writes from the array's own storage.
        _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// Turns SIGINT, SIGTERM and SIGHUP into a clean stop (and hands SIGUSR2, `vmm --save-to`'s
/// save request, to the same handler): `blockSignals()` blocks them in
/// the calling thread (and so in every thread started after it; call it before starting
/// the machine), and a watcher thread waits for them with sigwait.
public final class SignalWatcher: @unchecked Sendable {
    private var thread: HostThread?

    static var watchedSignals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGHUP, SIGUSR2] { sigaddset(&set, s) }
        return set
    }

    /// Blocks the watched signals in the calling thread.
    public static func blockSignals() {
        var set = watchedSignals
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    public init(onSignal: @escaping @Sendable (Int32) -> Void) throws {
        Self.blockSignals()
        let watched = Self.watchedSignals
        thread = try HostThread(name: "signals") {
            var set = watched
            while true {
                var sig: Int32 = 0
                if sigwait(&set, &sig) == 0 { onSignal(sig) }
            }
        }
    }

    public static func name(_ sig: Int32) -> String {
        switch sig {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        case SIGUSR2: return "SIGUSR2"
        default: return "signal \(sig)"
        }
    }
}

/// The VMM's own memory use: process RSS minus guest RAM pages that are resident.
public struct MemoryStatistics: Sendable, CustomStringConvertible {
    public var processResidentBytes: UInt64
    public var guestResidentBytes: UInt64
    public var overheadBytes: UInt64 { processResidentBytes &- min(guestResidentBytes, processResidentBytes) }

    /// Measures now: RSS from /proc/self/statm, guest pages through mincore(2).
    public static func measure(guest memory: GuestMemory) -> MemoryStatistics {
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        var rssPages: UInt64 = 0
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            var buf = [UInt8](repeating: 0, count: 128)
            // SAFETY: reads into the array's own storage.
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            close(fd)
            if n > 0 {
                let fields = String(decoding: buf[0..<n], as: UTF8.self).split(separator: " ")
                if fields.count > 1 { rssPages = UInt64(fields[1]) ?? 0 }
            }
        }
        var guestPages: UInt64 = 0
        for region in memory.regions {
            let pages = (region.size + Int(page) - 1) / Int(page)
            var vec = [UInt8](repeating: 0, count: pages)
            // SAFETY: the region is a live mapping of `size` bytes; vec has one byte per page.
            if mincore(region.host, region.size, &vec) == 0 {
                guestPages += UInt64(vec.reduce(0) { $0 + Int($1 & 1) })
            }
        }
        return MemoryStatistics(processResidentBytes: rssPages * page, guestResidentBytes: guestPages * page)
    }

    public var description: String {
        "rss_kib=\(processResidentBytes / 1024) guest_resident_kib=\(guestResidentBytes / 1024) overhead_kib=\(overheadBytes / 1024)"
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A sampling profiler of guest RIPs, for finding where a guest spends its time (a boot that
/// crawls, a loop that never ends). Enabled by setting SWIFTVMM_EMU_PROFILE to a file path:
/// the run loop samples RIP every couple of thousand instructions, and every few thousand
/// samples the file is rewritten with the hottest addresses (count, RIP). Costs one
/// optional check per sample when off.
public final class RIPProfile: @unchecked Sendable {
    let path: String
    let lock = NSLock()
    var counts: [UInt64: Int] = [:]
    var total = 0

    public init(path: String) { self.path = path }

    /// The profile the environment asks for, shared by every vCPU of the process.
    public static let fromEnvironment: RIPProfile? = {
        guard let p = ProcessInfo.processInfo.environment["SWIFTVMM_EMU_PROFILE"], !p.isEmpty else { return nil }
        return RIPProfile(path: p)
    }()

    func sample(_ rip: UInt64, cpl: Int) {
        lock.lock()
        counts[rip, default: 0] += 1
        total += 1
        let flush = total % 4096 == 0
        lock.unlock()
        if flush { write() }
    }

    /// Writes the hottest 200 addresses to the file.
    public func write() {
        lock.lock()
        let top = counts.sorted { $0.value > $1.value }.prefix(200)
        let n = total
        lock.unlock()
        var s = "# \(n) samples\n"
        for (k, c) in top {
            s += "\(c) \(String(k, radix: 16))\n"
        }
        try? s.write(toFile: path, atomically: true, encoding: .utf8)
    }
}

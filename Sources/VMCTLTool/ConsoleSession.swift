#if canImport(Glibc)
import Glibc
#endif

/// Relays the terminal to a VM's console pty until `~.` is typed at the start of a line, the
/// input ends (end of file, as cu(1) does), or the VM goes away. After the input ends the
/// VM's output is still copied until it has been quiet for `lingerQuiet` (at most
/// `lingerMax`), so `echo cmd | vmctl console vm` shows the answer. The terminal is raw
/// while attached (when it is a terminal).
enum ConsoleSession {
    static let lingerQuiet: Int32 = 300      // ms
    static let lingerMax: Double = 2         // s

    static func run(fd: Int32, tty: String) {
        let isTTY = isatty(0) == 1
        var saved = termios()
        if isTTY {
            tcgetattr(0, &saved)
            var raw = saved
            cfmakeraw(&raw)
            tcsetattr(0, TCSAFLUSH, &raw)
        }
        say("Connected to \(tty) (speed 115200)\r")
        var atLineStart = true
        var tildePending = false
        var stdinOpen = true
        var lingerUntil: timespec?
        var buf = [UInt8](repeating: 0, count: 4096)
        loop: while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stdinOpen ? 0 : -1, events: Int16(POLLIN), revents: 0)]
            var timeout: Int32 = -1
            if let until = lingerUntil {
                let left = milliseconds(until: until)
                if left <= 0 { break loop }
                timeout = min(lingerQuiet, Int32(left))
            }
            let r = poll(&fds, 2, timeout)
            if r < 0 { if errno == EINTR { continue }; break }
            if r == 0 && lingerUntil != nil { break loop }  // quiet after the input ended
            if fds[0].revents != 0 {
                let n = read(fd, &buf, buf.count)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; break loop }
                writeAll(1, Array(buf[0..<n]))
            }
            if fds[1].revents != 0 {
                let n = read(0, &buf, buf.count)
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    stdinOpen = false
                    lingerUntil = deadline(after: lingerMax)
                    continue
                }
                var out: [UInt8] = []
                for c in buf[0..<n] {
                    if tildePending {
                        tildePending = false
                        if c == UInt8(ascii: ".") { writeAll(fd, out); break loop }
                        if c != UInt8(ascii: "~") { out.append(UInt8(ascii: "~")) }
                        out.append(c)
                        atLineStart = false
                        continue
                    }
                    if atLineStart && c == UInt8(ascii: "~") {
                        tildePending = true
                        continue
                    }
                    out.append(c)
                    atLineStart = c == 0x0d || c == 0x0a
                }
                writeAll(fd, out)
            }
        }
        if isTTY { tcsetattr(0, TCSAFLUSH, &saved) }
        close(fd)
        say("\r\n[EOT]")
    }

    static func deadline(after seconds: Double) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let ns = Int(now.tv_nsec) + Int(seconds * 1e9)
        return timespec(tv_sec: now.tv_sec + ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000)
    }

    static func milliseconds(until t: timespec) -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return (t.tv_sec - now.tv_sec) * 1000 + (t.tv_nsec - now.tv_nsec) / 1_000_000
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; return }
            off += n
        }
    }
}

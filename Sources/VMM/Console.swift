#if canImport(Glibc)
import Glibc
#endif

/// The terminal state to restore at process exit (set while stdin is in raw mode).
nonisolated(unsafe) private var savedTerminal: termios?
nonisolated(unsafe) private var restoreRegistered = false

private func restoreTerminal() {
    if var t = savedTerminal {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &t)
        savedTerminal = nil
    }
}

/// The serial console's host side: where COM1's output goes and where its input comes from.
///
/// - `.standardIO`: output to stdout. Input from stdin; when stdin is the foreground
///   terminal it is put in raw mode (restored at exit) and Ctrl-] (0x1d) stops the VM:
///   a foreground `vmm` has nothing to detach to, so detaching ends it (exit status 0).
/// - `.pty`: a new pseudo-terminal in raw mode; output is dropped while nobody reads it.
/// - `.fileDescriptor`, `.callback`, `.none`: output only.
///
/// Output is written with write(2) from the vCPU thread that emulates the UART (the device
/// lock is held), unbuffered, so the first byte reaches the host at once.
public final class Console: @unchecked Sendable {
    public static let detachByte: UInt8 = 0x1D

    private let outputFD: Int32
    private let callback: (@Sendable ([UInt8]) -> Void)?
    private let dropWhenBlocked: Bool
    private let inputFD: Int32
    private let ownsFD: Bool
    /// True when stdin is an interactive terminal in raw mode (Ctrl-] detaches).
    public let interactive: Bool
    /// The pty's slave path for `.pty`.
    public let path: String?

    private var wakeRead: Int32 = -1, wakeWrite: Int32 = -1
    private var thread: HostThread?

    public init(sink: ConsoleSink) throws {
        var callback: (@Sendable ([UInt8]) -> Void)? = nil
        var outputFD: Int32 = -1, inputFD: Int32 = -1
        var interactive = false, owns = false, drop = false
        var path: String? = nil
        switch sink {
        case .standardIO:
            outputFD = STDOUT_FILENO
            inputFD = STDIN_FILENO
            if isatty(STDIN_FILENO) == 1 && tcgetpgrp(STDIN_FILENO) == getpgrp() {
                var t = termios()
                if tcgetattr(STDIN_FILENO, &t) == 0 {
                    savedTerminal = t
                    if !restoreRegistered { restoreRegistered = true; atexit { restoreTerminal() } }
                    var raw = t
                    cfmakeraw(&raw)
                    raw.c_oflag |= tcflag_t(OPOST | ONLCR)  // keep "\n" -> "\r\n" for guests that print bare newlines
                    tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw)
                    interactive = true
                }
            }
        case .pty:
            // posix_openpt/grantpt/unlockpt/ptsname do not import into Swift: do what they
            // do on Linux with devpts (TIOCSPTLCK = _IOW('T', 0x31, int), TIOCGPTN = _IOR('T', 0x30, unsigned)).
            let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
            guard master >= 0 else {
                throw VMMError.console("cannot create a pseudo-terminal: \(errnoString(errno))")
            }
            var unlock: Int32 = 0
            var number: UInt32 = 0
            guard ioctl(master, 0x4004_5431, &unlock) == 0, ioctl(master, 0x8004_5430, &number) == 0 else {
                let err = errno
                Glibc.close(master)
                throw VMMError.console("cannot set up the pseudo-terminal: \(errnoString(err))")
            }
            let name = "/dev/pts/\(number)"
            var t = termios()
            tcgetattr(master, &t)
            cfmakeraw(&t)
            tcsetattr(master, TCSANOW, &t)
            _ = fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK)
            path = name
            outputFD = master; inputFD = master; owns = true; drop = true
        case let .fileDescriptor(fd):
            outputFD = fd
        case let .callback(cb):
            callback = cb
        case .none:
            break
        }
        self.outputFD = outputFD; self.inputFD = inputFD; self.callback = callback
        self.interactive = interactive; self.ownsFD = owns; self.path = path; self.dropWhenBlocked = drop
    }

    deinit {
        close()
        if ownsFD && outputFD >= 0 { Glibc.close(outputFD) }
    }

    /// Writes guest output to the host side.
    public func write(_ bytes: [UInt8]) {
        if let callback { callback(bytes); return }
        guard outputFD >= 0, !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { buf in
            var done = 0
            while done < buf.count {
                // SAFETY: writes from the array's storage, within its bounds.
                let n = Glibc.write(outputFD, buf.baseAddress! + done, buf.count - done)
                if n > 0 { done += n; continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EAGAIN && !dropWhenBlocked {
                    var p = pollfd(fd: outputFD, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&p, 1, 100)
                    continue
                }
                return  // EOF, error, or a pty nobody reads: drop the rest
            }
        }
    }

    public func write(_ byte: UInt8) { write([byte]) }

    /// Starts the input thread: bytes read from the host side go to `deliver` (call it with
    /// the device lock held); Ctrl-] on an interactive terminal calls `detach` instead.
    public func startInput(deliver: @escaping @Sendable ([UInt8]) -> Void,
                           detach: @escaping @Sendable () -> Void) throws {
        guard inputFD >= 0, thread == nil else { return }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw VMMError.console("cannot create a pipe: \(errnoString(errno))") }
        wakeRead = fds[0]; wakeWrite = fds[1]
        _ = fcntl(wakeRead, F_SETFD, FD_CLOEXEC); _ = fcntl(wakeWrite, F_SETFD, FD_CLOEXEC)
        let input = inputFD, wake = wakeRead, interactive = self.interactive
        thread = try HostThread(name: "console") {
            Console.inputLoop(fd: input, wake: wake, interactive: interactive, deliver: deliver, detach: detach)
        }
    }

    private static func inputLoop(fd: Int32, wake: Int32, interactive: Bool,
                                  deliver: @Sendable ([UInt8]) -> Void, detach: @Sendable () -> Void) {
        var buffer = [UInt8](repeating: 0, count: 256)
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        while true {
            fds[0].revents = 0; fds[1].revents = 0
            let r = poll(&fds, 2, -1)
            if r < 0 { if errno == EINTR { continue } else { return } }
            if fds[1].revents != 0 { return }
            if fds[0].revents & Int16(POLLIN) != 0 {
                // SAFETY: reads into the buffer's own storage, at most its size.
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n < 0 { if errno == EINTR || errno == EAGAIN { continue } else { return } }
                if n == 0 { return }  // EOF: no more input
                var bytes = Array(buffer[0..<n])
                if interactive, let i = bytes.firstIndex(of: detachByte) {
                    bytes = Array(bytes[..<i])
                    if !bytes.isEmpty { deliver(bytes) }
                    detach()
                    return
                }
                deliver(bytes)
            } else if fds[0].revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 {
                // A pty without a reader reports POLLHUP; wait for someone to open it.
                if fds[0].revents & Int16(POLLNVAL) != 0 { return }
                var p = pollfd(fd: wake, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 200) > 0 { return }
            }
        }
    }

    /// Stops the input thread and restores the terminal.
    public func close() {
        if wakeWrite >= 0 {
            var b: UInt8 = 1
            _ = Glibc.write(wakeWrite, &b, 1)
            thread?.join()
            thread = nil
            Glibc.close(wakeWrite); Glibc.close(wakeRead)
            wakeWrite = -1; wakeRead = -1
        }
        if interactive { restoreTerminal() }
    }
}

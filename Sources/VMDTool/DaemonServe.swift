#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import VMConfig
import VMDCore

// The control socket: listening, admitting connections, reading requests.
extension Daemon {
    func listen() throws {
        // The socket appears under its name only once it listens with its mode and owner.
        let owner = state.withLock { $0.config.socketOwner }.map { so in
            let r = resolvedOwner(so)
            return (uid: r.uid.map { uid_t($0) }, gid: r.gid.map { gid_t($0) })
        }
        listener = try UnixSocket.listen(path: options.socketPath, mode: 0o660, owner: owner)
        log.info("listening on \(options.socketPath)")
    }

    /// Accepts connections for ever: each admitted one (ConnectionGate: per user and in
    /// total) gets a thread; a refused one gets a reply saying why. A failing accept
    /// (EMFILE until a descriptor is closed) backs off up to 1 s instead of spinning.
    func serve() -> Never {
        var failures = 0
        while true {
            let fd: Int32
            do {
                fd = try UnixSocket.accept(listener)
                failures = 0
            } catch {
                failures += 1
                if failures == 1 { log.error("accept: \(error)") }
                usleep(UInt32(min(1_000_000, 10_000 << min(failures, 7))))
                continue
            }
            let ch = ControlChannel(fd: fd)
            guard let creds = try? ch.peerCredentials() else { continue }
            if let why = gate.admit(uid: creds.uid) {
                UnixSocket.setTimeouts(fd, receive: nil, send: 1)
                try? ch.send(ReplyFrame(.failure(ControlFailure(.failed, why))))
                log.debug("refused a connection from uid \(creds.uid) pid \(creds.pid): \(why)")
                continue
            }
            let t = Thread { [self] in
                self.connection(ch)
                self.gate.release(uid: creds.uid)
            }
            t.start()
        }
    }

    private func connection(_ ch: ControlChannel) {
        while true {
            let frame: RequestFrame
            let passed: [Int32]
            // A silent client (the first request included) is dropped after the idle timeout.
            UnixSocket.setTimeouts(ch.fd, receive: gate.limits.idleTimeout, send: gate.limits.idleTimeout)
            do {
                guard let (f, fds) = try ch.receive(RequestFrame.self) else { return }
                frame = f
                passed = fds
            } catch let e as ControlError {
                if case .versionMismatch = e {
                    try? ch.send(ReplyFrame(.failure(ControlFailure(.versionMismatch, e.description))))
                } else {
                    try? ch.send(ReplyFrame(.failure(ControlFailure(.invalidRequest, e.description))))
                }
                return
            } catch {
                return
            }
            // Credentials are checked on every request, not once per connection.
            guard let creds = try? ch.peerCredentials() else { for x in passed { close(x) }; return }
            // Descriptors a request carries (receive's stream) are the handler's to use
            // while it runs; they are closed here after it.
            let (reply, fds) = handle(frame.request, passing: passed, from: creds)
            for x in passed { close(x) }
            do { try ch.send(ReplyFrame(reply), fds: fds) } catch {}
            for x in fds { close(x) }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import VMConfig
import VMDCore

/// What a VM process answered a message.
enum ChildAnswer: Equatable {
    case ok
    case failed(String)
}

// One handler per control request.
extension Daemon {
    func handle(_ request: ControlRequest, passing fds: [Int32] = [], from c: PeerCredentials) -> (ControlReply, [Int32]) {
        log.debug("request \(request.commandName) from uid \(c.uid) pid \(c.pid)")
        if let refused = AccessRules.rootOnly(request, c) { return (.failure(refused), []) }
        switch request {
        case .status(let id): return handleStatus(id)
        case .start(let req): return startRequest(req, c)
        case .stop(let id, let force, let wait): return handleStop(id, force: force, wait: wait, c)
        case .console(let id): return handleConsole(id, c)
        case .pause(let id): return handlePause(id, pausing: true, c)
        case .unpause(let id): return handlePause(id, pausing: false, c)
        case .wait(let id): return handleWait(id, c)
        case .load(let path): return handleLoad(path, c)
        case .reload: return (reload(), [])
        case .reset(let scope): return handleReset(scope, c)
        case .log(let verbose): return handleLog(verbose, c)
        case .send(let id): return handleSend(id, c)
        case .receive(let name, let disks, let template): return handleReceive(name, disks: disks, template: template, stream: fds, c)
        }
    }

    func handleStatus(_ id: VMIdentifier?) -> (ControlReply, [Int32]) {
        state.withLock { s in
            guard let id else { return (.status(s.vms.map(status)), []) }
            guard let e = s.find(id) else { return Self.fail(.unknownVM, "vm \(id): no such vm") }
            return (.status([status(e)]), [])
        }
    }

    func handleStop(_ id: VMIdentifier?, force: Bool, wait: Bool, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        let chosen: Result<[VMEntry], ControlFailure> = state.withLock { s in
            guard let id else { return .success(s.vms.filter { $0.state != .stopped && mayControl($0, c) }) }
            return target(s, id, c).flatMap { e in
                e.state == .stopped ? .failure(ControlFailure(.notRunning, "vm \(e.definition.name): not running")) : .success([e])
            }
        }
        let targets: [VMEntry]
        switch chosen {
        case .failure(let f): return (.failure(f), [])
        case .success(let t): targets = t
        }
        for e in targets { stopVM(e, force: force) }
        if wait { state.wait { _ in targets.allSatisfy { $0.state == .stopped } ? true : nil } }
        if targets.count == 1 { return state.withLock { _ in (.vm(status(targets[0])), []) } }
        return (.ok(message: targets.isEmpty ? "no vm running" : nil), [])
    }

    func handleConsole(_ id: VMIdentifier, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        state.withLock { s in
            switch target(s, id, c) {
            case .failure(let f): return (.failure(f), [])
            case .success(let e):
                guard e.state != .stopped, e.ptyMaster >= 0 else {
                    return Self.fail(.notRunning, "vm \(e.definition.name): not running")
                }
                let dup = fcntl(e.ptyMaster, F_DUPFD_CLOEXEC, 0)
                guard dup >= 0 else { return Self.fail(.failed, "console: \(SystemError("dup"))") }
                return (.vm(status(e)), [dup])
            }
        }
    }

    func handlePause(_ id: VMIdentifier, pausing: Bool, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        let want: VMRunState = pausing ? .running : .paused
        let found: Result<(VMEntry, ControlChannel), ControlFailure> = state.withLock { s in
            target(s, id, c).flatMap { e in
                guard e.state == want, let ch = e.channel else {
                    let n = e.definition.name
                    return .failure(ControlFailure(.notRunning, pausing ? "vm \(n): not running" : "vm \(n): not paused"))
                }
                return .success((e, ch))
            }
        }
        guard case .success(let (e, ch)) = found else {
            if case .failure(let f) = found { return (.failure(f), []) }
            return Self.fail(.failed, "unreachable")
        }
        let answer = talk(e, ch, pausing ? .pause : .unpause)
        return state.withLock { _ in
            guard answer == .ok else {
                if case .failed(let m) = answer { return Self.fail(.failed, "vm \(e.definition.name): \(m)") }
                return Self.fail(.failed, "vm \(e.definition.name): failed")
            }
            if e.state == want { e.state = pausing ? .paused : .running }
            log.info("vm \(e.definition.name) \(pausing ? "paused" : "unpaused")")
            return (.vm(status(e)), [])
        }
    }

    func handleWait(_ id: VMIdentifier, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        let found = state.withLock { s in target(s, id, c) }
        switch found {
        case .failure(let f): return (.failure(f), [])
        case .success(let e):
            // (-v) Says when a client waits: the tests' event that the wait has begun.
            state.withLock { _ in log.debug("uid \(c.uid) waits for vm \(e.id) to stop") }
            return state.wait { _ in e.state == .stopped ? (.vm(status(e)), []) : nil }
        }
    }

    func handleLoad(_ path: String, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        do {
            let cfg = try parseConfig(path)
            let clash = state.withLock { s in
                cfg.vms.first { v in s.vms.contains { $0.definition.name == v.name && $0.state != .stopped } }
            }
            if let clash { return Self.fail(.alreadyRunning, "vm \(clash.name): already running") }
            startInBackground(apply(cfg, replace: false))
            return (.ok(message: nil), [])
        } catch {
            return Self.fail(.configError, error.description)
        }
    }

    func handleReset(_ scope: ResetScope, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        if scope == .vms || scope == .all {
            let running = state.withLock { s in s.vms.filter { $0.state != .stopped } }
            for e in running { stopVM(e, force: true) }
            state.wait { _ in running.allSatisfy { $0.state == .stopped } ? true : nil }
        }
        if scope == .all { return (reload(), []) }
        if scope == .switches { return resetSwitches() }
        return (.ok(message: nil), [])
    }

    func handleLog(_ verbose: Bool, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        state.withLock { _ in log.logLevel = verbose ? .debug : .info }
        log.info("log level \(verbose ? "verbose" : "brief")")
        return (.ok(message: nil), [])
    }

    /// `vmctl send`: only root or the VM's owner (`target`). The reply carries the read end
    /// of a pipe; the VM process gets the write end, writes its state stream and stops. The
    /// VM process's answer is awaited on a thread of its own (the client reads meanwhile).
    func handleSend(_ id: VMIdentifier, _ c: PeerCredentials) -> (ControlReply, [Int32]) {
        let found: Result<(VMEntry, ControlChannel), ControlFailure> = state.withLock { s in
            target(s, id, c).flatMap { e in
                guard e.state == .running || e.state == .paused, let ch = e.channel else {
                    return .failure(ControlFailure(.notRunning, "vm \(e.definition.name): not running"))
                }
                return .success((e, ch))
            }
        }
        let e: VMEntry, ch: ControlChannel
        switch found {
        case .failure(let f): return (.failure(f), [])
        case .success(let (entry, channel)): e = entry; ch = channel
        }
        var p: [Int32] = [0, 0]
        guard pipe(&p) == 0 else { return Self.fail(.failed, "send: \(SystemError("pipe"))") }
        for fd in p { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let writeEnd = p[1], name = e.definition.name, log = self.log
        let sender = Thread { [self] in
            let answer = talk(e, ch, .send, fds: [writeEnd])
            close(writeEnd)
            if case .failed(let m) = answer { log.error("vm \(name): send failed: \(m)") } else { log.info("vm \(name) sent") }
        }
        sender.start()
        return state.withLock { _ in (.vm(status(e)), [p[0]]) }
    }

    /// One message to a VM process and its answer (one at a time per VM).
    func talk(_ e: VMEntry, _ ch: ControlChannel, _ m: ParentMessage, fds: [Int32] = []) -> ChildAnswer {
        e.opLock.withLock {
            do {
                try ch.send(m, fds: fds)
                guard let (reply, fds) = try ch.receive(ChildMessage.self) else { return .failed("vm process went away") }
                for f in fds { close(f) }
                switch reply {
                case .ok: return .ok
                case .error(let s), .failed(let s): return .failed(s)
                case .started, .startedWithConsole: return .failed("unexpected reply")
                }
            } catch {
                return .failed("\(error)")
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import VMConfig
import VMDCore

// Stopping VMs, and noticing when their processes end.
extension Daemon {
    /// Reaps the VM process whenever and however it ends, and records why.
    func monitor(_ e: VMEntry, _ pid: pid_t) {
        let t = Thread { [self] in
            var st: Int32 = 0
            while waitpid(pid, &st, 0) < 0 {
                if errno != EINTR { st = 0; break }
            }
            var (why, code) = describeWaitStatus(st)
            let cgroup = state.withLock { _ in e.cgroup }
            if let cgroup, st & 0x7f == SIGKILL, let oom = VMCgroupTree.oomNote(cgroup) { why += ": " + oom }
            removeCgroup(cgroup)
            let wasStopping = state.withLock { _ in
                e.cgroup = nil
                let stopping = e.state == .stopping
                e.state = .stopped
                e.pid = nil
                if e.ptyMaster >= 0 { close(e.ptyMaster) }
                e.ptyMaster = -1
                e.ttyPath = nil
                e.channel = nil
                e.lastExit = e.lastExit ?? why
                e.running = nil
                return stopping
            }
            if code == 0 || wasStopping {
                log.info("vm \(e.id) (\(e.definition.name)) stopped: \(why)")
            } else {
                log.warning("vm \(e.id) (\(e.definition.name)) pid \(pid) died: \(why)")
            }
        }
        t.start()
    }

    /// Asks the VM to power off (the power button; SIGKILL if the VM process cannot be
    /// asked), or with `force` kills its process. Returns at once.
    func stopVM(_ e: VMEntry, force: Bool) {
        let found: (pid_t, ControlChannel?, Bool)? = state.withLock { _ in
            guard e.state != .stopped, let pid = e.pid else { return nil }
            let wasPaused = e.state == .paused
            e.state = .stopping
            return (pid, e.channel, wasPaused)
        }
        guard let (pid, ch, wasPaused) = found else { return }
        if force {
            kill(pid, SIGKILL)
            return
        }
        if let ch {
            if wasPaused { _ = talk(e, ch, .unpause) }
            if talk(e, ch, .shutdown) != .ok { kill(pid, SIGKILL) }
        } else {
            kill(pid, SIGTERM)
        }
    }

    /// SIGTERM: stop every VM (forcibly after a grace period) and leave.
    func shutdownAll() -> Never {
        let running = state.withLock { s in s.vms.filter { $0.state != .stopped } }
        for e in running { stopVM(e, force: false) }
        _ = state.wait(until: { _ in running.allSatisfy { $0.state == .stopped } ? true : nil },
                       deadline: Date().addingTimeInterval(10))
        let left = state.withLock { _ in running.compactMap { $0.state == .stopped ? nil : $0.pid } }
        for p in left { kill(p, SIGKILL) }
        _ = state.wait(until: { _ in running.allSatisfy { $0.state == .stopped } ? true : nil },
                       deadline: Date().addingTimeInterval(2))
        VMNetwork.removeOwnedLinks(socket: options.socketPath, log: log)
        unlink(options.socketPath)
        log.info("terminating")
        exit(0)
    }
}

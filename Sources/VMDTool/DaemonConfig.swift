#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Control
import VMConfig
import VMDCore

// vm.conf in vmd: parsing, taking a configuration in, starting its enabled VMs, reload.
extension Daemon {
    func parseConfig(_ path: String) throws(ConfigError) -> VMConfiguration {
        let parsed = try ConfigParser(macros: options.macros).parse(path: path)
        for w in parsed.warnings { log.warning("\(w)") }
        let owners = ConfigValidator.checkOwners(parsed.configuration, users: users)
        if !owners.isEmpty { throw ConfigError(owners) }
        return parsed.configuration
    }

    func resolvedOwner(_ o: OwnerSpec?) -> ResolvedOwner {
        guard let o, let r = try? users.resolve(o) else { return ResolvedOwner(uid: 0, gid: nil) }
        return ResolvedOwner(uid: r.uid ?? (o.user == nil ? nil : 0), gid: r.gid)
    }

    /// Takes in a configuration as ConfigApply plans it: new VMs are added, stopped ones
    /// updated or (when `replace` and no longer configured) removed; running VMs are left
    /// alone. Returns VMs to start.
    func apply(_ new: VMConfiguration, replace: Bool) -> [VMEntry] {
        let defs = ConfigValidator.resolvedVMs(new)
        let owners = defs.map { resolvedOwner($0.owner) }
        return state.withLock { s in
            if replace {
                s.config = new
            } else {
                s.config.vms += new.vms
                s.config.switches += new.switches
            }
            // The rules are VMDCore/ConfigApply.swift's; here they are carried out.
            let plan = ConfigApply.plan(
                current: s.vms.map { ConfigApply.Current(name: $0.definition.name, stopped: $0.state == .stopped, fromConfig: $0.fromConfig) },
                new: defs.map { ($0.name, $0.enabled) }, replace: replace)
            for ((d, owner), step) in zip(zip(defs, owners), plan.steps) {
                switch step {
                case .add:
                    _ = s.add(d, fromConfig: true, owner: owner)
                case .update(let take):
                    guard let e = s.vms.first(where: { $0.definition.name == d.name }) else { continue }
                    if take {
                        e.definition = d
                        e.owner = owner
                    }
                    e.fromConfig = true
                }
            }
            let removed = Set(plan.remove)
            s.vms.removeAll { removed.contains($0.definition.name) }
            return plan.start.compactMap { name in s.vms.first { $0.definition.name == name } }
        }
    }

    /// Starts VMs in the background, as StaggeredStartPlan says.
    func startInBackground(_ entries: [VMEntry]) {
        guard !entries.isEmpty else { return }
        let delays = StaggeredStartPlan.delays(count: entries.count, state.withLock { $0.config.staggeredStart })
        let t = Thread { [self] in
            for (e, delay) in zip(entries, delays) {
                if delay > 0 { sleep(UInt32(delay)) }
                var req = StartRequest(target: .id(e.id))
                req.attachConsole = false
                if case .failure(let f) = startVM(e, req).0 {
                    log.error("\(f.message)")
                }
            }
        }
        t.start()
    }

    func loadInitialConfig() throws(ConfigError) {
        let c: VMConfiguration
        if access(options.configPath, F_OK) != 0 {
            log.info("\(options.configPath) not found: starting with no VMs")
            c = VMConfiguration()
        } else {
            c = try parseConfig(options.configPath)
        }
        startInBackground(apply(c, replace: true))
    }

    func reload() -> ControlReply {
        do {
            let c = try parseConfig(options.configPath)
            startInBackground(apply(c, replace: true))
            log.info("configuration reloaded from \(options.configPath)")
            return .ok(message: nil)
        } catch {
            log.error("reload failed, keeping the running configuration: \(error)")
            return .failure(ControlFailure(.configError, error.description))
        }
    }
}

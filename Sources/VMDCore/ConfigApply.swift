/// What taking in a configuration does to vmd's VMs (start-up, `vmctl reload`, SIGHUP,
/// `vmctl load`), without processes: a VM already known by name is updated while stopped
/// and left alone while running; a new name is added; enabled VMs that are stopped are
/// started, in the file's order (staggered by StaggeredStartPlan); with `replace` (not
/// `load`), stopped VMs that came from the configuration and are no longer in it go.
/// Running VMs and VMs made with `vmctl start` outside the configuration stay.
public enum ConfigApply {
    /// One VM vmd knows now.
    public struct Current: Sendable, Equatable {
        public var name: String
        public var stopped: Bool
        public var fromConfig: Bool
        public init(name: String, stopped: Bool, fromConfig: Bool) {
            self.name = name
            self.stopped = stopped
            self.fromConfig = fromConfig
        }
    }

    /// What to do with the configuration's VM i (`steps[i]`).
    public enum Step: Sendable, Equatable {
        /// The known VM of that name: it is now from the configuration; when stopped it
        /// takes the new definition and owner (`takeDefinition`).
        case update(takeDefinition: Bool)
        /// A new entry.
        case add
    }

    public struct Plan: Sendable, Equatable {
        public var steps: [Step]
        /// Names to start, in order.
        public var start: [String]
        /// Names of entries to remove.
        public var remove: [String]
        public init(steps: [Step], start: [String], remove: [String]) {
            self.steps = steps
            self.start = start
            self.remove = remove
        }
    }

    /// The plan for configuration VMs `new` (name, enabled) given the VMs vmd knows.
    public static func plan(current: [Current], new: [(name: String, enabled: Bool)], replace: Bool) -> Plan {
        var known = Dictionary(current.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var plan = Plan(steps: [], start: [], remove: [])
        var seen = Set<String>()
        for d in new {
            seen.insert(d.name)
            if let e = known[d.name] {
                plan.steps.append(.update(takeDefinition: e.stopped))
                known[d.name]?.fromConfig = true
                if d.enabled && e.stopped { plan.start.append(d.name) }
            } else {
                plan.steps.append(.add)
                known[d.name] = Current(name: d.name, stopped: true, fromConfig: true)
                if d.enabled { plan.start.append(d.name) }
            }
        }
        if replace {
            plan.remove = current.filter { !seen.contains($0.name) && $0.stopped && $0.fromConfig }.map(\.name)
        }
        return plan
    }
}

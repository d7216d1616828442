import Testing
@testable import VMDCore

/// What start-up, reload and load do to vmd's VMs (VMDCore/ConfigApply.swift), in-process.
@Suite struct ConfigApplyTests {
    typealias C = ConfigApply.Current

    @Test func theFirstConfigurationAddsEveryVMAndStartsTheEnabledOnesInOrder() {
        let p = ConfigApply.plan(current: [], new: [("a", true), ("b", false), ("c", true)], replace: true)
        #expect(p == ConfigApply.Plan(steps: [.add, .add, .add], start: ["a", "c"], remove: []))
    }

    @Test func reloadLeavesRunningVMsAloneUpdatesStoppedOnesAndStartsTheEnabled() {
        let now = [C(name: "run", stopped: false, fromConfig: true), C(name: "idle", stopped: true, fromConfig: true),
                   C(name: "off", stopped: true, fromConfig: true)]
        let p = ConfigApply.plan(current: now, new: [("run", true), ("idle", true), ("off", false), ("new", true)], replace: true)
        #expect(p.steps == [.update(takeDefinition: false), .update(takeDefinition: true), .update(takeDefinition: true), .add])
        // The running VM keeps its PID (not started again); the stopped enabled one starts.
        #expect(p.start == ["idle", "new"])
        #expect(p.remove.isEmpty)
    }

    @Test func reloadRemovesOnlyStoppedConfiguredVMsNoLongerInTheFile() {
        let now = [C(name: "gone", stopped: true, fromConfig: true), C(name: "stillRunning", stopped: false, fromConfig: true),
                   C(name: "cmdline", stopped: true, fromConfig: false), C(name: "kept", stopped: true, fromConfig: true)]
        let p = ConfigApply.plan(current: now, new: [("kept", false)], replace: true)
        #expect(p.remove == ["gone"])
        #expect(p.start.isEmpty)
        // `vmctl load` adds to the configuration: nothing is removed.
        #expect(ConfigApply.plan(current: now, new: [("kept", false)], replace: false).remove.isEmpty)
    }

    @Test func aCommandLineVMNamedInTheFileBecomesAConfiguredOne() {
        // Stopped, it takes the file's definition; later reloads may remove it.
        let now = [C(name: "x", stopped: true, fromConfig: false)]
        let p = ConfigApply.plan(current: now, new: [("x", false)], replace: true)
        #expect(p.steps == [.update(takeDefinition: true)])
        let later = ConfigApply.plan(current: [C(name: "x", stopped: true, fromConfig: true)], new: [], replace: true)
        #expect(later.remove == ["x"])
    }
}

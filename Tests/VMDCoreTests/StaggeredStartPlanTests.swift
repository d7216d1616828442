import Testing
import VMConfig
@testable import VMDCore

@Suite struct StaggeredStartPlanTests {
    @Test func groupsOfParallelVMsDelaySecondsApart() {
        #expect(StaggeredStartPlan.delays(count: 5, StaggeredStart(parallel: 2, delay: 30)) == [0, 0, 30, 0, 30])
        #expect(StaggeredStartPlan.delays(count: 3, StaggeredStart(parallel: 1, delay: 1)) == [0, 1, 1])
        #expect(StaggeredStartPlan.delays(count: 3, nil) == [0, 0, 0])
        // Nonsense values never mean a negative sleep or a division by zero.
        #expect(StaggeredStartPlan.delays(count: 2, StaggeredStart(parallel: 0, delay: -5)) == [0, 0])
    }
}

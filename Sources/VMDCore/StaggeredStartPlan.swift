import VMConfig

/// When vmd starts the enabled VMs of a configuration (`staggered start parallel P delay D`,
/// as OpenBSD's vmd): in groups of P, D seconds apart; without the setting, all at once.
public enum StaggeredStartPlan {
    /// Seconds to wait before starting each of `count` VMs, in order.
    public static func delays(count: Int, _ stagger: StaggeredStart?) -> [Int] {
        guard let s = stagger else { return Array(repeating: 0, count: count) }
        let p = max(s.parallel, 1)
        return (0..<count).map { i in i > 0 && i % p == 0 ? max(s.delay, 0) : 0 }
    }
}

import Testing
@testable import VMDCore

/// The VM uid range (VMDCore/VMUIDRange.swift): VM id N → base + N, and no host user,
/// group or subordinate id range inside it.
@Suite struct VMUIDRangeTests {
    let range = VMUIDRange(base: 1 << 30)

    @Test func vmIDsMapToBasePlusIDInsideTheRangeOnly() throws {
        #expect(range.uid(forVM: 1) == UInt32(1 << 30) + 1)
        #expect(range.uid(forVM: 65535) == UInt32(1 << 30) + 65535)
        #expect(range.uid(forVM: 0) == nil)
        #expect(range.uid(forVM: 65536) == nil)
        #expect(range.uid(forVM: -1) == nil)
        #expect(try range.bounds().get() == ((1 << 30) + 1)...((1 << 30) + 65535))
    }

    @Test func rangesThatWrapOrReachMinusOneAreRefused() throws {
        #expect(throws: VMUIDRange.RangeProblem.self) { try VMUIDRange(base: UInt32.max - 10, count: 100).bounds().get() }
        // 2^32-1 is (uid_t)-1.
        #expect(throws: VMUIDRange.RangeProblem.self) { try VMUIDRange(base: UInt32.max - 100, count: 101).bounds().get() }
        #expect(try VMUIDRange(base: UInt32.max - 100, count: 100).bounds().get().upperBound == UInt32.max - 1)
        #expect(throws: VMUIDRange.RangeProblem.self) { try VMUIDRange(base: 1000, count: 1).bounds().get() }
        #expect(throws: VMUIDRange.RangeProblem.self) { try VMUIDRange(base: 0).bounds().get() }
    }

    @Test func hostUsersGroupsAndSubordinateRangesInsideTheRangeAreNamed() {
        let r = VMUIDRange(base: 100_000, count: 1000)  // ids 100001...100999
        let found = r.conflicts(
            users: [("root", 0), ("edge", 100_000), ("joe", 100_500), ("last", 100_999), ("after", 101_000)],
            groups: [("g", 100_001), ("h", 99_999)],
            subordinate: [SubordinateRange(file: "/etc/subuid", owner: "joe", start: 100_000, count: 1),  // only base itself
                          SubordinateRange(file: "/etc/subgid", owner: "ann", start: 100_999, count: 65536),
                          SubordinateRange(file: "/etc/subuid", owner: "bob", start: 200_000, count: 65536)])
        #expect(found == ["user joe has uid 100500", "user last has uid 100999", "group g has gid 100001",
                          "/etc/subgid gives ann ids 100999...166534"])
        #expect(range.conflicts(users: [("nobody", 65534)], groups: [("nogroup", 65534)],
                                subordinate: [SubordinateRange(file: "/etc/subuid", owner: "u", start: 100_000, count: 65536)]).isEmpty)
    }

    @Test func subordinateFilesParseAndSkipJunk() {
        let text = "joe:100000:65536\n# comment\nbad:x:1\nann:165536:65536\n\n"
        #expect(SubordinateRange.parse(text, file: "/etc/subuid") == [
            SubordinateRange(file: "/etc/subuid", owner: "joe", start: 100_000, count: 65536),
            SubordinateRange(file: "/etc/subuid", owner: "ann", start: 165_536, count: 65536)])
    }
}

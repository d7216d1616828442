import Boot
import Foundation
import GuestMemory
import KVM
import Testing
import VMM
@testable import X86Emulator

/// What a guest learns about its CPUs from the three places it may look (the ACPI MADT,
/// the MP table, CPUID on each CPU) agrees, on both backends, from 1 vCPU to the maximum:
/// the same APIC IDs, every one enabled, the BSP first, and CPUID's topology (leaf 1's
/// initial APIC ID and addressable-ID count, leaf 0xB's core count and x2APIC ID) naming the
/// CPU it runs on inside one package of that many cores.
@Suite struct TopologyAgreementTests {
    static let counts = [1, 2, 3, 8, 16, MachineConfig.maximumVCPUs]

    /// The MADT's Processor Local APIC entries: (APIC ID, enabled).
    static func madtProcessors(_ table: [UInt8]) -> [(id: UInt8, enabled: Bool)] {
        var out: [(UInt8, Bool)] = []
        var i = 44   // header 36 + local APIC address 4 + flags 4
        let length = Int(table[4]) | Int(table[5]) << 8 | Int(table[6]) << 16 | Int(table[7]) << 24
        while i + 2 <= min(length, table.count) {
            let type = table[i], len = Int(table[i + 1])
            guard len >= 2, i + len <= table.count else { break }
            if type == 0 { out.append((table[i + 3], table[i + 4] & 1 != 0)) }
            i += len
        }
        return out
    }

    /// The MP configuration table's processor entries: (APIC ID, enabled, bootstrap).
    static func mpProcessors(_ table: [UInt8]) -> [(id: UInt8, enabled: Bool, bsp: Bool)] {
        var out: [(UInt8, Bool, Bool)] = []
        let count = Int(table[34]) | Int(table[35]) << 8
        var i = 44
        for _ in 0..<count where i < table.count {
            switch table[i] {
            case 0: out.append((table[i + 1], table[i + 3] & 1 != 0, table[i + 3] & 2 != 0)); i += 20
            default: i += 8
            }
        }
        return out
    }

    static func tables(_ n: Int) -> (madt: [(id: UInt8, enabled: Bool)], mp: [(id: UInt8, enabled: Bool, bsp: Bool)]) {
        let routes = [PCIRoutingEntry(slot: 1, pin: 1, gsi: 16)]
        return (madtProcessors(ACPITables.madt(vcpus: n, options: FirmwareOptions(), pciRoutes: routes)),
                mpProcessors(MPTable.configurationTable(vcpus: n, pciRoutes: routes, options: FirmwareOptions())))
    }

    /// The topology one CPU's CPUID describes.
    struct Seen: Equatable {
        var initialAPICID: UInt32, addressableIDs: UInt32, htt: Bool
        var x2apicID: UInt32?, coresInPackage: UInt32?, coreShift: UInt32?
    }

    static func expected(apicID: UInt32, n: Int) -> Seen {
        let bits = CPUIDTable.coreIDBits(cpus: n)
        return Seen(initialAPICID: apicID, addressableIDs: 1 << bits, htt: n > 1,
                    x2apicID: apicID, coresInPackage: UInt32(n), coreShift: bits)
    }

    @Test(arguments: counts)
    func theMADTAndTheMPTableListTheSameCPUs(n: Int) {
        let (madt, mp) = Self.tables(n)
        #expect(madt.map(\.id) == (0..<n).map { UInt8($0) })
        #expect(madt.allSatisfy { $0.enabled })
        #expect(mp.map(\.id) == madt.map(\.id))
        #expect(mp.allSatisfy { $0.enabled })
        #expect(mp.filter { $0.bsp }.map { $0.id } == [0])
        // An APIC ID must leave room for the broadcast ID 0xFF.
        #expect(madt.allSatisfy { $0.id < 0xFF })
    }

    /// The software CPU: every vCPU of an n-vCPU machine runs CPUID itself.
    @Test(arguments: counts)
    func theSoftwareCPUsCPUIDAgreesWithTheTables(n: Int) throws {
        let vm = EmulatorVirtualMachine(memory: try GuestMemory(size: 2 << 20))
        let vcpus = try (0..<n).map { try vm.createEmulatorVCPU(index: $0, startState: $0 == 0 ? .runnable : .waitingForSIPI) }
        let madt = Self.tables(n).madt
        for (i, v) in vcpus.enumerated() {
            func cpuid(_ leaf: UInt32, _ sub: UInt32 = 0) -> (a: UInt32, b: UInt32, c: UInt32, d: UInt32) {
                v.cpu.r[0] = UInt64(leaf); v.cpu.r[1] = UInt64(sub)
                v.cpu.cpuid()
                return (UInt32(v.cpu.r[0]), UInt32(v.cpu.r[3]), UInt32(v.cpu.r[1]), UInt32(v.cpu.r[2]))
            }
            #expect(cpuid(0).a >= 0xB)
            let l1 = cpuid(1), smt = cpuid(0xB, 0), core = cpuid(0xB, 1), end = cpuid(0xB, 2)
            let seen = Seen(initialAPICID: l1.b >> 24, addressableIDs: (l1.b >> 16) & 0xFF, htt: l1.d & (1 << 28) != 0,
                            x2apicID: core.d, coresInPackage: core.b & 0xFFFF, coreShift: core.a & 0x1F)
            #expect(seen == Self.expected(apicID: UInt32(madt[i].id), n: n))
            #expect(v.cpu.apic.id == UInt32(madt[i].id), "the LAPIC's ID register is the MADT's")
            #expect(smt.b == 1 && (smt.c >> 8) & 0xFF == 1 && smt.d == UInt32(madt[i].id))
            #expect((core.c >> 8) & 0xFF == 2)
            #expect(end.b == 0 && (end.c >> 8) & 0xFF == 0, "leaf 0xB ends after the core level")
        }
    }

    /// The KVM backend's CPUID policy over a host's supported leaves: this host's when
    /// /dev/kvm opens, else a typical Intel list.
    static let typicalIntel: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 0xD, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
        CPUIDEntry(function: 1, eax: 0x806F8, ebx: 0x0000_0800, ecx: 0x8020_2001, edx: 0x0789_FBFF),
        CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 7),
    ]

    static func kvmSeen(_ entries: [CPUIDEntry]) -> Seen {
        let l1 = entries.first { $0.function == 1 }!
        let core = entries.first { $0.function == 0xB && $0.index == 1 }
        return Seen(initialAPICID: l1.ebx >> 24, addressableIDs: (l1.ebx >> 16) & 0xFF, htt: l1.edx & (1 << 28) != 0,
                    x2apicID: core?.edx, coresInPackage: core.map { $0.ebx & 0xFFFF }, coreShift: core.map { $0.eax & 0x1F })
    }

    @Test(arguments: counts)
    func theKVMPolicysCPUIDAgreesWithTheTables(n: Int) {
        let madt = Self.tables(n).madt
        let policy = CPUIDPolicy(vcpuCount: n)
        for i in 0..<n {
            #expect(Self.kvmSeen(policy.entries(forVCPU: i, supported: Self.typicalIntel))
                    == Self.expected(apicID: UInt32(madt[i].id), n: n))
        }
    }

    @Test(.enabled(if: (try? KVMSystem()) != nil, "needs /dev/kvm"), arguments: [8, MachineConfig.maximumVCPUs])
    func theKVMPolicyOnThisHostsLeavesAgrees(n: Int) throws {
        let supported = try KVMSystem().supportedCPUID()
        let hasLeafB = (supported.first { $0.function == 0 }?.eax ?? 0) >= 0xB
        let madt = Self.tables(n).madt
        let policy = CPUIDPolicy(vcpuCount: n)
        for i in 0..<n {
            var want = Self.expected(apicID: UInt32(madt[i].id), n: n)
            if !hasLeafB { want.x2apicID = nil; want.coresInPackage = nil; want.coreShift = nil }
            #expect(Self.kvmSeen(policy.entries(forVCPU: i, supported: supported)) == want)
        }
    }
}

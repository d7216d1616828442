import CKVM

/// One CPUID leaf/subleaf as KVM sees it (`struct kvm_cpuid_entry2` without padding).
public struct CPUIDEntry: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var function: UInt32
    public var index: UInt32
    /// Bit 0 (`significantIndex`): the entry applies only to subleaf `index`.
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public static let significantIndex: UInt32 = CKVM_CPUID_FLAG_SIGNIFCANT_INDEX

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }

    init(_ e: kvm_cpuid_entry2) {
        self.init(function: e.function, index: e.index, flags: e.flags,
                  eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }

    var kvm: kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function; e.index = index; e.flags = flags
        e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }

    public var description: String {
        func h(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
        return "CPUID(\(h(function)),\(index)) eax=\(h(eax)) ebx=\(h(ebx)) ecx=\(h(ecx)) edx=\(h(edx))"
    }
}

/// Turns KVM_GET_SUPPORTED_CPUID into the CPUID one vCPU of our machine sees.
///
/// - Topology: every vCPU is one core of a single package, one thread per core, APIC ID =
///   vCPU index. Leaves 1, 4, 0xB, 0x1F, 0x8000_0008 and 0x8000_001E say so.
/// - Hypervisor leaves: our own signature at 0x4000_0000 (`signature`, 12 bytes); KVM's
///   paravirtual leaves (kvmclock, PV EOI, ...) move to 0x4000_0100, where Linux finds them
///   by scanning for "KVMKVMKVM" in steps of 0x100, as it does behind Hyper-V's leaves.
/// - Bits that are per-vCPU state (OSXSAVE, OSPKE) are left to KVM.
///
/// Pure: unit-tested without /dev/kvm.
public struct CPUIDPolicy: Sendable, Equatable {
    /// The 12-byte hypervisor signature at leaf 0x4000_0000 (EBX, ECX, EDX).
    public static let signature = "SwiftVMM-KVM"
    public static let hypervisorBase: UInt32 = 0x4000_0000
    public static let kvmParavirtBase: UInt32 = 0x4000_0100

    public var vcpuCount: Int
    /// Expose KVM's paravirtual features (kvmclock, ...) at 0x4000_0100.
    public var exposeKVMParavirt: Bool

    public init(vcpuCount: Int, exposeKVMParavirt: Bool = true) {
        self.vcpuCount = max(1, vcpuCount)
        self.exposeKVMParavirt = exposeKVMParavirt
    }

    /// Bits needed to number `vcpuCount` cores (0 for one core).
    public var coreIDBits: UInt32 {
        var bits: UInt32 = 0
        while (1 << bits) < vcpuCount { bits += 1 }
        return bits
    }

    public static var signatureRegisters: (ebx: UInt32, ecx: UInt32, edx: UInt32) {
        let b = Array(signature.utf8) + [UInt8](repeating: 0, count: 12)
        func word(_ i: Int) -> UInt32 {
            UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
        }
        return (word(0), word(4), word(8))
    }

    public func entries(forVCPU vcpuIndex: Int, supported: [CPUIDEntry]) -> [CPUIDEntry] {
        let apicID = UInt32(truncatingIfNeeded: vcpuIndex)
        let count = UInt32(truncatingIfNeeded: vcpuCount)
        let bits = coreIDBits
        let leaf0 = supported.first { $0.function == 0 }
        let maxBasic = leaf0?.eax ?? 0
        let isAMD = leaf0.map { $0.ebx == 0x6874_7541 && $0.edx == 0x6974_6E65 && $0.ecx == 0x444D_4163 } ?? false

        var out: [CPUIDEntry] = []
        var kvmLeaves: [CPUIDEntry] = []
        for var e in supported {
            switch e.function {
            case 1:
                // EBX: [31:24] initial APIC ID, [23:16] addressable logical IDs, [15:8] CLFLUSH.
                let clflush = (e.ebx >> 8) & 0xFF
                e.ebx = apicID << 24 | ((1 << bits) & 0xFF) << 16 | (clflush == 0 ? 8 : clflush) << 8
                if count > 1 { e.edx |= 1 << 28 } else { e.edx &= ~(1 << 28) }  // HTT
                e.ecx |= 1 << 31  // running under a hypervisor
                out.append(e)
            case 4:
                // Deterministic cache parameters: cores per package, sharing per level.
                let level = (e.eax >> 5) & 7
                var eax = e.eax & 0x3FFF
                eax |= (((1 << bits) - 1) & 0x3F) << 26
                if level >= 3 { eax |= (((1 << bits) - 1) & 0xFFF) << 14 }
                e.eax = eax
                out.append(e)
            case 0xB, 0x1F:
                continue  // rebuilt below
            case 0x8000_0008:
                if isAMD { e.ecx = (e.ecx & ~0xF0FF) | (bits & 0xF) << 12 | ((count - 1) & 0xFF) }
                out.append(e)
            case 0x8000_001E:
                if isAMD {
                    e.eax = apicID
                    e.ebx = apicID & 0xFF  // compute unit id, one thread per unit
                    e.ecx = 0
                }
                out.append(e)
            case 0x4000_0000...0x4000_FFFF:
                if e.function < 0x4000_0100 { kvmLeaves.append(e) }
            default:
                out.append(e)
            }
        }
        if maxBasic >= 0xB {
            out += topologyLeaves(0xB, apicID: apicID, count: count, bits: bits)
        }
        if maxBasic >= 0x1F, supported.contains(where: { $0.function == 0x1F }) {
            out += topologyLeaves(0x1F, apicID: apicID, count: count, bits: bits)
        }
        let sig = Self.signatureRegisters
        let kvmRelocated: [CPUIDEntry] = exposeKVMParavirt ? kvmLeaves.map { leaf in
            var e = leaf
            e.function = leaf.function - Self.hypervisorBase + Self.kvmParavirtBase
            if leaf.function == Self.hypervisorBase {
                // EAX: the highest leaf of this range.
                let top = kvmLeaves.map(\.function).max() ?? Self.hypervisorBase
                e.eax = top - Self.hypervisorBase + Self.kvmParavirtBase
            }
            return e
        } : []
        out.append(CPUIDEntry(function: Self.hypervisorBase, eax: Self.hypervisorBase,
                              ebx: sig.ebx, ecx: sig.ecx, edx: sig.edx))
        out += kvmRelocated
        return out
    }

    private func topologyLeaves(_ leaf: UInt32, apicID: UInt32, count: UInt32, bits: UInt32) -> [CPUIDEntry] {
        let f = CPUIDEntry.significantIndex
        return [
            // SMT level: one thread per core.
            CPUIDEntry(function: leaf, index: 0, flags: f, eax: 0, ebx: 1, ecx: 1 << 8 | 0, edx: apicID),
            // Core level: `count` cores in the package.
            CPUIDEntry(function: leaf, index: 1, flags: f, eax: bits, ebx: count & 0xFFFF, ecx: 2 << 8 | 1, edx: apicID),
            // End of the list.
            CPUIDEntry(function: leaf, index: 2, flags: f, eax: 0, ebx: 0, ecx: 2, edx: apicID),
        ]
    }
}

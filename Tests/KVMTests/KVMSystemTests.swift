import Testing
import GuestMemory
import Hypervisor
@testable import KVM

@Suite("KVM system and errors")
struct KVMSystemTests {
    @Test("a missing device is reported in one clear line")
    func missingDevice() {
        #expect(throws: KVMError.self) { try KVMSystem(path: "/nonexistent/kvm") }
        do {
            _ = try KVMSystem(path: "/nonexistent/kvm")
        } catch {
            #expect("\(error)".hasPrefix("KVM is not available: /nonexistent/kvm does not exist"))
            #expect(!"\(error)".contains("\n"))
        }
    }

    @Test("a file that is not a KVM device is refused")
    func notAKVMDevice() {
        do {
            _ = try KVMSystem(path: "/dev/null")
            Issue.record("/dev/null was accepted as a KVM device")
        } catch {
            #expect("\(error)" == "KVM is not available: /dev/null is not a KVM device")
        }
    }

    @Test("error messages name the problem")
    func errorMessages() {
        #expect("\(KVMError.notAvailable(path: "/dev/kvm", reason: "exists but permission was denied (add the user to the kvm group)"))"
            == "KVM is not available: /dev/kvm exists but permission was denied (add the user to the kvm group)")
        #expect("\(KVMError.missingCapability("IRQFD"))" == "KVM is missing the IRQFD capability, which this VMM needs")
        #expect("\(KVMError.ioctlFailed("KVM_RUN", errno: 22))" == "KVM_RUN failed: Invalid argument")
        #expect("\(KVMError.unsupportedAPIVersion(11))".contains("version 11"))
    }

    @Test("API version, mmap size and required capabilities", .enabled(if: kvmUsable))
    func systemFacts() throws {
        let kvm = try KVMSystem()
        #expect(kvm.apiVersion == 12)
        #expect(kvm.vcpuMmapSize >= 4096)
        for cap in KVMCapability.required { #expect(kvm.has(cap), "\(cap)") }
        #expect(kvm.checkExtension(.memorySlots) >= 32)
        #expect(kvm.maxVCPUs >= 1)
        let cpuid = try kvm.supportedCPUID()
        #expect(cpuid.contains { $0.function == 0 })
        #expect(cpuid.contains { $0.function == 1 })
        #expect(try !kvm.msrIndexList().isEmpty)
    }

    @Test("bad vCPU requests are refused with a message", .enabled(if: kvmUsable))
    func badVCPUs() throws {
        let m = try TestMachine(configuration: .init(vcpuCount: 2))
        do { _ = try m.vm.makeVCPU(index: 2); Issue.record("index 2 accepted") } catch {
            #expect("\(error)" == "vCPU index 2 is out of range: this VM was configured with 2 vCPU(s)")
        }
        _ = try m.vm.makeVCPU(index: 0)
        do { _ = try m.vm.makeVCPU(index: 0); Issue.record("duplicate accepted") } catch {
            #expect("\(error)" == "vCPU 0 was already created")
        }
        let memory = try GuestMemory(size: 1 << 16)
        do {
            _ = try KVMSystem().createVirtualMachine(memory: memory, configuration: .init(vcpuCount: 0))
            Issue.record("0 vCPUs accepted")
        } catch { #expect("\(error)".contains("between 1 and")) }
        do {
            _ = try KVMSystem().createVirtualMachine(memory: memory, configuration: .init(inKernelIRQChip: false, inKernelPIT: true))
            Issue.record("PIT without irqchip accepted")
        } catch { #expect("\(error)" == "the in-kernel PIT needs the in-kernel irqchip") }
    }

    @Test("bad ioeventfd and MSI route arguments are refused", .enabled(if: kvmUsable))
    func badEventArguments() throws {
        let m = try TestMachine()
        let efd = try EventFD()
        #expect(throws: KVMError.invalidArgument("an ioeventfd length must be 0, 1, 2, 4 or 8 bytes, not 3")) {
            try m.vm.registerIOEventFD(efd, space: .port, address: 0x10, length: 3)
        }
        #expect(throws: KVMError.invalidArgument("GSI 99 is not an allocated MSI route")) {
            try m.vm.releaseMSIRoute(gsi: 99)
        }
        #expect(throws: KVMError.self) {
            try m.vm.addMemorySlot(guestBase: 0x1234, size: 4096, host: UnsafeMutableRawPointer(bitPattern: 0x1000)!,
                                   readOnly: false, owner: m.memory)
        }
    }
}

@Suite("CPUID policy")
struct CPUIDPolicyTests {
    let supported: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 0xD, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),  // GenuineIntel
        CPUIDEntry(function: 1, eax: 0x806F8, ebx: 0x0000_0800, ecx: 0x8020_2001, edx: 0x0789_FBFF),
        CPUIDEntry(function: 4, index: 0, flags: 1, eax: 0x121, ebx: 0, ecx: 0, edx: 0),
        CPUIDEntry(function: 4, index: 3, flags: 1, eax: 0x163, ebx: 0, ecx: 0, edx: 0),
        CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 7),
        CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
        CPUIDEntry(function: 0x4000_0001, eax: 0x0100_7AFB),
    ]

    @Test("APIC IDs and topology follow the vCPU index")
    func topology() {
        let policy = CPUIDPolicy(vcpuCount: 3)
        #expect(policy.coreIDBits == 2)
        for i in 0..<3 {
            let e = policy.entries(forVCPU: i, supported: supported)
            let leaf1 = e.first { $0.function == 1 }!
            #expect(leaf1.ebx >> 24 == UInt32(i))
            #expect((leaf1.ebx >> 16) & 0xFF == 4)
            #expect(leaf1.edx & (1 << 28) != 0)
            #expect(leaf1.ecx & (1 << 31) != 0)
            let topo = e.filter { $0.function == 0xB }
            #expect(topo.count == 3)
            #expect(topo.allSatisfy { $0.edx == UInt32(i) })
            #expect(topo[1].ebx == 3 && topo[1].eax == 2 && topo[1].ecx == 0x201)
            let l3 = e.first { $0.function == 4 && $0.index == 3 }!
            #expect(l3.eax >> 26 == 3)
            #expect((l3.eax >> 14) & 0xFFF == 3)
        }
        let single = CPUIDPolicy(vcpuCount: 1).entries(forVCPU: 0, supported: supported)
        #expect(single.first { $0.function == 1 }!.edx & (1 << 28) == 0)
    }

    @Test("our signature at 0x40000000, KVM's leaves at 0x40000100")
    func hypervisorLeaves() {
        let e = CPUIDPolicy(vcpuCount: 1).entries(forVCPU: 0, supported: supported)
        let sig = e.first { $0.function == 0x4000_0000 }!
        var bytes: [UInt8] = []
        for r in [sig.ebx, sig.ecx, sig.edx] { for i in 0..<4 { bytes.append(UInt8((r >> (8 * i)) & 0xFF)) } }
        #expect(String(decoding: bytes, as: UTF8.self) == "SwiftVMM-KVM")
        let kvm = e.first { $0.function == 0x4000_0100 }!
        #expect(kvm.ebx == 0x4B4D_564B && kvm.eax == 0x4000_0101)
        #expect(e.first { $0.function == 0x4000_0101 }?.eax == 0x0100_7AFB)
        #expect(!e.contains { $0.function == 0x4000_0001 })
        let bare = CPUIDPolicy(vcpuCount: 1, exposeKVMParavirt: false).entries(forVCPU: 0, supported: supported)
        #expect(!bare.contains { $0.function >= 0x4000_0100 && $0.function < 0x4000_0200 })
    }
}

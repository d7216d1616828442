#if canImport(Glibc)
import Glibc
#endif
import CKVM
import GuestMemory

/// A KVM capability (`KVM_CAP_*`) with its name, for checks and error messages.
public struct KVMCapability: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public let name: String
    public init(_ rawValue: Int32, _ name: String) { self.rawValue = rawValue; self.name = name }
    public var description: String { name }

    public static let irqchip = KVMCapability(Int32(CKVM_CAP_IRQCHIP), "IRQCHIP")
    public static let hlt = KVMCapability(Int32(CKVM_CAP_HLT), "HLT")
    public static let userMemory = KVMCapability(Int32(CKVM_CAP_USER_MEMORY), "USER_MEMORY")
    public static let setTSSAddress = KVMCapability(Int32(CKVM_CAP_SET_TSS_ADDR), "SET_TSS_ADDR")
    public static let setIdentityMapAddress = KVMCapability(Int32(CKVM_CAP_SET_IDENTITY_MAP_ADDR), "SET_IDENTITY_MAP_ADDR")
    public static let extendedCPUID = KVMCapability(Int32(CKVM_CAP_EXT_CPUID), "EXT_CPUID")
    public static let recommendedVCPUs = KVMCapability(Int32(CKVM_CAP_NR_VCPUS), "NR_VCPUS")
    public static let maxVCPUs = KVMCapability(Int32(CKVM_CAP_MAX_VCPUS), "MAX_VCPUS")
    public static let maxVCPUID = KVMCapability(Int32(CKVM_CAP_MAX_VCPU_ID), "MAX_VCPU_ID")
    public static let memorySlots = KVMCapability(Int32(CKVM_CAP_NR_MEMSLOTS), "NR_MEMSLOTS")
    public static let mpState = KVMCapability(Int32(CKVM_CAP_MP_STATE), "MP_STATE")
    public static let coalescedMMIO = KVMCapability(Int32(CKVM_CAP_COALESCED_MMIO), "COALESCED_MMIO")
    public static let coalescedPIO = KVMCapability(Int32(CKVM_CAP_COALESCED_PIO), "COALESCED_PIO")
    public static let irqRouting = KVMCapability(Int32(CKVM_CAP_IRQ_ROUTING), "IRQ_ROUTING")
    public static let irqInjectStatus = KVMCapability(Int32(CKVM_CAP_IRQ_INJECT_STATUS), "IRQ_INJECT_STATUS")
    public static let irqfd = KVMCapability(Int32(CKVM_CAP_IRQFD), "IRQFD")
    public static let ioeventfd = KVMCapability(Int32(CKVM_CAP_IOEVENTFD), "IOEVENTFD")
    public static let pit2 = KVMCapability(Int32(CKVM_CAP_PIT2), "PIT2")
    public static let signalMSI = KVMCapability(Int32(CKVM_CAP_SIGNAL_MSI), "SIGNAL_MSI")
    public static let vcpuEvents = KVMCapability(Int32(CKVM_CAP_VCPU_EVENTS), "VCPU_EVENTS")
    public static let xcrs = KVMCapability(Int32(CKVM_CAP_XCRS), "XCRS")
    public static let enableCap = KVMCapability(Int32(CKVM_CAP_ENABLE_CAP), "ENABLE_CAP")
    public static let immediateExit = KVMCapability(Int32(CKVM_CAP_IMMEDIATE_EXIT), "IMMEDIATE_EXIT")
    public static let tscDeadlineTimer = KVMCapability(Int32(CKVM_CAP_TSC_DEADLINE_TIMER), "TSC_DEADLINE_TIMER")
    public static let readonlyMemory = KVMCapability(Int32(CKVM_CAP_READONLY_MEM), "READONLY_MEM")
    public static let splitIRQChip = KVMCapability(Int32(CKVM_CAP_SPLIT_IRQCHIP), "SPLIT_IRQCHIP")
    public static let x2apicAPI = KVMCapability(Int32(CKVM_CAP_X2APIC_API), "X2APIC_API")
    public static let getTSCKHz = KVMCapability(Int32(CKVM_CAP_GET_TSC_KHZ), "GET_TSC_KHZ")
    public static let userMemory2 = KVMCapability(Int32(CKVM_CAP_USER_MEMORY2), "USER_MEMORY2")

    /// What every VM of this layer needs.
    public static let required: [KVMCapability] = [
        .userMemory, .extendedCPUID, .mpState, .immediateExit, .irqchip, .pit2,
        .irqRouting, .irqfd, .ioeventfd, .signalMSI,
    ]
}

/// `/dev/kvm`: the API version, capabilities, supported CPUID, and the factory for VMs.
///
/// Opening checks everything a VM of this layer needs, so "KVM is not usable" shows up as
/// one clear error at start-up rather than as a failed ioctl later.
public final class KVMSystem: @unchecked Sendable {
    public let path: String
    /// The open /dev/kvm descriptor (close-on-exec). Closed when the object goes away.
    public let fd: Int32
    public let apiVersion: Int
    /// Size of each vCPU's shared kvm_run area (KVM_GET_VCPU_MMAP_SIZE).
    public let vcpuMmapSize: Int

    /// Opens `path` (normally /dev/kvm) and checks the API version and the capabilities
    /// in `KVMCapability.required`.
    public init(path: String = "/dev/kvm") throws {
        self.path = path
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let err = errno
            let reason: String
            switch err {
            case ENOENT: reason = "does not exist (load the kvm module, or enable nested virtualisation for this VM)"
            case EACCES, EPERM: reason = "exists but permission was denied (add the user to the kvm group)"
            case ENODEV, ENXIO: reason = "exists but no KVM driver is behind it (load kvm_intel or kvm_amd)"
            default: reason = "cannot be opened: \(String(cString: strerror(err)))"
            }
            throw KVMError.notAvailable(path: path, reason: reason)
        }
        let version = ioctl(fd, CKVM_GET_API_VERSION, 0)
        if version < 0 {
            close(fd)
            throw KVMError.notAvailable(path: path, reason: "is not a KVM device")
        }
        if version != CKVM_API_VERSION {
            close(fd)
            throw KVMError.unsupportedAPIVersion(Int(version))
        }
        let mmapSize = ioctl(fd, CKVM_GET_VCPU_MMAP_SIZE, 0)
        if mmapSize < Int32(MemoryLayout<kvm_run>.size) {
            close(fd)
            throw KVMError.notAvailable(path: path, reason: "reports an invalid vCPU mmap size (\(mmapSize))")
        }
        self.fd = fd
        self.apiVersion = Int(version)
        self.vcpuMmapSize = Int(mmapSize)
        for cap in KVMCapability.required where checkExtension(cap) <= 0 {
            close(fd)
            throw KVMError.missingCapability(cap.name)
        }
    }

    deinit { close(fd) }

    /// Why KVM cannot be used here, or nil when `KVMSystem(path:)` would succeed.
    /// Tests call this to decide whether to skip.
    public static func unavailabilityReason(path: String = "/dev/kvm") -> String? {
        do { _ = try KVMSystem(path: path); return nil } catch { return "\(error)" }
    }

    /// KVM_CHECK_EXTENSION on the system fd: 0 when absent, otherwise a positive value
    /// (for some capabilities a count, e.g. the number of memory slots).
    public func checkExtension(_ cap: KVMCapability) -> Int {
        let r = ioctl(fd, CKVM_CHECK_EXTENSION, cap.rawValue)
        return r < 0 ? 0 : Int(r)
    }

    public func has(_ cap: KVMCapability) -> Bool { checkExtension(cap) > 0 }

    /// The most vCPUs one VM may have.
    public var maxVCPUs: Int {
        let m = checkExtension(.maxVCPUs)
        return m > 0 ? m : max(checkExtension(.recommendedVCPUs), 4)
    }

    /// KVM_GET_SUPPORTED_CPUID: every leaf the kernel can virtualise on this host.
    public func supportedCPUID() throws -> [CPUIDEntry] {
        var capacity: UInt32 = 128
        while capacity <= 4096 {
            let size = ckvm_cpuid2_size(capacity)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            defer { raw.deallocate() }
            // SAFETY: `raw` holds a kvm_cpuid2 header followed by room for `capacity`
            // entries; the kernel writes at most `nent` entries and updates `nent`.
            memset(raw, 0, size)
            let cpuid = raw.bindMemory(to: kvm_cpuid2.self, capacity: 1)
            cpuid.pointee.nent = capacity
            if ioctl(fd, CKVM_GET_SUPPORTED_CPUID, raw) == 0 {
                let count = Int(cpuid.pointee.nent)
                let entries = ckvm_cpuid2_entries(cpuid)!
                return (0..<min(count, Int(capacity))).map { CPUIDEntry(entries[$0]) }
            }
            let err = errno
            guard err == E2BIG else { throw KVMError.ioctlFailed("KVM_GET_SUPPORTED_CPUID", errno: err) }
            capacity *= 2
        }
        throw KVMError.ioctlFailed("KVM_GET_SUPPORTED_CPUID", errno: E2BIG)
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs whose state KVM saves (used by snapshots).
    public func msrIndexList() throws -> [UInt32] {
        var capacity: UInt32 = 256
        while capacity <= 8192 {
            let size = ckvm_msr_list_size(capacity)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { raw.deallocate() }
            // SAFETY: header plus `capacity` u32 indices; the kernel updates nmsrs.
            let list = raw.bindMemory(to: kvm_msr_list.self, capacity: 1)
            list.pointee.nmsrs = capacity
            if ioctl(fd, CKVM_GET_MSR_INDEX_LIST, raw) == 0 {
                let n = min(Int(list.pointee.nmsrs), Int(capacity))
                let indices = ckvm_msr_list_indices(list)!
                return (0..<n).map { indices[$0] }
            }
            let err = errno
            guard err == E2BIG else { throw KVMError.ioctlFailed("KVM_GET_MSR_INDEX_LIST", errno: err) }
            capacity *= 2
        }
        throw KVMError.ioctlFailed("KVM_GET_MSR_INDEX_LIST", errno: E2BIG)
    }

    /// Creates a VM whose RAM is `memory` (each region becomes a memory slot).
    public func createVirtualMachine(memory: GuestMemory,
                                     configuration: KVMVirtualMachine.Configuration = .init()) throws -> KVMVirtualMachine {
        try KVMVirtualMachine(system: self, memory: memory, configuration: configuration)
    }
}

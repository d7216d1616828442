#if canImport(Glibc)
import Glibc
#endif
import CKVM
import GuestMemory
import Hypervisor
import Synchronization

/// A KVM virtual machine: its memory slots, the in-kernel irqchip (PIC + IOAPIC + LAPIC)
/// and PIT, interrupt routing, irqfd/ioeventfd registration, and its vCPUs.
///
/// Keeps its `KVMSystem` and `GuestMemory` alive; every `KVMVCPU` keeps the VM alive, so
/// guest RAM cannot be unmapped under a running vCPU.
///
/// Interrupt routing follows the PC (and QEMU): ISA IRQ n goes to PIC pin n and to IOAPIC
/// pin n, except IRQ 0 (the PIT), which arrives at IOAPIC pin 2, so the MADT must carry
/// the usual interrupt source override 0 -> 2. GSIs 16-23 are IOAPIC-only. GSIs from
/// `firstMSIRoute` on are MSI routes allocated for irqfd-driven MSI(-X) vectors.
public final class KVMVirtualMachine: VirtualMachineBackend, InterruptController, @unchecked Sendable {
    public struct Configuration: Sendable {
        /// How many vCPUs the machine will have (CPUID topology; must be known up front).
        public var vcpuCount: Int
        /// Create the in-kernel PIC/IOAPIC/LAPIC (KVM_CREATE_IRQCHIP).
        public var inKernelIRQChip: Bool
        /// Create the in-kernel i8254 PIT (needs the irqchip).
        public var inKernelPIT: Bool
        /// Three pages KVM uses for real-mode emulation on VMX (KVM_SET_TSS_ADDR) and the
        /// identity-map page; both must lie outside RAM and MMIO. QEMU's addresses.
        public var tssAddress: UInt64
        public var identityMapAddress: UInt64
        /// Expose KVM's paravirtual CPUID leaves (kvmclock ...) at 0x4000_0100.
        public var exposeKVMParavirt: Bool

        public init(vcpuCount: Int = 1, inKernelIRQChip: Bool = true, inKernelPIT: Bool = true,
                    tssAddress: UInt64 = 0xFEFF_D000, identityMapAddress: UInt64 = 0xFEFF_C000,
                    exposeKVMParavirt: Bool = true) {
            self.vcpuCount = vcpuCount; self.inKernelIRQChip = inKernelIRQChip
            self.inKernelPIT = inKernelPIT; self.tssAddress = tssAddress
            self.identityMapAddress = identityMapAddress; self.exposeKVMParavirt = exposeKVMParavirt
        }
    }

    /// Where an ioeventfd listens.
    public enum IOEventSpace: Sendable { case port, mmio }

    public let system: KVMSystem
    public let memory: GuestMemory
    public let configuration: Configuration
    public let fd: Int32
    public var name: String { "kvm" }
    public var interrupts: any InterruptController { self }

    /// The first GSI handed out for MSI routes.
    public static let firstMSIRoute: UInt32 = 24

    private struct RoutingState {
        var msiRoutes: [UInt32: (address: UInt64, data: UInt32)] = [:]
        var nextGSI: UInt32 = KVMVirtualMachine.firstMSIRoute
        var freeGSIs: [UInt32] = []
        var slots: [UInt32] = []
        var extraOwners: [any AnyObject & Sendable] = []
        var createdVCPUs: Set<Int> = []
    }
    private let state = Mutex(RoutingState())
    private let cpuidCache: [CPUIDEntry]

    init(system: KVMSystem, memory: GuestMemory, configuration: Configuration) throws {
        guard configuration.vcpuCount >= 1, configuration.vcpuCount <= system.maxVCPUs else {
            throw KVMError.invalidArgument("a VM needs between 1 and \(system.maxVCPUs) vCPUs, not \(configuration.vcpuCount)")
        }
        guard !configuration.inKernelPIT || configuration.inKernelIRQChip else {
            throw KVMError.invalidArgument("the in-kernel PIT needs the in-kernel irqchip")
        }
        let cpuid = try system.supportedCPUID()
        var vmfd: Int32 = -1
        for _ in 0..<5 {
            vmfd = ioctl(system.fd, CKVM_CREATE_VM, 0)
            if vmfd >= 0 || errno != EINTR { break }
        }
        guard vmfd >= 0 else { throw KVMError.ioctlFailed("KVM_CREATE_VM", errno: errno) }
        // From here on deinit closes the fd if init throws.
        self.fd = vmfd
        self.system = system
        self.memory = memory
        self.configuration = configuration
        self.cpuidCache = cpuid

        if system.has(.setIdentityMapAddress) {
            var addr = configuration.identityMapAddress
            // SAFETY: KVM_SET_IDENTITY_MAP_ADDR reads a u64 through the pointer.
            if ioctl(vmfd, CKVM_SET_IDENTITY_MAP_ADDR, &addr) < 0 {
                throw KVMError.ioctlFailed("KVM_SET_IDENTITY_MAP_ADDR", errno: errno)
            }
        }
        if system.has(.setTSSAddress) {
            if ckvm_ioctl_u64(vmfd, CKVM_SET_TSS_ADDR, configuration.tssAddress) < 0 {
                throw KVMError.ioctlFailed("KVM_SET_TSS_ADDR", errno: errno)
            }
        }
        if configuration.inKernelIRQChip {
            if ioctl(vmfd, CKVM_CREATE_IRQCHIP, 0) < 0 {
                throw KVMError.ioctlFailed("KVM_CREATE_IRQCHIP", errno: errno)
            }
        }
        if configuration.inKernelPIT {
            var pit = kvm_pit_config()
            pit.flags = CKVM_PIT_SPEAKER_DUMMY
            // SAFETY: passes a kvm_pit_config the kernel only reads.
            if ioctl(vmfd, CKVM_CREATE_PIT2, &pit) < 0 {
                throw KVMError.ioctlFailed("KVM_CREATE_PIT2", errno: errno)
            }
        }
        for (i, region) in memory.regions.enumerated() {
            try setMemorySlot(UInt32(i), guestBase: region.guestBase, size: region.size,
                              host: region.host, readOnly: false)
        }
        state.withLock { $0.slots = (0..<UInt32(memory.regions.count)).map { $0 } }
        if configuration.inKernelIRQChip { try commitRoutes() }
    }

    deinit { close(fd) }

    // MARK: memory

    private func setMemorySlot(_ slot: UInt32, guestBase: UInt64, size: Int,
                               host: UnsafeMutableRawPointer?, readOnly: Bool) throws {
        var region = kvm_userspace_memory_region()
        region.slot = slot
        region.flags = readOnly ? CKVM_MEM_READONLY : 0
        region.guest_phys_addr = guestBase
        region.memory_size = UInt64(size)
        region.userspace_addr = UInt64(UInt(bitPattern: host))
        // SAFETY: the struct is only read by the kernel; `host` stays mapped for as long as
        // the slot exists (the owner is retained by this VM).
        if ioctl(fd, CKVM_SET_USER_MEMORY_REGION, &region) < 0 {
            let err = errno
            throw KVMError.ioctlFailed("KVM_SET_USER_MEMORY_REGION (slot \(slot) at 0x\(String(guestBase, radix: 16)), \(size) bytes)", errno: err)
        }
    }

    /// Maps extra host memory (e.g. a firmware ROM, read-only) into the guest. `owner` owns
    /// the host bytes and is kept alive for the VM's lifetime. Returns the slot number.
    @discardableResult
    public func addMemorySlot(guestBase: UInt64, size: Int, host: UnsafeMutableRawPointer,
                              readOnly: Bool, owner: any AnyObject & Sendable) throws -> UInt32 {
        guard guestBase % 4096 == 0, size > 0, size % 4096 == 0 else {
            throw KVMError.invalidArgument("a memory slot must be page aligned and non-empty (0x\(String(guestBase, radix: 16)), \(size) bytes)")
        }
        if readOnly && !system.has(.readonlyMemory) { throw KVMError.missingCapability("READONLY_MEM") }
        let slot = state.withLock { s -> UInt32 in
            let n = (s.slots.max() ?? 0) + 1
            s.slots.append(n)
            s.extraOwners.append(owner)
            return n
        }
        try setMemorySlot(slot, guestBase: guestBase, size: size, host: host, readOnly: readOnly)
        return slot
    }

    // MARK: vCPUs

    public func createVCPU(index: Int, startState: VCPUStartState) throws -> any VirtualCPU {
        try makeVCPU(index: index, startState: startState)
    }

    /// Creates vCPU `index` (APIC ID = index) with its CPUID set; `waitingForSIPI` parks an
    /// application processor until the guest starts it with INIT/SIPI.
    public func makeVCPU(index: Int, startState: VCPUStartState = .runnable) throws -> KVMVCPU {
        guard index >= 0, index < configuration.vcpuCount else {
            throw KVMError.invalidArgument("vCPU index \(index) is out of range: this VM was configured with \(configuration.vcpuCount) vCPU(s)")
        }
        let fresh = state.withLock { $0.createdVCPUs.insert(index).inserted }
        guard fresh else { throw KVMError.invalidArgument("vCPU \(index) was already created") }
        let policy = CPUIDPolicy(vcpuCount: configuration.vcpuCount,
                                 exposeKVMParavirt: configuration.exposeKVMParavirt)
        do {
            let vcpu = try KVMVCPU(vm: self, index: index)
            try vcpu.setCPUID(policy.entries(forVCPU: index, supported: cpuidCache))
            if startState == .waitingForSIPI {
                try vcpu.setMPState(.uninitialized)
            }
            return vcpu
        } catch {
            _ = state.withLock { $0.createdVCPUs.remove(index) }
            throw error
        }
    }

    // MARK: interrupts

    /// Sets the level of GSI `gsi` (KVM_IRQ_LINE). Errors are impossible for valid GSIs
    /// with an irqchip; an invalid GSI is ignored like a wire to nowhere.
    public func setIRQ(_ gsi: UInt32, level: Bool) {
        var line = kvm_irq_level()
        line.irq = gsi
        line.level = level ? 1 : 0
        // SAFETY: the kernel only reads the struct.
        _ = ioctl(fd, CKVM_IRQ_LINE, &line)
    }

    /// Raises then lowers an edge-triggered GSI.
    public func pulseIRQ(_ gsi: UInt32) {
        setIRQ(gsi, level: true)
        setIRQ(gsi, level: false)
    }

    /// Delivers an MSI directly (KVM_SIGNAL_MSI).
    public func signalMSI(address: UInt64, data: UInt32) {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: address)
        msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        msi.data = data
        // SAFETY: the kernel only reads the struct.
        _ = ioctl(fd, CKVM_SIGNAL_MSI, &msi)
    }

    /// Allocates a GSI routed to an MSI (for an irqfd that raises an MSI-X vector).
    public func allocateMSIRoute(address: UInt64, data: UInt32) throws -> UInt32 {
        let gsi = state.withLock { s -> UInt32 in
            let g: UInt32
            if let free = s.freeGSIs.popLast() { g = free } else { g = s.nextGSI; s.nextGSI += 1 }
            s.msiRoutes[g] = (address, data)
            return g
        }
        try commitRoutes()
        return gsi
    }

    /// Changes the message of an allocated MSI route (the guest reprogrammed the vector).
    public func updateMSIRoute(gsi: UInt32, address: UInt64, data: UInt32) throws {
        let known = state.withLock { s -> Bool in
            guard s.msiRoutes[gsi] != nil else { return false }
            s.msiRoutes[gsi] = (address, data)
            return true
        }
        guard known else { throw KVMError.invalidArgument("GSI \(gsi) is not an allocated MSI route") }
        try commitRoutes()
    }

    public func releaseMSIRoute(gsi: UInt32) throws {
        let known = state.withLock { s -> Bool in
            guard s.msiRoutes.removeValue(forKey: gsi) != nil else { return false }
            s.freeGSIs.append(gsi)
            return true
        }
        guard known else { throw KVMError.invalidArgument("GSI \(gsi) is not an allocated MSI route") }
        try commitRoutes()
    }

    /// Pushes the whole routing table (KVM_SET_GSI_ROUTING replaces it).
    private func commitRoutes() throws {
        try state.withLock { s in
            var entries: [(UnsafeMutablePointer<kvm_irq_routing_entry>) -> Void] = []
            for pin in UInt32(0)..<8 where pin != 2 {  // master PIC; pin 2 is the cascade
                entries.append { ckvm_irq_routing_set_irqchip($0, pin, UInt32(CKVM_IRQCHIP_PIC_MASTER), pin) }
            }
            for pin in UInt32(8)..<16 {
                entries.append { ckvm_irq_routing_set_irqchip($0, pin, UInt32(CKVM_IRQCHIP_PIC_SLAVE), pin - 8) }
            }
            for gsi in UInt32(0)..<24 where gsi != 2 {
                let pin = gsi == 0 ? 2 : gsi
                entries.append { ckvm_irq_routing_set_irqchip($0, gsi, UInt32(CKVM_IRQCHIP_IOAPIC), pin) }
            }
            for (gsi, msg) in s.msiRoutes.sorted(by: { $0.key < $1.key }) {
                entries.append { ckvm_irq_routing_set_msi($0, gsi, msg.address, msg.data) }
            }
            let n = UInt32(entries.count)
            let size = ckvm_irq_routing_size(n)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { raw.deallocate() }
            // SAFETY: header plus room for `n` entries, each filled by a C helper.
            memset(raw, 0, size)
            let table = raw.bindMemory(to: kvm_irq_routing.self, capacity: 1)
            table.pointee.nr = n
            let base = ckvm_irq_routing_entries(table)!
            for (i, fill) in entries.enumerated() { fill(base + i) }
            if ioctl(fd, CKVM_SET_GSI_ROUTING, raw) < 0 {
                throw KVMError.ioctlFailed("KVM_SET_GSI_ROUTING", errno: errno)
            }
        }
    }

    /// Makes a signal on `eventfd` raise GSI `gsi` inside the kernel (KVM_IRQFD). With
    /// `resample`, the GSI is level-triggered: KVM lowers it on EOI and signals `resample`.
    public func registerIRQFD(_ eventfd: EventFD, gsi: UInt32, resample: EventFD? = nil) throws {
        var req = kvm_irqfd()
        req.fd = UInt32(bitPattern: eventfd.fd)
        req.gsi = gsi
        if let resample {
            req.flags = CKVM_IRQFD_FLAG_RESAMPLE
            req.resamplefd = UInt32(bitPattern: resample.fd)
        }
        // SAFETY: the kernel only reads the struct.
        if ioctl(fd, CKVM_IRQFD, &req) < 0 { throw KVMError.ioctlFailed("KVM_IRQFD (GSI \(gsi))", errno: errno) }
    }

    public func unregisterIRQFD(_ eventfd: EventFD, gsi: UInt32) throws {
        var req = kvm_irqfd()
        req.fd = UInt32(bitPattern: eventfd.fd)
        req.gsi = gsi
        req.flags = CKVM_IRQFD_FLAG_DEASSIGN
        // SAFETY: the kernel only reads the struct.
        if ioctl(fd, CKVM_IRQFD, &req) < 0 { throw KVMError.ioctlFailed("KVM_IRQFD deassign (GSI \(gsi))", errno: errno) }
    }

    /// Makes a guest write of `length` bytes (1, 2, 4 or 8; 0 = any) to `address` signal
    /// `eventfd` inside the kernel instead of exiting (KVM_IOEVENTFD). With `dataMatch`,
    /// only writes of that value do.
    public func registerIOEventFD(_ eventfd: EventFD, space: IOEventSpace, address: UInt64,
                                  length: Int, dataMatch: UInt64? = nil) throws {
        try ioeventfd(eventfd, space: space, address: address, length: length, dataMatch: dataMatch, deassign: false)
    }

    public func unregisterIOEventFD(_ eventfd: EventFD, space: IOEventSpace, address: UInt64,
                                    length: Int, dataMatch: UInt64? = nil) throws {
        try ioeventfd(eventfd, space: space, address: address, length: length, dataMatch: dataMatch, deassign: true)
    }

    private func ioeventfd(_ eventfd: EventFD, space: IOEventSpace, address: UInt64, length: Int,
                           dataMatch: UInt64?, deassign: Bool) throws {
        guard [0, 1, 2, 4, 8].contains(length) else {
            throw KVMError.invalidArgument("an ioeventfd length must be 0, 1, 2, 4 or 8 bytes, not \(length)")
        }
        var req = kvm_ioeventfd()
        req.addr = address
        req.len = UInt32(length)
        req.fd = eventfd.fd
        var flags: UInt32 = 0
        if space == .port { flags |= CKVM_IOEVENTFD_FLAG_PIO }
        if let dataMatch { flags |= CKVM_IOEVENTFD_FLAG_DATAMATCH; req.datamatch = dataMatch }
        if deassign { flags |= CKVM_IOEVENTFD_FLAG_DEASSIGN }
        req.flags = flags
        // SAFETY: the kernel only reads the struct.
        if ioctl(fd, CKVM_IOEVENTFD, &req) < 0 {
            throw KVMError.ioctlFailed("KVM_IOEVENTFD (\(space == .port ? "port" : "MMIO") 0x\(String(address, radix: 16)))", errno: errno)
        }
    }
}

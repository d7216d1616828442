import GuestMemory
import Hypervisor
import Logging
import Storage

/// One disk for `VirtioMachineSet`: a backend (raw or qcow2 image from Storage, or a
/// MemoryDisk), whether the guest sees it read-only, and its GET_ID serial.
public struct VirtioDiskSpec {
    public var backend: any DiskBackend
    public var readOnly: Bool
    public var serial: String

    public init(backend: any DiskBackend, readOnly: Bool = false, serial: String) {
        self.backend = backend; self.readOnly = readOnly; self.serial = serial
    }
}

/// One network interface for `VirtioMachineSet`: its MAC and where its frames go.
public struct VirtioNetSpec {
    public var mac: [UInt8]
    public var backend: any NetworkBackend
    /// Drop transmitted frames with another source MAC (vm.conf `locked lladdr`).
    public var lockedMAC: Bool

    public init(mac: [UInt8], backend: any NetworkBackend, lockedMAC: Bool = false) {
        self.mac = mac; self.backend = backend; self.lockedMAC = lockedMAC
    }
}

/// The virtio functions of one machine, created and placed on the PCI host bridge in one
/// call, so the VMM's machine map stays one readable list:
///
///     slot 2       virtio-rng
///     slots 3-6    virtio-blk, one per disk (at most 4, like vmd)
///     slot 7       virtio-console (when a console backend is given)
///     slots 8-11   virtio-net, one per interface (at most 4, like vmd)
///     slot 12      virtio-scsi with the CD-ROM (firmware boots with -r)
///     slot 13      virtio-vsock (with a guest CID and a host backend)
///
/// INTx lines come from the host bridge's routing (shared, level triggered); MSI-X goes to
/// `interrupts.signalMSI`.
public final class VirtioMachineSet: @unchecked Sendable {
    public static let entropySlot = 2
    public static let firstDiskSlot = 3
    public static let maximumDisks = 4
    public static let consoleSlot = 7
    public static let firstNetworkSlot = 8
    public static let maximumNetworkInterfaces = 4
    public static let cdromSlot = 12
    public static let vsockSlot = 13

    public let blocks: [VirtioPCIDevice]
    public let blockModels: [VirtioBlock]
    public let entropy: VirtioPCIDevice?
    public let console: VirtioPCIDevice?
    public let consoleModel: VirtioConsole?
    /// The virtio-net functions and their models, in interface order.
    public let networks: [VirtioPCIDevice]
    public let networkModels: [VirtioNet]
    /// The virtio-scsi function holding the CD-ROM (nil without one).
    public let scsi: VirtioPCIDevice?
    public let scsiModel: VirtioSCSI?
    /// The virtio-vsock function (nil without one).
    public let vsock: VirtioPCIDevice?
    public let vsockModel: VirtioVsock?

    /// Every function, for iteration (ioeventfd set-up, snapshots, metrics).
    public var all: [VirtioPCIDevice] { (entropy.map { [$0] } ?? []) + blocks + (console.map { [$0] } ?? []) + networks + (scsi.map { [$0] } ?? []) + (vsock.map { [$0] } ?? []) }

    public enum SetupError: Error, CustomStringConvertible {
        case tooManyDisks(Int)
        case tooManyNetworkInterfaces(Int)
        public var description: String {
            switch self {
            case let .tooManyDisks(n): return "\(n) virtio disks requested; a machine has at most \(VirtioMachineSet.maximumDisks)"
            case let .tooManyNetworkInterfaces(n):
                return "\(n) network interfaces requested; a machine has at most \(VirtioMachineSet.maximumNetworkInterfaces)"
            }
        }
    }

    /// Creates the functions and registers them on `host` (which assigns their BARs).
    /// `consoleOutput` receives virtio-console output (with the device lock held; it must not
    /// take the machine's device lock).
    public init(host: PCIHost, memory: GuestMemory, interrupts: any InterruptController,
                disks: [VirtioDiskSpec], entropy: Bool = true,
                consoleOutput: (@Sendable ([UInt8]) -> Void)? = nil,
                networks: [VirtioNetSpec] = [],
                cdrom: SCSICDROM? = nil,
                vsock: (guestCID: UInt64, backend: any VsockHostBackend)? = nil,
                logger: Logger = Logger(label: "virtio")) throws {
        guard disks.count <= Self.maximumDisks else { throw SetupError.tooManyDisks(disks.count) }
        guard networks.count <= Self.maximumNetworkInterfaces else {
            throw SetupError.tooManyNetworkInterfaces(networks.count)
        }
        func make(_ model: any VirtioDeviceModel, slot: Int, name: String) throws -> VirtioPCIDevice {
            let device = VirtioPCIDevice(model: model, memory: memory, interrupts: interrupts,
                                         intx: host.interruptLine(slot: slot, pin: 1), name: name, logger: logger)
            try host.register(device, slot: slot)
            return device
        }
        self.entropy = entropy ? try make(VirtioEntropy(), slot: Self.entropySlot, name: "virtio-rng") : nil
        var blocks: [VirtioPCIDevice] = []
        var models: [VirtioBlock] = []
        for (i, disk) in disks.enumerated() {
            let model = VirtioBlock(disk: disk.backend, serial: disk.serial, readOnly: disk.readOnly)
            models.append(model)
            blocks.append(try make(model, slot: Self.firstDiskSlot + i, name: "virtio-blk\(i)"))
        }
        self.blocks = blocks
        self.blockModels = models
        if let consoleOutput {
            let model = VirtioConsole(output: consoleOutput)
            self.consoleModel = model
            self.console = try make(model, slot: Self.consoleSlot, name: "virtio-console")
        } else {
            self.consoleModel = nil
            self.console = nil
        }
        var nets: [VirtioPCIDevice] = []
        var netModels: [VirtioNet] = []
        for (i, spec) in networks.enumerated() {
            let model = VirtioNet(mac: spec.mac, backend: spec.backend, lockedMAC: spec.lockedMAC)
            netModels.append(model)
            nets.append(try make(model, slot: Self.firstNetworkSlot + i, name: "virtio-net\(i)"))
        }
        self.networks = nets
        self.networkModels = netModels
        if let cdrom {
            let model = VirtioSCSI(cdrom: cdrom)
            self.scsiModel = model
            self.scsi = try make(model, slot: Self.cdromSlot, name: "virtio-scsi")
        } else {
            self.scsiModel = nil
            self.scsi = nil
        }
        if let vsock {
            let model = VirtioVsock(guestCID: vsock.guestCID, backend: vsock.backend)
            self.vsockModel = model
            self.vsock = try make(model, slot: Self.vsockSlot, name: "virtio-vsock")
        } else {
            self.vsockModel = nil
            self.vsock = nil
        }
    }
}

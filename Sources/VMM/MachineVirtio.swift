import Devices
import GuestMemory
import Hypervisor
import KVM
import Logging
import Storage

// The virtio part of the machine (owned by the virtio area, docs/virtio.md): which virtio
// functions a machine gets and from which settings. Called once from `Machine.init`, after
// the machine map (which creates the PCI host) and before the boot loader (which writes the
// PCI interrupt routing of the registered functions into the firmware tables).
extension Machine {
    /// virtio-rng on slot 2, one virtio-blk per disk (`-d`, raw or qcow2) on slots 3-6, a
    /// virtio-console on slot 7 whose output joins the machine console (Linux: console=hvc0),
    /// one virtio-net per network interface (`--net`) on slots 8-11 (MachineNet.swift), and
    /// a virtio-vsock on slot 13 (`--vsock`, VsockHost.swift).
    static func attachVirtio(config: MachineConfig, host: PCIHost, memory: GuestMemory,
                             interrupts: any InterruptController, console: Console,
                             log: Logger) throws -> VirtioMachineSet {
        var disks: [VirtioDiskSpec] = []
        for (i, path) in config.diskPaths.enumerated() {
            let backend: any DiskBackend
            do {
                if let chain = config.passedFiles?.disks[i] {
                    backend = try DiskImage.open(chain: chain)
                } else {
                    backend = try DiskImage.open(path)
                }
            } catch {
                throw VMMError.diskUnreadable(path: path, reason: "\(error)")
            }
            disks.append(VirtioDiskSpec(backend: backend, readOnly: backend.isReadOnly, serial: "swiftvmm-disk\(i)"))
        }
        let networks = try Machine.networkSpecs(config: config, log: log)
        return try VirtioMachineSet(host: host, memory: memory, interrupts: interrupts, disks: disks,
                                    entropy: true, consoleOutput: { console.write($0) },
                                    networks: networks, cdrom: try Machine.cdrom(config: config),
                                    vsock: config.vsock.map { ($0.guestCID, UnixVsockBackend(path: $0.path)) },
                                    logger: log)
    }

    /// On KVM: the irqfd MSI router and the ioeventfd event loop (VirtioEventLoop.swift).
    /// Either is nil when the backend is not KVM or the loop cannot be created; the devices
    /// then use MMIO exits and `signalMSI`.
    static func virtioFastPaths(backend: any VirtualMachineBackend,
                                log: Logger) -> (router: MSIRouter?, loop: VirtioEventLoop?) {
        guard let vm = backend as? KVMVirtualMachine else { return (nil, nil) }
        let loop: VirtioEventLoop?
        do {
            loop = try VirtioEventLoop(vm: vm, log: log)
        } catch {
            log.warning("virtio notifies use MMIO exits: \(error)")
            loop = nil
        }
        return (MSIRouter(vm: vm, log: log), loop)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Devices
import Foundation
import GuestMemory
import Hypervisor
import KVM
import Logging
import X86Emulator

// The machine state stream's content (docs/snapshot.md, "The state stream"): which
// sections a paused machine writes, and how a fresh machine is rebuilt from them. The
// framing (magic, version, tag/length/checksum) is StateStream.swift's.

/// The machine settings a stream carries (the CONF section, JSON): enough to build the
/// same machine again. The console is the restoring process's own.
public struct SavedMachineConfig: Codable, Sendable, Equatable {
    public var kernelPath: String
    public var initrdPath: String?
    public var cmdline: String
    public var memorySize: UInt64
    public var vcpus: Int
    public var diskPaths: [String]
    /// The backend the state was taken on ("emulator" or "kvm"); it is restored on the same one.
    public var backend: String
    public var cpuLevel: String?
    /// The RAM layout (base, size) the memory sections must fall in.
    public var ram: [[UInt64]]
    /// The kind of kernel the machine booted (`KernelKind`'s text; absent in older streams).
    public var kernelKind: String?
}

/// The DEVS section (JSON): every device's state.
struct SavedDevices: Codable {
    var com1: NS8250.Snapshot
    var keyboardController: I8042.Snapshot
    var rtc: MC146818.Snapshot
    var pciHost: PCIHost.Snapshot
    var acpiPM: ACPIPMBlock.Snapshot
    var pic: I8259.Snapshot?
    var ioapic: IOAPIC.Snapshot?
    var pit: I8254.Snapshot?
    /// The virtio transports (PCI config, MSI-X, queue state, features, status) in
    /// `VirtioMachineSet.all` order.
    var virtio: [VirtioPCIDevice.Snapshot]
    /// KVM: the in-kernel PIC pair, IOAPIC, PIT and kvmclock (the user-space chips above are nil).
    var kvm: KVMVMSnapshot?
}

/// A VCPU section (JSON).
struct SavedVCPU: Codable {
    var index: Int
    /// Exactly one of these, by the backend.
    var emulator: X86CPUSnapshot?
    var kvm: KVMVCPUSnapshot?
}

/// What a save wrote.
public struct SnapshotStatistics: Sendable {
    public var bytes: UInt64
    public var memoryPages: Int
}

extension Machine {
    /// Why this machine cannot be saved yet, or nil.
    var snapshotBlocker: String? {
        if config.bootsFirmware { return "saving a firmware-booted machine is not supported yet (fw_cfg and the ISA bridge have no saved state)" }
        if !config.networkInterfaces.isEmpty || config.vsock != nil || config.cdromPath != nil {
            return "saving a machine with network interfaces, vsock or a CD-ROM is not supported yet"
        }
        return nil
    }

    /// Writes the paused machine's complete state to `fd` (docs/snapshot.md). The machine
    /// stays paused; the caller resumes or stops it.
    @discardableResult
    public func saveState(to fd: Int32) throws -> SnapshotStatistics {
        if let why = snapshotBlocker { throw VMMError.unsupported(why) }
        guard state == .paused else { throw VMMError.machine("the machine must be paused to be saved") }
        let encoder = JSONEncoder()
        let kvmVM = backend as? KVMVirtualMachine
        let msrIndices = try kvmVM?.system.msrIndexList() ?? []
        let cpus = try runner.onEachPausedVCPU { cpu -> SavedVCPU in
            if let v = cpu as? EmulatorVCPU { return SavedVCPU(index: v.index, emulator: v.snapshot()) }
            guard let k = cpu as? KVMVCPU else { throw VMMError.machine("vCPU \(cpu.index) has no saved state") }
            return SavedVCPU(index: k.index, kvm: try k.saveState(msrIndices: msrIndices))
        }
        let kvmState = try kvmVM?.saveState()
        let devices = self.devices, virtio = self.virtio
        let saved = deviceLock.withLock {
            let chips = devices.irqChip?.withChips { pic, ioapic in (pic: pic.snapshot(), ioapic: ioapic.snapshot()) }
            return SavedDevices(com1: devices.com1.snapshot(), keyboardController: devices.keyboardController.snapshot(),
                                rtc: devices.rtc.snapshot(), pciHost: devices.pciHost.snapshot(),
                                acpiPM: devices.acpiPM.snapshot(), pic: chips?.pic,
                                ioapic: chips?.ioapic, pit: devices.pit?.snapshot(),
                                virtio: virtio.all.map { $0.snapshot() }, kvm: kvmState)
        }
        let conf = SavedMachineConfig(kernelPath: config.kernelPath, initrdPath: config.initrdPath, cmdline: config.cmdline,
                                      memorySize: config.memorySize, vcpus: config.vcpus, diskPaths: config.diskPaths,
                                      backend: kvmVM == nil ? "emulator" : "kvm", cpuLevel: (config.cpuLevel ?? .default).rawValue,
                                      ram: memory.regions.map { [$0.guestBase, UInt64($0.size)] },
                                      kernelKind: kernelKind.rawValue)
        let w = try StateStreamWriter(fd: fd)
        try w.section(StateStream.config, Array(try encoder.encode(conf)))
        try w.section(StateStream.devices, Array(try encoder.encode(saved)))
        for cpu in cpus { try w.section(StateStream.vcpu, Array(try encoder.encode(cpu))) }
        let pages = try writeMemory(w)
        try w.finish()
        return SnapshotStatistics(bytes: w.bytesWritten, memoryPages: pages)
    }

    /// Pauses the machine (unless it is paused already), runs `save` (which writes the
    /// state, e.g. with `saveState(to:)`), then stops the machine with `reason`. When `save`
    /// throws, a machine this call paused resumes and the error is rethrown: a failed save
    /// never loses the VM. `vmm --save-to` and `vmctl send` both go through here.
    @discardableResult
    public func saveThenStop<T>(reason: String, _ save: () throws -> T) throws -> T {
        let wasPaused = state == .paused
        if !wasPaused { pause() }
        let result: T
        do {
            result = try save()
        } catch {
            if !wasPaused { resume() }
            throw error
        }
        stop(reason: reason)
        return result
    }

    /// MEM sections: each a guest-physical address (u64) and a run of non-zero pages
    /// (at most `StateStream.memoryChunk` bytes). Pages not written are zero.
    private func writeMemory(_ w: StateStreamWriter) throws -> Int {
        let page = StateStream.pageSize, chunk = StateStream.memoryChunk
        var pages = 0
        for region in memory.regions {
            // SAFETY: the region's host mapping is `size` bytes and lives as long as `memory`;
            // the machine is paused, so nothing writes it meanwhile.
            let base = UnsafeRawBufferPointer(start: region.host, count: region.size)
            func isZero(_ o: Int) -> Bool {
                let words = UnsafeRawBufferPointer(rebasing: base[o..<o + page]).bindMemory(to: UInt64.self)
                return !words.contains { $0 != 0 }
            }
            var o = 0
            while o + page <= region.size {
                if isZero(o) { o += page; continue }
                var end = o + page
                while end + page <= region.size && end - o < chunk && !isZero(end) { end += page }
                var payload = le(region.guestBase + UInt64(o))
                payload.append(contentsOf: base[o..<end])
                try w.section(StateStream.memory, payload)
                pages += (end - o) / page
                o = end
            }
        }
        return pages
    }

    /// Rebuilds a machine from a stream: reads and checks every section, builds the machine
    /// from the CONF section, applies memory, devices and vCPUs. Any error throws before
    /// anything runs; the machine returned is not started.
    public static func restore(fd: Int32, console: ConsoleSink, log: Logger = Logger(label: "vmm")) throws -> Machine {
        try restore(reader: try StateStreamReader(fd: fd), console: console, log: log)
    }

    public static func restore(reader: StateStreamReader, console: ConsoleSink,
                               log: Logger = Logger(label: "vmm")) throws -> Machine {
        let machine = try prepareRestore(try readConfig(reader), console: console, log: log)
        try machine.applyState(from: reader)
        return machine
    }

    /// The CONF section, which a stream starts with (vmd reads it before it starts the VM
    /// process: the disks and sizes it names are vmd's business).
    public static func readConfig(_ reader: StateStreamReader) throws -> SavedMachineConfig {
        guard let first = try reader.next(), first.tag == StateStream.config else {
            throw StateStreamError.malformed("the stream does not start with the machine configuration")
        }
        let conf = try decodeSection(SavedMachineConfig.self, first.payload, "configuration")
        guard !conf.kernelPath.isEmpty else { throw StateStreamError.malformed("no kernel in the configuration") }
        return conf
    }

    /// The first half of a restore: builds the machine a CONF section describes, with fresh
    /// (zero) RAM and no kernel loaded, not started. `diskPaths` and `passedFiles` replace
    /// the saved disk paths (vmd: the disks it opened, as descriptors). The rest of the
    /// stream is applied with `applyState(from:)` before `start()`.
    public static func prepareRestore(_ conf: SavedMachineConfig, console: ConsoleSink, diskPaths: [String]? = nil,
                                      passedFiles: PassedFiles? = nil, log: Logger = Logger(label: "vmm")) throws -> Machine {
        guard let accel = ["emulator": Accelerator.emulator, "kvm": .kvm][conf.backend] else {
            throw StateStreamError.malformed("unknown backend \(conf.backend)")
        }
        guard let level = X86CPULevel(rawValue: conf.cpuLevel ?? X86CPULevel.default.rawValue) else {
            throw StateStreamError.malformed("unknown CPU level")
        }
        guard let kind = KernelKind(rawValue: conf.kernelKind ?? KernelKind.elf.rawValue), kind != .firmware else {
            throw StateStreamError.malformed("unknown kernel kind")
        }
        var config = MachineConfig(kernelPath: conf.kernelPath, initrdPath: conf.initrdPath, cmdline: conf.cmdline,
                                   memorySize: conf.memorySize, vcpus: conf.vcpus, diskPaths: diskPaths ?? conf.diskPaths,
                                   accelerator: accel, console: console)
        config.cpuLevel = level
        config.passedFiles = passedFiles
        // RAM comes from the stream: no kernel is read or loaded, and fresh anonymous
        // memory is zero already, so a page the stream does not carry is zero.
        config.restoringKernelKind = kind
        try config.validateSettings()
        let machine = try Machine(config: config, log: log)
        guard machine.memory.regions.map({ [$0.guestBase, UInt64($0.size)] }) == conf.ram else {
            throw StateStreamError.malformed("the RAM layout differs from the saved one")
        }
        return machine
    }

    /// The second half of a restore: reads the rest of the stream (after CONF) into a
    /// machine `prepareRestore` built: memory, devices and vCPUs. Any error throws before
    /// anything runs.
    public func applyState(from reader: StateStreamReader) throws {
        guard config.restoringKernelKind != nil, state == .created else {
            throw VMMError.machine("state is applied only to a machine built for a restore, before it starts")
        }
        let accel = config.accelerator
        var devices: SavedDevices?
        var cpus = [SavedVCPU?](repeating: nil, count: config.vcpus)
        while let (tag, payload) = try reader.next() {
            switch tag {
            case StateStream.devices:
                guard devices == nil else { throw StateStreamError.malformed("two device sections") }
                devices = try Self.decodeSection(SavedDevices.self, payload, "device")
            case StateStream.vcpu:
                let v = try Self.decodeSection(SavedVCPU.self, payload, "vCPU")
                guard v.index >= 0 && v.index < cpus.count, cpus[v.index] == nil else {
                    throw StateStreamError.malformed("vCPU section for vCPU \(v.index) (the machine has \(cpus.count); each once)")
                }
                guard (v.emulator == nil) != (v.kvm == nil), (v.kvm != nil) == (accel == .kvm) else {
                    throw StateStreamError.malformed("vCPU \(v.index)'s state is not for the \(accel.rawValue) backend")
                }
                cpus[v.index] = v
            case StateStream.memory:
                try applyMemory(payload)
            default:
                throw StateStreamError.malformed("section \(StateStream.tagName(tag)) out of place")
            }
        }
        guard let devices else { throw StateStreamError.malformed("no device section") }
        let saved = cpus.compactMap { $0 }
        guard saved.count == cpus.count else { throw StateStreamError.malformed("a vCPU's state is missing") }
        try applyDevices(devices)
        let vcpus = runner.vcpus
        guard vcpus.count == saved.count else { throw VMMError.machine("vCPU count differs") }
        do {
            if let vm = backend as? KVMVirtualMachine {
                guard let k = devices.kvm else { throw StateStreamError.malformed("no in-kernel device state for a KVM machine") }
                try vm.restoreState(k)
            }
            for (v, s) in zip(vcpus, saved) {
                if let e = v as? EmulatorVCPU, let state = s.emulator { try e.restore(state) }
                else if let k = v as? KVMVCPU, let state = s.kvm { try k.restoreState(state) }
                else { throw StateStreamError.malformed("vCPU \(v.index)'s state does not fit its backend") }
            }
        } catch let error as StateStreamError { throw error } catch {
            throw StateStreamError.malformed("\(error)")
        }
        runner.discardInitialStates()
    }

    private static func decodeSection<T: Decodable>(_ t: T.Type, _ payload: [UInt8], _ what: String) throws -> T {
        do { return try JSONDecoder().decode(t, from: Data(payload)) } catch {
            throw StateStreamError.malformed("the \(what) section does not decode")
        }
    }

    private func applyMemory(_ payload: [UInt8]) throws {
        let page = StateStream.pageSize
        guard payload.count > 8, (payload.count - 8) % page == 0 else {
            throw StateStreamError.malformed("a memory section is not a whole number of pages")
        }
        let gpa = u64(payload, 0), count = payload.count - 8
        guard gpa % UInt64(page) == 0,
              let region = memory.regions.first(where: { gpa >= $0.guestBase && gpa < $0.guestEnd }),
              UInt64(count) <= region.guestEnd - gpa else {
            throw StateStreamError.malformed("memory range 0x\(String(gpa, radix: 16))+\(count) is outside guest RAM")
        }
        payload.withUnsafeBytes { p in
            // SAFETY: [gpa, gpa + count) lies inside this region (checked above).
            memcpy(region.host + Int(gpa - region.guestBase), p.baseAddress! + 8, count)
        }
    }

    private func applyDevices(_ s: SavedDevices) throws {
        let devices = self.devices, virtio = self.virtio.all
        guard s.virtio.count == virtio.count, (s.pic == nil) == (devices.irqChip == nil),
              (s.pit == nil) == (devices.pit == nil) else {
            throw StateStreamError.malformed("the saved devices do not match the machine's")
        }
        try deviceLock.withLock {
            for (fn, snap) in zip(virtio, s.virtio) where !fn.restore(snap) {
                throw StateStreamError.malformed("a virtio device's saved state does not fit")
            }
            devices.com1.restore(s.com1)
            devices.keyboardController.restore(s.keyboardController)
            devices.rtc.restore(s.rtc)
            devices.acpiPM.restore(s.acpiPM)
            devices.irqChip?.withChips { pic, ioapic in
                if let p = s.pic { pic.restore(p) }
                if let io = s.ioapic { ioapic.restore(io) }
            }
            if let pit = s.pit { devices.pit?.restore(pit) }
            devices.pciHost.restore(s.pciHost)   // last: remaps every BAR the functions hold
        }
    }
}

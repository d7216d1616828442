import GuestMemory
import Hypervisor
import KVM

/// Why the KVM tests are skipped here (printed once), or nil when /dev/kvm is usable.
let kvmSkipReason: String? = {
    let reason = KVMSystem.unavailabilityReason()
    if let reason { print("KVMTests: SKIPPING tests that need /dev/kvm: \(reason)") }
    return reason
}()
let kvmUsable = kvmSkipReason == nil

/// A tiny machine: RAM, one VM, and helpers to place code and descriptor tables.
final class TestMachine {
    let memory: GuestMemory
    let vm: KVMVirtualMachine

    init(ram: Int = 1 << 20, configuration: KVMVirtualMachine.Configuration = .init()) throws {
        memory = try GuestMemory(size: ram)
        vm = try KVMSystem().createVirtualMachine(memory: memory, configuration: configuration)
    }

    func load(_ bytes: [UInt8], at address: UInt64) throws {
        try memory.write(bytes: bytes, at: address)
    }

    /// A GDT at `base`: null, 0x08 flat 32-bit code, 0x10 flat data, 0x18 64-bit code.
    func writeGDT(at base: UInt64) throws {
        let entries: [UInt64] = [
            0,
            0x00CF_9B00_0000_FFFF,  // 0x08: code, 32-bit, 4 GiB, accessed
            0x00CF_9300_0000_FFFF,  // 0x10: data, 4 GiB, accessed
            0x00AF_9B00_0000_FFFF,  // 0x18: code, 64-bit
        ]
        for (i, e) in entries.enumerated() { try memory.write(e, at: base + UInt64(i * 8)) }
    }

    /// A 32-bit interrupt gate for `vector` to `handler` (selector 0x08) in the IDT at `base`.
    func setGate32(idt base: UInt64, vector: Int, handler: UInt32) throws {
        let lo = UInt64(handler & 0xFFFF) | UInt64(0x08) << 16 | UInt64(0x8E00) << 32
            | UInt64(handler >> 16) << 48
        try memory.write(lo, at: base + UInt64(vector * 8))
    }

    /// A 64-bit interrupt gate for `vector` to `handler` (selector 0x18) in the IDT at `base`.
    func setGate64(idt base: UInt64, vector: Int, handler: UInt64) throws {
        let lo = (handler & 0xFFFF) | UInt64(0x18) << 16 | UInt64(0x8E00) << 32 | ((handler >> 16) & 0xFFFF) << 48
        try memory.write(lo, at: base + UInt64(vector * 16))
        try memory.write(handler >> 32, at: base + UInt64(vector * 16) + 8)
    }

    /// Long mode with the low 4 GiB identity-mapped by 2 MiB pages: PML4 0x8000, PDPT 0x9000,
    /// page directories 0xA000-0xDFFF. GDT at 0x500, IDT at 0x2000.
    func longModeState(entry: UInt64) throws -> X86CPUState {
        try writeGDT(at: 0x500)
        try memory.write(UInt64(0x9000 | 3), at: 0x8000)
        for gib in 0..<4 {
            let pd = UInt64(0xA000 + gib * 0x1000)
            try memory.write(pd | 3, at: 0x9000 + UInt64(gib * 8))
            for i in 0..<512 {
                try memory.write(UInt64(gib) << 30 | UInt64(i) << 21 | 0x83, at: pd + UInt64(i * 8))
            }
        }
        var s = X86CPUState()
        s.sregs.cs = .flat64(selector: 0x18, code: true)
        let data = X86Segment.flat64(selector: 0x10, code: false)
        s.sregs.ds = data; s.sregs.es = data; s.sregs.fs = data; s.sregs.gs = data; s.sregs.ss = data
        s.sregs.gdt = X86DescriptorTable(base: 0x500, limit: 31)
        s.sregs.idt = X86DescriptorTable(base: 0x2000, limit: 256 * 16 - 1)
        s.sregs.cr3 = 0x8000
        s.sregs.cr4 = X86Bits.cr4PAE
        s.sregs.cr0 = X86Bits.cr0PE | X86Bits.cr0PG | X86Bits.cr0ET
        s.sregs.efer = X86Bits.eferLME | X86Bits.eferLMA
        s.regs.rip = entry
        s.regs.rsp = 0x7000
        return s
    }

    /// Flat 32-bit protected mode, paging off, with the GDT at `gdt` (written here).
    func protectedModeState(gdt: UInt64 = 0x500, idt: UInt64 = 0x2000, entry: UInt64) throws -> X86CPUState {
        try writeGDT(at: gdt)
        var s = X86CPUState()
        s.sregs.cs = .flat32(selector: 0x08, code: true)
        let data = X86Segment.flat32(selector: 0x10, code: false)
        s.sregs.ds = data; s.sregs.es = data; s.sregs.fs = data; s.sregs.gs = data; s.sregs.ss = data
        s.sregs.gdt = X86DescriptorTable(base: gdt, limit: 4 * 8 - 1)
        s.sregs.idt = X86DescriptorTable(base: idt, limit: 256 * 8 - 1)
        s.sregs.cr0 = X86Bits.cr0PE | X86Bits.cr0ET
        s.regs.rip = entry
        s.regs.rsp = 0x9000
        return s
    }
}

/// Runs until an exit other than `.interrupted` (bounded).
func nextExit(_ vcpu: KVMVCPU) throws -> VCPUExit {
    for _ in 0..<100 {
        let exit = try vcpu.run()
        if case .interrupted = exit { continue }
        return exit
    }
    return .failure("test: only interruptions")
}

/// The value of an I/O write exit as an integer (first item only).
func ioWrite(_ exit: VCPUExit) -> (port: UInt16, size: Int, value: UInt32)? {
    guard case let .io(io) = exit, io.isWrite else { return nil }
    var v: UInt32 = 0
    for i in 0..<io.size { v |= UInt32(io.data.load(fromByteOffset: i, as: UInt8.self)) << (8 * i) }
    return (io.port, io.size, v)
}

func describe(_ exit: VCPUExit) -> String {
    switch exit {
    case let .io(io): return "io(port 0x\(String(io.port, radix: 16)), size \(io.size), write \(io.isWrite))"
    case let .mmio(m): return "mmio(0x\(String(m.address, radix: 16)), size \(m.size), write \(m.isWrite))"
    default: return "\(exit)"
    }
}

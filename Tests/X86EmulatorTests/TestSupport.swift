import Foundation
import GuestMemory
import Hypervisor
@testable import X86Emulator

enum TestError: Error, CustomStringConvertible {
    case assembler(String)
    var description: String {
        switch self { case let .assembler(s): return "assembler failed: \(s)" }
    }
}

/// Assembles Intel-syntax source with GNU as into a flat binary (tests only).
enum Assembler {
    nonisolated(unsafe) static var cache: [String: [UInt8]] = [:]
    static let lock = NSLock()

    static func assemble(_ source: String, bits: Int = 64, origin: UInt64 = 0) throws -> [UInt8] {
        let key = "\(bits):\(origin):\(source)"
        lock.lock(); if let c = cache[key] { lock.unlock(); return c }; lock.unlock()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("x86emu-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let src = dir.appendingPathComponent("t.s"), obj = dir.appendingPathComponent("t.o"), bin = dir.appendingPathComponent("t.bin")
        let text = ".intel_syntax noprefix\n.code\(bits)\n.text\n" + source + "\n"
        try text.write(to: src, atomically: true, encoding: .utf8)
        try run("/usr/bin/as", ["--64", "-o", obj.path, src.path])
        try run("/usr/bin/objcopy", ["-O", "binary", "-j", ".text", obj.path, bin.path])
        let bytes = [UInt8](try Data(contentsOf: bin))
        lock.lock(); cache[key] = bytes; lock.unlock()
        return bytes
    }

    /// Runs a build tool; its stderr becomes the error when it fails.
    static func run(_ tool: String, _ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            let msg = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw TestError.assembler(msg)
        }
    }
}

/// A small machine for running snippets: 32 MiB RAM, identity-mapped long mode
/// (2 MiB pages for the first 1 GiB), code at 0x100000, stack below 0x90000.
final class TestMachine {
    let memory: GuestMemory
    let vm: EmulatorVirtualMachine
    let vcpu: EmulatorVCPU
    var cpu: X86CPU { vcpu.cpu }
    var output: [UInt8] = []
    var ioReads: [UInt16: UInt32] = [:]
    var mmio: [UInt64: UInt64] = [:]
    static let codeBase: UInt64 = 0x10_0000

    convenience init(memorySize: Int = 32 << 20) throws {
        try self.init(memory: try GuestMemory(size: memorySize))
    }

    /// A machine on existing guest memory (several machines may share one).
    init(memory: GuestMemory) throws {
        self.memory = memory
        vm = EmulatorVirtualMachine(memory: memory)
        vcpu = try vm.createEmulatorVCPU(index: 0, startState: .runnable)
        vcpu.cpu.cpuLevel = .v3   // everything implemented; tests of lower levels set theirs
    }

    /// Long mode with flat segments, SSE enabled, paging identity map.
    func setupLongMode() throws {
        let pml4: UInt64 = 0x1000, pdpt: UInt64 = 0x2000, pd: UInt64 = 0x3000
        try memory.write(pdpt | 3, at: pml4)
        try memory.write(pd | 3, at: pdpt)
        for i in 0..<512 { try memory.write(UInt64(i) << 21 | 0x83, at: pd + UInt64(i) * 8) }
        // GDT: null, null, code64 (0x10), data (0x18), code32 (0x20), user code32 0x2b.. etc
        let gdt: [UInt64] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_9B00_0000_FFFF,
                             0x00CF_F300_0000_FFFF, 0x00AF_FB00_0000_FFFF]
        for (i, e) in gdt.enumerated() { try memory.write(e, at: 0x500 + UInt64(i * 8)) }
        var s = X86SpecialRegisters()
        s.cs = .flat64(selector: 0x10, code: true)
        let data = X86Segment.flat32(selector: 0x18, code: false)
        s.ds = data; s.es = data; s.ss = data; s.fs = data; s.gs = data
        s.gdt = X86DescriptorTable(base: 0x500, limit: UInt16(gdt.count * 8 - 1))
        s.idt = X86DescriptorTable(base: 0, limit: 0)
        s.cr0 = X86Bits.cr0PE | X86Bits.cr0PG | X86Bits.cr0ET | X86Bits.cr0MP | X86Bits.cr0NE
        s.cr3 = pml4
        s.cr4 = X86Bits.cr4PAE | X86Bits.cr4OSFXSR | X86Bits.cr4OSXMMEXCPT
        s.efer = X86Bits.eferLME | X86Bits.eferLMA | X86Bits.eferNXE | X86Bits.eferSCE
        cpu.setSpecialRegisters(s)
        var r = X86Registers()
        r.rip = TestMachine.codeBase
        r.rsp = 0x8_F000
        cpu.setRegisters(r)
    }

    func load(_ code: [UInt8], at address: UInt64 = TestMachine.codeBase) throws {
        try memory.write(bytes: code, at: address)
    }

    /// Runs until HLT (with IF=0) or shutdown, serving I/O: writes to port 0xE9 are
    /// collected in `output`; reads return `ioReads[port]` or all ones.
    @discardableResult
    func run(maxExits: Int = 100_000) throws -> VCPUExit {
        for _ in 0..<maxExits {
            let exit = try vcpu.run()
            switch exit {
            case let .io(io):
                if io.isWrite {
                    if io.port == 0xE9 { output.append(io.data.load(as: UInt8.self)) }
                } else {
                    io.data.storeBytes(of: ioReads[io.port] ?? 0xFFFF_FFFF, as: UInt32.self)
                }
            case let .mmio(m):
                if m.isWrite { mmio[m.address] = m.data.load(as: UInt64.self) }
                else { m.data.storeBytes(of: mmio[m.address] ?? 0, as: UInt64.self) }
            default:
                return exit
            }
        }
        return .failure("too many exits")
    }

    var outputString: String { String(decoding: output, as: UTF8.self) }
}

extension VCPUExit {
    var isHalt: Bool { if case .halt = self { return true }; return false }
    var shutdownReason: String? { if case let .shutdown(r) = self { return r }; return nil }
}

import Testing
import GuestMemory
import Hypervisor
@testable import Boot

@Suite struct MultibootTests {
    static let headerSource = """
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002
        .long 0x00000003
        .long -(0x1BADB002 + 3)

        """

    func checkInfo(_ r: BootResult, _ mem: GuestMemory, kernelPath: String, cmdline: String, initrd: [UInt8]) throws {
        #expect(r.format == .multiboot)
        #expect(r.entryMode == .protected32)
        #expect(r.cpuState.regs.rax == 0x2BAD_B002)
        #expect(r.cpuState.sregs.cr0 & X86Bits.cr0PG == 0)
        let info = r.cpuState.regs.rbx
        let flags = try mem.read(UInt32.self, at: info)
        #expect(flags & 0x1 != 0 && flags & 0x4 != 0 && flags & 0x8 != 0 && flags & 0x40 != 0)
        #expect(try mem.read(UInt32.self, at: info + 4) == 639)                        // mem_lower KiB
        #expect(try mem.read(UInt32.self, at: info + 8) == (64 << 10) - 1024)           // mem_upper KiB
        let cmd = try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: info + 16)), maxLength: 512)
        #expect(cmd == kernelPath + " " + cmdline)
        #expect(try mem.read(UInt32.self, at: info + 20) == 1) // mods_count
        let mods = UInt64(try mem.read(UInt32.self, at: info + 24))
        let start = UInt64(try mem.read(UInt32.self, at: mods))
        let end = UInt64(try mem.read(UInt32.self, at: mods + 4))
        #expect(end - start == UInt64(initrd.count) && start % 4096 == 0)
        #expect(try Support.bytes(mem, start, initrd.count) == initrd)
        // mmap: size-prefixed entries matching the e820 map.
        let mmapLength = try mem.read(UInt32.self, at: info + 44)
        let mmapAddr = UInt64(try mem.read(UInt32.self, at: info + 48))
        #expect(Int(mmapLength) == r.e820.count * 24)
        for (i, e) in r.e820.enumerated() {
            let off = mmapAddr + UInt64(i * 24)
            #expect(try mem.read(UInt32.self, at: off) == 20)
            #expect(try mem.read(UInt64.self, at: off + 4) == e.address)
            #expect(try mem.read(UInt64.self, at: off + 12) == e.size)
            #expect(try mem.read(UInt32.self, at: off + 20) == e.kind.rawValue)
        }
    }

    @Test func elfMultibootKernel() throws {
        let path = try Support.buildELF(Self.headerSource + haltKernelSource, bits: 32, name: "mb32")
        let mem = try Support.memory()
        let initrd = [UInt8](repeating: 0x77, count: 3000)
        let r = try BootLoader.load(image: KernelImage(path: path), initrd: initrd, initrdPath: "/boot/initrd",
                                    cmdline: "console=com0", memory: mem)
        try checkInfo(r, mem, kernelPath: path, cmdline: "console=com0", initrd: initrd)
        // _start follows the 12-byte header.
        #expect(r.cpuState.regs.rip == 0x20_000C)
        #expect(try mem.read(UInt8.self, at: r.cpuState.regs.rip) == 0xF4)
        let mods = UInt64(try mem.read(UInt32.self, at: r.cpuState.regs.rbx + 24))
        #expect(try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: mods + 8)), maxLength: 64) == "/boot/initrd")
    }

    /// A flat binary with the a.out kludge: header at file offset 64, loaded at 0x30_0000.
    static func kludgeImage(loadEnd: UInt32 = 0, bssEnd: UInt32 = 0x30_3000, entry: UInt32 = 0x30_0080) -> [UInt8] {
        var b = [UInt8](repeating: 0x90, count: 0x1000)
        let flags: UInt32 = 0x1_0003
        b.put(MultibootHeader.magic, at: 64)
        b.put(flags, at: 68)
        b.put(0 &- (MultibootHeader.magic &+ flags), at: 72)
        b.put(UInt32(0x30_0040), at: 76) // header_addr
        b.put(UInt32(0x30_0000), at: 80) // load_addr
        b.put(loadEnd, at: 84)
        b.put(bssEnd, at: 88)
        b.put(entry, at: 92)
        b[0x80] = 0xF4
        return b
    }

    @Test func aoutKludgeImage() throws {
        let mem = try Support.memory()
        try mem.fill(0xEE, at: 0x30_1000, length: 0x2000)
        let initrd = [UInt8](repeating: 1, count: 100)
        let r = try BootLoader.load(image: KernelImage(bytes: Self.kludgeImage(), path: "/k/mb.bin"), initrd: initrd,
                                    cmdline: "a b", memory: mem)
        try checkInfo(r, mem, kernelPath: "/k/mb.bin", cmdline: "a b", initrd: initrd)
        #expect(r.cpuState.regs.rip == 0x30_0080)
        #expect(try mem.read(UInt8.self, at: 0x30_0080) == 0xF4)
        #expect(r.kernelRange == 0x30_0000..<0x30_3000)
        #expect(try Support.bytes(mem, 0x30_1000, 0x2000).allSatisfy { $0 == 0 }) // bss zeroed
    }

    @Test func badKludgeFieldsAreRejected() throws {
        let mem = try Support.memory()
        for (what, img) in [("entry outside", Self.kludgeImage(entry: 0x40_0000)),
                            ("load_end past file", Self.kludgeImage(loadEnd: 0x30_2000)),
                            ("bss before end", Self.kludgeImage(bssEnd: 0x30_0800))] {
            #expect(throws: BootError.self, "\(what)") {
                try BootLoader.load(image: KernelImage(bytes: img, path: what), memory: mem)
            }
        }
    }

    @Test func unsupportedRequiredFlagIsRejected() throws {
        var b = [UInt8](repeating: 0, count: 4096)
        let flags: UInt32 = 1 << 5
        b.put(MultibootHeader.magic, at: 0); b.put(flags, at: 4); b.put(0 &- (MultibootHeader.magic &+ flags), at: 8)
        let mem = try Support.memory()
        #expect(throws: BootError.self) { try BootLoader.load(image: KernelImage(bytes: b, path: "mb"), memory: mem) }
    }
}

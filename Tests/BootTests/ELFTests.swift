import Testing
import GuestMemory
import Hypervisor
@testable import Boot

@Suite struct ELFTests {
    @Test func plainELF64EntersLongModeAtEntry() throws {
        let path = try Support.buildELF(haltKernelSource, bits: 64, name: "plain64")
        let mem = try Support.memory()
        // Dirty the bss first: the loader must zero p_memsz beyond p_filesz.
        try mem.fill(0xEE, at: 0x20_0000, length: 0x4000)
        let r = try BootLoader.load(kernel: path, cmdline: "hello", memory: mem)
        #expect(r.format == .elf(is64Bit: true, pvhEntry: nil))
        #expect(r.entryMode == .long64)
        #expect(r.cpuState.regs.rip == 0x20_0000)
        #expect(r.cpuState.sregs.efer & X86Bits.eferLMA != 0)
        #expect(try mem.read(UInt8.self, at: 0x20_0000) == 0xF4) // hlt
        #expect(r.kernelRange.lowerBound == 0x20_0000)
        // .data is 0x11223344, the bss after it is zero.
        let end = r.kernelRange.upperBound
        #expect(try Support.bytes(mem, end - 8192, 8192).allSatisfy { $0 == 0 })
        #expect(try mem.readCString(at: r.cpuState.regs.rsi, maxLength: 10) == "hello")
    }

    @Test func plainELF32EntersProtectedMode() throws {
        let path = try Support.buildELF(haltKernelSource, bits: 32, name: "plain32")
        let mem = try Support.memory()
        let r = try BootLoader.load(kernel: path, memory: mem)
        #expect(r.entryMode == .protected32)
        #expect(r.cpuState.regs.rip == 0x20_0000)
        #expect(r.cpuState.sregs.cr0 & X86Bits.cr0PG == 0)
        #expect(r.cpuState.sregs.cs.db && r.cpuState.sregs.cs.limit == 0xFFFF_FFFF)
    }

    @Test func pvhStartInfo() throws {
        let path = try Support.buildELF(haltKernelSource + pvhNoteSource, bits: 64, name: "pvh64")
        let mem = try Support.memory(64 << 20)
        let initrd = [UInt8](repeating: 0x5A, count: 6000)
        let r = try BootLoader.load(image: KernelImage(path: path), initrd: initrd, cmdline: "console=hvc0",
                                    memory: mem, vcpus: 1)
        #expect(r.format == .elf(is64Bit: true, pvhEntry: 0x20_0000))
        #expect(try KernelImage(path: path).isLinux == false, "a PVH note without the guest-OS note is not Linux")
        #expect(r.entryMode == .protected32)
        let s = r.cpuState
        #expect(s.regs.rip == 0x20_0000)
        #expect(s.regs.rbx == BootLayout.zeroPage)
        #expect(s.sregs.cr0 & X86Bits.cr0PE != 0 && s.sregs.cr0 & X86Bits.cr0PG == 0)
        #expect(s.sregs.cr4 == 0 && s.sregs.efer == 0)
        #expect(s.sregs.tr.type == 0xB && s.sregs.tr.limit == 0x67)

        let si = s.regs.rbx
        #expect(try mem.read(UInt32.self, at: si) == PVH.startInfoMagic)
        #expect(try mem.read(UInt32.self, at: si + 4) == 1)
        #expect(try mem.read(UInt32.self, at: si + 0xC) == 1) // nr_modules
        let modlist = try mem.read(UInt64.self, at: si + 0x10)
        let cmdline = try mem.read(UInt64.self, at: si + 0x18)
        #expect(try mem.readCString(at: cmdline, maxLength: 64) == "console=hvc0")
        #expect(try mem.read(UInt64.self, at: si + 0x20) == 0xE_0000) // rsdp
        let memmap = try mem.read(UInt64.self, at: si + 0x28)
        let entries = try mem.read(UInt32.self, at: si + 0x30)
        #expect(Int(entries) == r.e820.count)
        for (i, e) in r.e820.enumerated() {
            let off = memmap + UInt64(i * 24)
            #expect(try mem.read(UInt64.self, at: off) == e.address)
            #expect(try mem.read(UInt64.self, at: off + 8) == e.size)
            #expect(try mem.read(UInt32.self, at: off + 16) == e.kind.rawValue)
        }
        let modAddr = try mem.read(UInt64.self, at: modlist)
        let modSize = try mem.read(UInt64.self, at: modlist + 8)
        #expect(modSize == 6000 && modAddr % 4096 == 0)
        #expect(try Support.bytes(mem, modAddr, 6000) == initrd)
    }

    /// A minimal ELF64 header + one program header, for malformed-input tests.
    static func elf64(phoff: UInt64 = 64, offset: UInt64 = 0x1000, filesz: UInt64 = 16, memsz: UInt64 = 16,
                      paddr: UInt64 = 0x20_0000, fileSize: Int = 0x1010) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: fileSize)
        b[0] = 0x7F; b[1] = 0x45; b[2] = 0x4C; b[3] = 0x46; b[4] = 2; b[5] = 1; b[6] = 1
        b.put(UInt16(2), at: 16); b.put(UInt16(62), at: 18); b.put(UInt32(1), at: 20)
        b.put(paddr, at: 24); b.put(phoff, at: 32)
        b.put(UInt16(64), at: 52); b.put(UInt16(56), at: 54); b.put(UInt16(1), at: 56)
        let h = Int(min(phoff, UInt64(fileSize - 56)))
        b.put(UInt32(1), at: h); b.put(UInt32(7), at: h + 4)
        b.put(offset, at: h + 8); b.put(paddr, at: h + 16); b.put(paddr, at: h + 24)
        b.put(filesz, at: h + 32); b.put(memsz, at: h + 40)
        return b
    }

    @Test func malformedELFsAreRejectedWithoutTrapping() throws {
        let mem = try Support.memory(16 << 20)
        // Well-formed control case loads.
        _ = try BootLoader.load(image: KernelImage(bytes: Self.elf64(), path: "ok"), memory: mem)
        let bad: [(String, [UInt8])] = [
            ("filesz > memsz", Self.elf64(filesz: 32, memsz: 16)),
            ("segment past file end", Self.elf64(offset: 0x1008)),
            ("huge offset", Self.elf64(offset: UInt64.max - 4)),
            ("phdrs outside file", Self.elf64(phoff: 0xFFFF_FFFF_FFFF)),
            ("wraps address space", Self.elf64(memsz: UInt64.max, paddr: 0x20_0000)),
            ("outside RAM", Self.elf64(paddr: 0x4000_0000)),
            ("in the loader area", Self.elf64(paddr: 0x8000)),
            ("in the firmware area", Self.elf64(paddr: 0xE_0000)),
        ]
        for (what, bytes) in bad {
            #expect(throws: BootError.self, "\(what)") {
                try BootLoader.load(image: KernelImage(bytes: bytes, path: what), memory: mem)
            }
        }
    }

    @Test func truncatedELFIsRejected() {
        let b = Array(Self.elf64().prefix(40))
        #expect(throws: BootError.self) { try KernelImage(bytes: b, path: "short") }
    }
}

@Suite struct ELFEntryTests {
    /// vmlinux-style: segments linked at a virtual address, loaded at p_paddr; an e_entry in
    /// the virtual range is translated to the physical one.
    @Test func virtualEntryIsTranslatedToPhysical() throws {
        var b = ELFTests.elf64(paddr: 0x20_0000)
        b.put(UInt64(0xFFFF_FFFF_8100_0008), at: 24)  // e_entry (virtual)
        b.put(UInt64(0xFFFF_FFFF_8100_0000), at: 64 + 16) // p_vaddr
        let elf = try ELFImage(bytes: b, path: "v")
        #expect(elf.physicalEntry == 0x20_0008)
        let mem = try Support.memory(16 << 20)
        let r = try BootLoader.load(image: KernelImage(bytes: b, path: "v"), memory: mem)
        #expect(r.cpuState.regs.rip == 0x20_0008)
    }

    @Test func unreadableInitrdIsNamed() throws {
        let path = try Support.buildELF(haltKernelSource, bits: 64, name: "k")
        let mem = try Support.memory()
        #expect(throws: BootError.unreadableFile(path: "/nonexistent/initrd.img", reason: "No such file or directory")) {
            try BootLoader.load(kernel: path, initrd: "/nonexistent/initrd.img", memory: mem)
        }
    }
}

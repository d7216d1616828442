import Testing
import GuestMemory
import Hypervisor
@testable import Boot

/// An ELF32 with a "Linux" note (what every vmlinux carries) and no PVH note.
let linuxNoteSource = """
    .pushsection .note.Linux, "a", @note
    .align 4
    .long 6
    .long 4
    .long 0x101
    .asciz "Linux"
    .align 4
    .long 0
    .popsection

    """

@Suite struct Vmlinux32Tests {
    @Test func i386VmlinuxGetsThe32BitLinuxBootProtocol() throws {
        let path = try Support.buildELF(haltKernelSource + linuxNoteSource, bits: 32, name: "vmlinux32")
        let mem = try Support.memory(64 << 20)
        let initrd = [UInt8](repeating: 0xA5, count: 5000)
        let r = try BootLoader.load(image: KernelImage(path: path), initrd: initrd, cmdline: "console=ttyS0",
                                    memory: mem, vcpus: 1)
        #expect(r.format == .elf(is64Bit: false, pvhEntry: nil))
        #expect(r.entryMode == .protected32)
        #expect(r.bootInfoAddress == BootLayout.zeroPage)
        let s = r.cpuState
        #expect(s.regs.rip == 0x20_0000)
        #expect(s.regs.rsi == BootLayout.zeroPage)
        #expect(s.sregs.cr0 & X86Bits.cr0PE != 0 && s.sregs.cr0 & X86Bits.cr0PG == 0)
        #expect(s.sregs.cs.db && s.sregs.cs.selector == 0x10)
        // boot_params: a setup header the kernel accepts, no KEEP_SEGMENTS.
        let zp = BootLayout.zeroPage
        #expect(try mem.read(UInt16.self, at: zp + 0x1FE) == 0xAA55)
        #expect(try mem.read(UInt32.self, at: zp + 0x202) == LinuxSetupHeader.magic)
        #expect(try mem.read(UInt16.self, at: zp + 0x206) >= 0x207)
        let flags = try mem.read(UInt8.self, at: zp + 0x211)
        #expect(flags & LinuxSetupHeader.loadedHigh != 0 && flags & LinuxSetupHeader.keepSegments == 0)
        #expect(try mem.read(UInt32.self, at: zp + 0x214) == 0x20_0000) // code32_start
        let cmd = try mem.read(UInt32.self, at: zp + 0x228)
        #expect(try mem.readCString(at: UInt64(cmd), maxLength: 64) == "console=ttyS0")
        let rdAddr = try mem.read(UInt32.self, at: zp + 0x218)
        let rdSize = try mem.read(UInt32.self, at: zp + 0x21C)
        #expect(rdSize == 5000 && rdAddr % 4096 == 0 && UInt64(rdAddr) >= r.kernelRange.upperBound)
        #expect(try Support.bytes(mem, UInt64(rdAddr), 5000) == initrd)
        #expect(Int(try mem.read(UInt8.self, at: zp + 0x1E8)) == r.e820.count)
        #expect(try mem.read(UInt64.self, at: zp + 0x070) == 0xE_0000) // acpi_rsdp_addr
    }

    @Test func plainELF32WithoutTheLinuxNoteIsStillAPlainELF() throws {
        let path = try Support.buildELF(haltKernelSource, bits: 32, name: "plain32b")
        let mem = try Support.memory()
        let r = try BootLoader.load(kernel: path, cmdline: "x", memory: mem)
        #expect(r.bootInfoAddress == nil)
        #expect(try mem.readCString(at: r.cpuState.regs.rsi, maxLength: 4) == "x")
    }
}

import Foundation
import Testing
import GuestMemory
import Hypervisor
@testable import Boot

/// A bzImage-shaped byte array with a chosen setup header (no real code).
struct SyntheticBzImage {
    var version: UInt16 = 0x020F
    var loadflags: UInt8 = 0x01
    var xloadflags: UInt16 = 0x0001 | 0x0002
    var initrdAddrMax: UInt32 = 0x7FFF_FFFF
    var cmdlineSize: UInt32 = 2047
    var prefAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 0x200_0000
    var payload: [UInt8] = Array(0..<255) + Array(repeating: 0xCC, count: 4096)

    var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: 5 * 512)
        b[0x1F1] = 4 // setup_sects
        b.put(UInt16(0xAA55), at: 0x1FE)
        b.put(UInt16(0x66EB), at: 0x200) // jmp: header ends at 0x202 + 0x66 = 0x268
        b[0x201] = 0x66
        b.put(LinuxSetupHeader.magic, at: 0x202)
        b.put(version, at: 0x206)
        b[0x211] = loadflags
        b.put(UInt32(0x10_0000), at: 0x214)
        b.put(initrdAddrMax, at: 0x22C)
        b.put(UInt32(0x20_0000), at: 0x230)
        b[0x234] = 1
        b.put(xloadflags, at: 0x236)
        b.put(cmdlineSize, at: 0x238)
        b.put(prefAddress, at: 0x258)
        b.put(initSize, at: 0x260)
        return b + payload
    }
}

@Suite struct LinuxBootTests {
    @Test func longModeEntryAndBootParams() throws {
        let mem = try Support.memory(128 << 20)
        let image = try KernelImage(bytes: SyntheticBzImage().bytes, path: "bz")
        let initrd = [UInt8](repeating: 0xAB, count: 10_000)
        let r = try BootLoader.load(image: image, initrd: initrd, cmdline: "console=ttyS0 quiet",
                                    memory: mem, vcpus: 2, pciRoutes: [])
        #expect(r.entryMode == .long64)
        let s = r.cpuState
        #expect(s.regs.rip == 0x10_0200)
        #expect(s.regs.rsi == BootLayout.zeroPage)
        #expect(s.regs.rflags & 0x200 == 0)
        #expect(s.sregs.cr0 & (X86Bits.cr0PE | X86Bits.cr0PG) == X86Bits.cr0PE | X86Bits.cr0PG)
        #expect(s.sregs.cr4 & X86Bits.cr4PAE != 0)
        #expect(s.sregs.efer & (X86Bits.eferLME | X86Bits.eferLMA) == X86Bits.eferLME | X86Bits.eferLMA)
        #expect(s.sregs.cs.selector == 0x10 && s.sregs.cs.l && !s.sregs.cs.db)
        #expect(s.sregs.ds.selector == 0x18 && s.sregs.ss.selector == 0x18)
        #expect(s.sregs.cr3 == BootLayout.pml4)

        // The protected-mode kernel sits at 1 MiB.
        #expect(try Support.bytes(mem, 0x10_0000, 255) == Array(0..<255))
        let zp = BootLayout.zeroPage
        #expect(try mem.read(UInt32.self, at: zp + 0x202) == LinuxSetupHeader.magic)
        #expect(try mem.read(UInt8.self, at: zp + 0x210) == 0xFF)            // type_of_loader
        #expect(try mem.read(UInt8.self, at: zp + 0x211) & 0x81 == 0x81)     // LOADED_HIGH | CAN_USE_HEAP
        #expect(try mem.read(UInt16.self, at: zp + 0x1FA) == 0xFFFF)         // vid_mode
        #expect(try mem.read(UInt16.self, at: zp + 0x224) == 0xFE00 - 0x200) // heap_end_ptr
        #expect(try mem.read(UInt32.self, at: zp + 0x23C) == 0)              // hardware_subarch
        let cmdPtr = try mem.read(UInt32.self, at: zp + 0x228)
        #expect(try mem.readCString(at: UInt64(cmdPtr), maxLength: 100) == "console=ttyS0 quiet")
        #expect(try mem.read(UInt64.self, at: zp + 0x70) == r.acpi?.rsdp)
        #expect(r.acpi?.rsdp == 0xE_0000)

        // Initrd: page aligned, as high as possible, the bytes intact.
        let rdAddr = UInt64(try mem.read(UInt32.self, at: zp + 0x218))
        let rdSize = try mem.read(UInt32.self, at: zp + 0x21C)
        #expect(rdSize == 10_000)
        #expect(rdAddr % 4096 == 0)
        #expect(rdAddr + 10_000 <= 128 << 20 && rdAddr + 10_000 + 4096 > 128 << 20)
        #expect(try Support.bytes(mem, rdAddr, 10_000) == initrd)
        #expect(r.initrdRange == rdAddr..<(rdAddr + 10_000))

        // e820 in the zero page matches the result.
        let n = Int(try mem.read(UInt8.self, at: zp + 0x1E8))
        #expect(n == r.e820.count && n == 3)
        for (i, e) in r.e820.enumerated() {
            let off = zp + 0x2D0 + UInt64(i * 20)
            #expect(try mem.read(UInt64.self, at: off) == e.address)
            #expect(try mem.read(UInt64.self, at: off + 8) == e.size)
            #expect(try mem.read(UInt32.self, at: off + 16) == e.kind.rawValue)
        }
    }

    @Test func identityPageTablesMapFirst4GiBWith2MiBPages() throws {
        let mem = try Support.memory()
        _ = try EntryState.prepare(.long64, entry: 0x10_0000, memory: mem)
        let pml4e = try mem.read(UInt64.self, at: BootLayout.pml4)
        #expect(pml4e & ~0xFFF == BootLayout.pdpt && pml4e & 3 == 3)
        // Walk a few virtual addresses as the MMU would.
        for va: UInt64 in [0, 0x10_0200, 0x4000_0000, 0xBFFF_FFFF, 0xFEE0_0000, 0xFFFF_FFFF] {
            let pdpte = try mem.read(UInt64.self, at: BootLayout.pdpt + ((va >> 30) & 511) * 8)
            #expect(pdpte & 1 == 1)
            let pde = try mem.read(UInt64.self, at: (pdpte & ~0xFFF) + ((va >> 21) & 511) * 8)
            #expect(pde & 0x83 == 0x83, "PDE for 0x\(String(va, radix: 16)) must be a present writable 2 MiB page")
            #expect((pde & ~0x1F_FFFF) | (va & 0x1F_FFFF) == va)
        }
    }

    @Test func gdtHasFlatBootSegments() throws {
        let g64 = EntryState.gdtEntries(.long64)
        #expect(g64[2] == 0x00AF_9B00_0000_FFFF) // 64-bit code
        #expect(g64[3] == 0x00CF_9300_0000_FFFF) // flat data
        let g32 = EntryState.gdtEntries(.protected32)
        #expect(g32[2] == 0x00CF_9B00_0000_FFFF) // 32-bit code
        let mem = try Support.memory()
        try EntryState.writeGDT(.long64, into: mem)
        #expect(try mem.read(UInt64.self, at: BootLayout.gdt + 0x10) == g64[2])
    }

    @Test func i386KernelGets32BitEntry() throws {
        var bz = SyntheticBzImage()
        bz.xloadflags = 0 // no XLF_KERNEL_64: an i386 kernel
        let mem = try Support.memory()
        let r = try BootLoader.load(image: KernelImage(bytes: bz.bytes, path: "i386"), cmdline: "x",
                                    memory: mem, preferLongMode: true)
        #expect(r.entryMode == .protected32)
        #expect(r.cpuState.regs.rip == 0x10_0000)
        #expect(r.cpuState.regs.rsi == BootLayout.zeroPage)
        #expect(r.cpuState.regs.rbx == 0 && r.cpuState.regs.rdi == 0 && r.cpuState.regs.rbp == 0)
        #expect(r.cpuState.sregs.cr0 & X86Bits.cr0PG == 0 && r.cpuState.sregs.cr0 & X86Bits.cr0PE != 0)
        #expect(r.cpuState.sregs.efer == 0)
        #expect(r.cpuState.sregs.cs.selector == 0x10 && r.cpuState.sregs.cs.db && !r.cpuState.sregs.cs.l)
        #expect(r.cpuState.sregs.ds.selector == 0x18)
        #expect(try mem.read(UInt32.self, at: BootLayout.zeroPage + 0x214) == 0x10_0000) // code32_start
    }

    @Test func sixtyFourBitKernelHonoursPreferLongModeFalse() throws {
        let mem = try Support.memory()
        let r = try BootLoader.load(image: KernelImage(bytes: SyntheticBzImage().bytes, path: "bz"),
                                    memory: mem, preferLongMode: false)
        #expect(r.entryMode == .protected32)
        #expect(r.cpuState.regs.rip == 0x10_0000)
    }

    @Test func oldProtocolIsRejected() {
        var bz = SyntheticBzImage()
        bz.version = 0x0204
        #expect(throws: BootError.self) {
            try LinuxSetupHeader(bytes: bz.bytes, path: "old")
        }
        do { _ = try LinuxSetupHeader(bytes: bz.bytes, path: "old") } catch {
            #expect("\(error)".contains("2.4 is too old"))
        }
    }

    @Test func zImageIsRejected() {
        var bz = SyntheticBzImage()
        bz.loadflags = 0
        #expect(throws: BootError.self) { try LinuxSetupHeader(bytes: bz.bytes, path: "z") }
    }

    @Test func truncatedHeaderIsRejectedWithoutTrapping() {
        let bytes = Array(SyntheticBzImage().bytes.prefix(0x210))
        #expect(throws: BootError.self) { try LinuxSetupHeader(bytes: bytes, path: "t") }
    }

    @Test func commandLineLongerThanCmdlineSizeIsRejected() throws {
        var bz = SyntheticBzImage()
        bz.cmdlineSize = 300
        let mem = try Support.memory()
        #expect(throws: BootError.self) {
            try BootLoader.load(image: KernelImage(bytes: bz.bytes, path: "bz"),
                                cmdline: String(repeating: "a", count: 301), memory: mem)
        }
        _ = try BootLoader.load(image: KernelImage(bytes: bz.bytes, path: "bz"),
                                cmdline: String(repeating: "a", count: 300), memory: mem)
    }

    @Test func initrdHonoursInitrdAddrMax() throws {
        var bz = SyntheticBzImage()
        bz.initrdAddrMax = 0x37FF_FFFF
        let mem = try Support.memory(2 << 30)
        let r = try BootLoader.load(image: KernelImage(bytes: bz.bytes, path: "bz"),
                                    initrd: [UInt8](repeating: 1, count: 5000), memory: mem)
        let range = try #require(r.initrdRange)
        #expect(range.upperBound <= 0x3800_0000)
        #expect(range.lowerBound == (0x3800_0000 - 5000) & ~0xFFF)
    }

    @Test func largeGuestHasHighRAMAndKeepsTheInitrdLow() throws {
        let mem = try Support.memory(6 << 30)
        let r = try BootLoader.load(image: KernelImage(bytes: SyntheticBzImage().bytes, path: "bz"),
                                    initrd: [UInt8](repeating: 9, count: 4096), memory: mem)
        let range = try #require(r.initrdRange)
        #expect(range == 0x7FFF_F000..<0x8000_0000) // initrd_addr_max 0x7FFFFFFF
        #expect(try mem.read(UInt8.self, at: BootLayout.zeroPage + 0x1E8) == 4)
        let high = BootLayout.zeroPage + 0x2D0 + 3 * 20
        #expect(try mem.read(UInt64.self, at: high) == 0x1_0000_0000)
        #expect(try mem.read(UInt64.self, at: high + 8) == (6 << 30) - PhysicalMap.pciHoleStart)
    }

    @Test func tooLittleMemoryForInitSizeIsReported() throws {
        let mem = try Support.memory(16 << 20) // init_size 32 MiB from 16 MiB does not fit
        do {
            _ = try BootLoader.load(image: KernelImage(bytes: SyntheticBzImage().bytes, path: "bz"), memory: mem)
            Issue.record("expected insufficientMemory")
        } catch let BootError.insufficientMemory(why) {
            #expect(why.contains("init_size"))
        }
    }

    /// The real Debian kernel, when guests/debian/build.sh (or the test cache) provides it.
    static var debianKernel: String? {
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["SWIFTVMM_KERNEL"] { candidates.append(env) }
        if let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"] { candidates.append(cache + "/amd64/vmlinuz") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/guests/debian/amd64/vmlinuz").path)
        return candidates.first { FileManager.default.isReadableFile(atPath: $0) }
    }

    /// The uncompressed Debian vmlinux (guests/debian/build.sh extracts it): a PVH ELF.
    static var debianVmlinux: String? {
        var candidates: [String] = []
        if let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"] { candidates.append(cache + "/amd64/vmlinux") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/guests/debian/amd64/vmlinux").path)
        return candidates.first { FileManager.default.isReadableFile(atPath: $0) }
    }

    @Test(.enabled(if: debianVmlinux != nil, "no Debian vmlinux (run guests/debian/build.sh)"))
    func debianVmlinuxLoadsAsPVH() throws {
        let path = try #require(Self.debianVmlinux)
        let image = try KernelImage(path: path)
        guard case let .elf(is64, pvh?) = image.format else {
            Issue.record("\(path) should be an ELF64 with a PVH note, is \(image.format)")
            return
        }
        #expect(is64)
        #expect(image.isLinux, "the Xen guest-OS note of a vmlinux says linux")
        let mem = try Support.memory(256 << 20)
        let r = try BootLoader.load(image: image, initrd: [1, 2, 3], cmdline: "console=ttyS0", memory: mem, vcpus: 2)
        #expect(r.entryMode == .protected32 && r.cpuState.regs.rip == pvh)
        #expect(r.kernelRange.lowerBound == 0x100_0000)
        let elf = try ELFImage(bytes: image.bytes, path: path)
        // Every PT_LOAD landed at its physical address with its file bytes.
        for seg in elf.segments where seg.fileSize >= 64 {
            let off = Int(seg.fileOffset)
            #expect(try Support.bytes(mem, seg.physicalAddress, 64) == Array(image.bytes[off..<(off + 64)]))
        }
    }

    @Test(.enabled(if: debianKernel != nil, "no Debian kernel (run guests/debian/build.sh or set SWIFTVMM_KERNEL)"))
    func debianKernelHeader() throws {
        let path = try #require(Self.debianKernel)
        let image = try KernelImage(path: path)
        #expect(image.format == .bzImage)
        #expect(image.isLinux)
        let h = try LinuxSetupHeader(bytes: image.bytes, path: path)
        #expect(h.version >= 0x20F)
        #expect(h.supports64BitEntry)
        #expect(h.relocatable)
        #expect(h.loadflags & LinuxSetupHeader.loadedHigh != 0)
        #expect(h.prefAddress == 0x100_0000)
        #expect(h.initSize > 0 && h.cmdlineSize >= 2047)
        let mem = try Support.memory(256 << 20)
        let r = try BootLoader.load(image: image, cmdline: "console=ttyS0", memory: mem, vcpus: 2)
        #expect(r.entryMode == .long64 && r.cpuState.regs.rip == 0x10_0200)
        // The protected-mode kernel is copied verbatim.
        #expect(try Support.bytes(mem, 0x10_0000, 4096) == Array(image.bytes[h.protectedModeOffset..<(h.protectedModeOffset + 4096)]))
    }
}

import Testing
import GuestMemory
import Hypervisor
import KVM
#if canImport(Glibc)
import Glibc
#endif

/// Tiny hand-assembled guests run through the real KVM path. Each byte string carries its
/// assembly source in the comment.
@Suite("KVM guests", .enabled(if: kvmUsable, "needs a usable /dev/kvm"))
struct KVMGuestTests {
    // .code16:  xor ax,ax / 1: out 0x10,al / inc al / cmp al,5 / jne 1b
    //           mov bx,0x2000 / mov ds,bx / mov byte [0],0x42 / mov al,[4] / out 0x11,al / hlt
    static let realModeCode: [UInt8] = [
        0x31, 0xc0, 0xe6, 0x10, 0xfe, 0xc0, 0x3c, 0x05, 0x75, 0xf8, 0xbb, 0x00,
        0x20, 0x8e, 0xdb, 0xc6, 0x06, 0x00, 0x00, 0x42, 0xa0, 0x04, 0x00, 0xe6,
        0x11, 0xf4,
    ]

    @Test("real mode: an out loop, MMIO write and read, then HLT")
    func realMode() throws {
        // 64 KiB of RAM: 0x20000 is not RAM, so accesses there exit as MMIO.
        let m = try TestMachine(ram: 1 << 16, configuration: .init(inKernelIRQChip: false, inKernelPIT: false))
        try m.load(Self.realModeCode, at: 0x1000)
        let vcpu = try m.vm.makeVCPU(index: 0)
        var s = try vcpu.specialRegisters()
        s.cs = .realMode(selector: 0, code: true)
        try vcpu.setSpecialRegisters(s)
        var r = X86Registers()
        r.rip = 0x1000
        try vcpu.setRegisters(r)

        for expected in UInt32(0)..<5 {
            let exit = try nextExit(vcpu)
            let io = try #require(ioWrite(exit), "\(describe(exit))")
            #expect(io.port == 0x10 && io.size == 1 && io.value == expected)
        }
        let write = try nextExit(vcpu)
        guard case let .mmio(w) = write else { Issue.record("expected MMIO write, got \(describe(write))"); return }
        #expect(w.address == 0x20000 && w.size == 1 && w.isWrite)
        #expect(w.data.load(as: UInt8.self) == 0x42)

        let read = try nextExit(vcpu)
        guard case let .mmio(rd) = read else { Issue.record("expected MMIO read, got \(describe(read))"); return }
        #expect(rd.address == 0x20004 && rd.size == 1 && !rd.isWrite)
        rd.data.storeBytes(of: 0x99, as: UInt8.self)  // the "device" answers 0x99

        let out = try nextExit(vcpu)
        let io = try #require(ioWrite(out))
        #expect(io.port == 0x11 && io.value == 0x99)
        let halt = try nextExit(vcpu)
        guard case .halt = halt else { Issue.record("expected HLT, got \(describe(halt))"); return }
    }

    // .code32:  mov eax,0x40000000 / cpuid / out 0x10,ebx / out 0x10,ecx / out 0x10,edx (via eax)
    //           mov dword [0x3000],0xcafebabe / mov ax,0x1234 / out 0x12,ax
    //           mov eax,1 / cpuid / mov eax,ebx / out 0x13,eax / hlt
    static let protectedModeCode: [UInt8] = [
        0xb8, 0x00, 0x00, 0x00, 0x40, 0x0f, 0xa2, 0x89, 0xd8, 0xe7, 0x10, 0x89,
        0xc8, 0xe7, 0x10, 0x89, 0xd0, 0xe7, 0x10, 0xc7, 0x05, 0x00, 0x30, 0x00,
        0x00, 0xbe, 0xba, 0xfe, 0xca, 0x66, 0xb8, 0x34, 0x12, 0x66, 0xe7, 0x12,
        0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0x89, 0xd8, 0xe7, 0x13, 0xf4,
    ]

    @Test("32-bit protected mode entry via sregs; the guest sees our CPUID")
    func protectedMode() throws {
        let m = try TestMachine(configuration: .init(vcpuCount: 2, inKernelIRQChip: false, inKernelPIT: false))
        try m.load(Self.protectedModeCode, at: 0x4000)
        let vcpu = try m.vm.makeVCPU(index: 1)
        let state = try m.protectedModeState(entry: 0x4000)
        try vcpu.setState(state)
        #expect(try vcpu.specialRegisters().cs == state.sregs.cs)
        #expect(try vcpu.registers().rip == 0x4000)

        var sig: [UInt8] = []
        for _ in 0..<3 {
            let io = try #require(ioWrite(try nextExit(vcpu)))
            #expect(io.port == 0x10 && io.size == 4)
            for i in 0..<4 { sig.append(UInt8((io.value >> (8 * i)) & 0xFF)) }
        }
        #expect(String(decoding: sig, as: UTF8.self) == CPUIDPolicy.signature)
        let word = try #require(ioWrite(try nextExit(vcpu)))
        #expect(word.port == 0x12 && word.size == 2 && word.value == 0x1234)
        #expect(try m.memory.read(UInt32.self, at: 0x3000) == 0xCAFE_BABE)
        let leaf1 = try #require(ioWrite(try nextExit(vcpu)))
        #expect(leaf1.port == 0x13)
        #expect(leaf1.value >> 24 == 1, "APIC ID of vCPU 1")
        guard case .halt = try nextExit(vcpu) else { Issue.record("expected HLT"); return }
    }

    // .code64:  mov rax,0x1122334455667788 / mov rdi,0x100000010 / mov [rdi],rax
    //           mov rbx,[rdi] / mov rax,rbx / shr rax,32 / out 0x10,eax / hlt
    static let longModeCode: [UInt8] = [
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x48, 0xbf,
        0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x48, 0x89, 0x07, 0x48,
        0x8b, 0x1f, 0x48, 0x89, 0xd8, 0x48, 0xc1, 0xe8, 0x20, 0xe7, 0x10, 0xf4,
    ]

    @Test("64-bit long mode entry via sregs: 8-byte MMIO above 4 GiB")
    func longMode() throws {
        let m = try TestMachine(configuration: .init(inKernelIRQChip: false, inKernelPIT: false))
        try m.load(Self.longModeCode, at: 0x4000)
        try m.writeGDT(at: 0x500)
        // PML4 0x8000 -> PDPT 0x9000; PDPT[0] -> PD 0xA000 (2 MiB identity page),
        // PDPT[4] -> PD 0xB000 mapping 4 GiB (not RAM) with a 2 MiB page.
        try m.memory.write(UInt64(0x9000 | 3), at: 0x8000)
        try m.memory.write(UInt64(0xA000 | 3), at: 0x9000)
        try m.memory.write(UInt64(0xB000 | 3), at: 0x9000 + 4 * 8)
        try m.memory.write(UInt64(0x0000_0083), at: 0xA000)
        try m.memory.write(UInt64(0x1_0000_0083), at: 0xB000)
        let vcpu = try m.vm.makeVCPU(index: 0)
        var s = X86CPUState()
        s.sregs.cs = .flat64(selector: 0x18, code: true)
        let data = X86Segment.flat64(selector: 0x10, code: false)
        s.sregs.ds = data; s.sregs.es = data; s.sregs.fs = data; s.sregs.gs = data; s.sregs.ss = data
        s.sregs.gdt = X86DescriptorTable(base: 0x500, limit: 31)
        s.sregs.cr3 = 0x8000
        s.sregs.cr4 = X86Bits.cr4PAE
        s.sregs.cr0 = X86Bits.cr0PE | X86Bits.cr0PG | X86Bits.cr0ET
        s.sregs.efer = X86Bits.eferLME | X86Bits.eferLMA
        s.regs.rip = 0x4000
        s.regs.rsp = 0x7000
        try vcpu.setState(s)
        #expect(try vcpu.specialRegisters().efer & X86Bits.eferLMA != 0)

        let w = try nextExit(vcpu)
        guard case let .mmio(write) = w else { Issue.record("expected MMIO, got \(describe(w))"); return }
        #expect(write.address == 0x1_0000_0010 && write.size == 8 && write.isWrite)
        #expect(write.data.loadUnaligned(as: UInt64.self) == 0x1122_3344_5566_7788)
        let r = try nextExit(vcpu)
        guard case let .mmio(read) = r else { Issue.record("expected MMIO read, got \(describe(r))"); return }
        #expect(read.address == 0x1_0000_0010 && read.size == 8 && !read.isWrite)
        read.data.storeBytes(of: UInt64(0xAABB_CCDD_0000_0000), as: UInt64.self)
        let io = try #require(ioWrite(try nextExit(vcpu)))
        #expect(io.value == 0xAABB_CCDD)
        #expect(try vcpu.registers().rbx == 0xAABB_CCDD_0000_0000)
    }

    @Test("kick interrupts a spinning guest, and a kick before run returns at once")
    func kick() throws {
        let m = try TestMachine(ram: 1 << 16)
        try m.load([0xeb, 0xfe], at: 0x1000)  // 1: jmp 1b
        let vcpu = try m.vm.makeVCPU(index: 0)
        var s = try vcpu.specialRegisters()
        s.cs = .realMode(selector: 0, code: true)
        try vcpu.setSpecialRegisters(s)
        var r = X86Registers()
        r.rip = 0x1000
        try vcpu.setRegisters(r)

        vcpu.kick()
        guard case .interrupted = try vcpu.run() else { Issue.record("pre-run kick lost"); return }

        final class Result: @unchecked Sendable { var exit = "none"; var elapsed: Double = 0 }
        let result = Result()
        let thread = try VCPUThread(name: "test-vcpu0") {
            var t0 = timespec(), t1 = timespec()
            clock_gettime(CLOCK_MONOTONIC, &t0)
            let exit = (try? vcpu.run()).map(describe) ?? "error"
            clock_gettime(CLOCK_MONOTONIC, &t1)
            result.exit = exit
            result.elapsed = Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
        }
        usleep(100_000)
        vcpu.kick()
        thread.join()
        #expect(result.exit == "interrupted")
        #expect(result.elapsed >= 0.05, "the guest spun until the kick")
        // The guest still spins where it was.
        #expect(try vcpu.registers().rip == 0x1000)
    }

    // .code64
    static let irqMain: [UInt8] = [
        // mov esp,0x9000 / PIC ICW1..4 (vector base 0x20) / mask all but IRQ5
        0xbc, 0x00, 0x90, 0x00, 0x00, 0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6,
        0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21, 0xb0, 0xdf, 0xe6, 0x21,
        // mov edi,0xfee00000 / mov dword [rdi+0xf0],0x1ff (LAPIC on) / xor ecx,ecx / sti / out 0x10,al
        0xbf, 0x00, 0x00, 0xe0, 0xfe, 0xc7, 0x87, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00,
        0x31, 0xc9, 0xfb, 0xe6, 0x10,
        // 2: hlt / jmp 2b
        0xf4, 0xeb, 0xfd,
    ]
    // inc ecx / mov eax,ecx / out 0x12,eax / mov al,0x20 / out 0x20,al (PIC EOI) / iretq
    static let irq5Handler: [UInt8] = [0xff, 0xc1, 0x89, 0xc8, 0xe7, 0x12, 0xb0, 0x20, 0xe6, 0x20, 0x48, 0xcf]
    // inc ecx / mov eax,ecx / out 0x13,eax / mov dword [rdi+0xb0],0 (LAPIC EOI) / iretq
    static let msiHandler: [UInt8] = [
        0xff, 0xc1, 0x89, 0xc8, 0xe7, 0x13, 0xc7, 0x87, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x48, 0xcf,
    ]

    /// A 64-bit guest with an IDT that programs the PIC, enables its LAPIC and halts.
    func interruptGuest(_ m: TestMachine) throws -> KVMVCPU {
        try m.load(Self.irqMain, at: 0x4000)
        try m.load(Self.irq5Handler, at: 0x4100)
        try m.load(Self.msiHandler, at: 0x4180)
        try m.setGate64(idt: 0x2000, vector: 0x25, handler: 0x4100)
        try m.setGate64(idt: 0x2000, vector: 0x40, handler: 0x4180)
        let vcpu = try m.vm.makeVCPU(index: 0)
        try vcpu.setState(try m.longModeState(entry: 0x4000))
        let first = try nextExit(vcpu)
        let ready = try #require(ioWrite(first), "\(describe(first))")
        #expect(ready.port == 0x10)
        return vcpu
    }

    // .code32 handler for vector 0x25: mov al,0x20 / out 0x20,al / mov eax,0x25 / out 0x12,eax / hlt
    // (no iret: see docs/kvm.md on 32-bit iret under PVM)
    @Test("IRQ injection into a 32-bit guest's IDT")
    func pinInterrupt32() throws {
        let m = try TestMachine(configuration: .init(inKernelPIT: false))
        // The 64-bit main program's first 25 bytes (PIC setup) are valid 32-bit code too.
        var main = Array(Self.irqMain[0..<25])
        main += [0xfb, 0xe6, 0x10, 0xf4, 0xeb, 0xfd]  // sti / out 0x10,al / 1: hlt / jmp 1b
        try m.load(main, at: 0x4000)
        try m.load([0xb0, 0x20, 0xe6, 0x20, 0xb8, 0x25, 0x00, 0x00, 0x00, 0xe7, 0x12, 0xf4], at: 0x4100)
        try m.setGate32(idt: 0x2000, vector: 0x25, handler: 0x4100)
        let vcpu = try m.vm.makeVCPU(index: 0)
        try vcpu.setState(try m.protectedModeState(entry: 0x4000))
        #expect(ioWrite(try nextExit(vcpu))?.port == 0x10)
        m.vm.pulseIRQ(5)
        let exit = try nextExit(vcpu)
        let io = try #require(ioWrite(exit), "\(describe(exit))")
        #expect(io.port == 0x12 && io.value == 0x25)
    }

    @Test("IRQ injection through the in-kernel PIC reaches the guest's IDT handler")
    func pinInterrupt() throws {
        let m = try TestMachine(configuration: .init(inKernelPIT: false))
        let vcpu = try interruptGuest(m)
        for n in UInt32(1)...3 {
            m.vm.pulseIRQ(5)
            let exit = try nextExit(vcpu)
            let io = try #require(ioWrite(exit), "\(describe(exit))")
            #expect(io.port == 0x12 && io.value == n)
        }
    }

    @Test("MSI delivery: KVM_SIGNAL_MSI and an irqfd on an MSI route")
    func messageSignalledInterrupts() throws {
        let m = try TestMachine(configuration: .init(inKernelPIT: false))
        let vcpu = try interruptGuest(m)
        m.vm.signalMSI(address: 0xFEE0_0000, data: 0x40)
        let exit = try nextExit(vcpu)
        var io = try #require(ioWrite(exit), "\(describe(exit))")
        #expect(io.port == 0x13 && io.value == 1)

        let gsi = try m.vm.allocateMSIRoute(address: 0xFEE0_0000, data: 0x40)
        #expect(gsi >= KVMVirtualMachine.firstMSIRoute)
        let efd = try EventFD()
        try m.vm.registerIRQFD(efd, gsi: gsi)
        efd.signal()
        io = try #require(ioWrite(try nextExit(vcpu)))
        #expect(io.port == 0x13 && io.value == 2)
        // Re-routing the GSI to vector 0x25 (the PIC handler's vector) goes through the LAPIC too.
        try m.vm.updateMSIRoute(gsi: gsi, address: 0xFEE0_0000, data: 0x25)
        efd.signal()
        io = try #require(ioWrite(try nextExit(vcpu)))
        #expect(io.port == 0x12 && io.value == 3)
        try m.vm.unregisterIRQFD(efd, gsi: gsi)
        try m.vm.releaseMSIRoute(gsi: gsi)
    }

    @Test("an ioeventfd write stays in the kernel; the next port exits")
    func ioeventfd() throws {
        let m = try TestMachine(configuration: .init(inKernelIRQChip: false, inKernelPIT: false))
        // mov al,7 / out 0x14,al / out 0x15,al / hlt
        try m.load([0xb0, 0x07, 0xe6, 0x14, 0xe6, 0x15, 0xf4], at: 0x4000)
        let efd = try EventFD()
        try m.vm.registerIOEventFD(efd, space: .port, address: 0x14, length: 1)
        let vcpu = try m.vm.makeVCPU(index: 0)
        try vcpu.setState(try m.protectedModeState(entry: 0x4000))
        let io = try #require(ioWrite(try nextExit(vcpu)))
        #expect(io.port == 0x15)
        #expect(efd.consume() == 1)
        #expect(efd.consume() == nil)
        try m.vm.unregisterIOEventFD(efd, space: .port, address: 0x14, length: 1)
    }

    @Test("registers, MSRs, MP state and LAPIC state round-trip")
    func stateRoundTrip() throws {
        let m = try TestMachine(configuration: .init(vcpuCount: 2))
        let bsp = try m.vm.makeVCPU(index: 0)
        let ap = try m.vm.createVCPU(index: 1, startState: .waitingForSIPI) as! KVMVCPU
        #expect(try bsp.mpState() == .runnable)
        #expect(try ap.mpState() == .uninitialized)

        var r = X86Registers()
        r.rax = 1; r.rbx = 2; r.rcx = 3; r.rdx = 4; r.rsi = 5; r.rdi = 6; r.rsp = 7; r.rbp = 8
        r.r8 = 9; r.r15 = 0xFFFF_FFFF_FFFF_FFFF; r.rip = 0x1234; r.rflags = 0x202
        try bsp.setRegisters(r)
        #expect(try bsp.registers() == r)

        let state = try m.protectedModeState(entry: 0x4000)
        try bsp.setSpecialRegisters(state.sregs)
        let back = try bsp.specialRegisters()
        #expect(back.cs == state.sregs.cs && back.ds == state.sregs.ds && back.gdt == state.sregs.gdt)
        #expect(back.cr0 & X86Bits.cr0PE != 0)

        try bsp.setMSRs([(index: 0x174, value: 0x10), (index: 0x175, value: 0x8000)])  // SYSENTER_CS/ESP
        #expect(try bsp.msrs([0x174, 0x175]) == [0x10, 0x8000])
        #expect(throws: KVMError.self) { try bsp.msr(0xDEAD_0000) }

        let lapic = try ap.lapicState()
        #expect(lapic.count == 1024)
        #expect(lapic[0x23] == 1, "APIC ID register of vCPU 1")  // ID in bits 31:24 of 0x20
        try ap.setLAPICState(lapic)
        let events = try ap.vcpuEvents()
        try ap.setVCPUEvents(events)
        #expect(try ap.cpuid().contains { $0.function == 1 && $0.ebx >> 24 == 1 })
    }
}

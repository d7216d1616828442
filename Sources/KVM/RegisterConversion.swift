import CKVM
import Hypervisor

// Field-by-field conversions between Hypervisor's register types and KVM's structs.

extension X86Registers {
    init(_ r: kvm_regs) {
        self.init()
        rax = r.rax; rbx = r.rbx; rcx = r.rcx; rdx = r.rdx
        rsi = r.rsi; rdi = r.rdi; rsp = r.rsp; rbp = r.rbp
        r8 = r.r8; r9 = r.r9; r10 = r.r10; r11 = r.r11
        r12 = r.r12; r13 = r.r13; r14 = r.r14; r15 = r.r15
        rip = r.rip; rflags = r.rflags
    }

    var kvm: kvm_regs {
        var r = kvm_regs()
        r.rax = rax; r.rbx = rbx; r.rcx = rcx; r.rdx = rdx
        r.rsi = rsi; r.rdi = rdi; r.rsp = rsp; r.rbp = rbp
        r.r8 = r8; r.r9 = r9; r.r10 = r10; r.r11 = r11
        r.r12 = r12; r.r13 = r13; r.r14 = r14; r.r15 = r15
        r.rip = rip; r.rflags = rflags | 0x2
        return r
    }
}

extension X86Segment {
    init(_ s: kvm_segment) {
        self.init(base: s.base, limit: s.limit, selector: s.selector, type: s.type,
                  present: s.present != 0, dpl: s.dpl, db: s.db != 0, s: s.s != 0,
                  l: s.l != 0, g: s.g != 0)
        avl = s.avl != 0
        unusable = s.unusable != 0
    }

    var kvm: kvm_segment {
        var s = kvm_segment()
        s.base = base; s.limit = limit; s.selector = selector; s.type = type
        s.present = present ? 1 : 0; s.dpl = dpl; s.db = db ? 1 : 0; s.s = self.s ? 1 : 0
        s.l = l ? 1 : 0; s.g = g ? 1 : 0; s.avl = avl ? 1 : 0; s.unusable = unusable ? 1 : 0
        return s
    }
}

extension X86DescriptorTable {
    init(_ t: kvm_dtable) { self.init(base: t.base, limit: t.limit) }
    var kvm: kvm_dtable {
        var t = kvm_dtable()
        t.base = base; t.limit = limit
        return t
    }
}

extension X86SpecialRegisters {
    init(_ s: kvm_sregs) {
        self.init()
        cs = X86Segment(s.cs); ds = X86Segment(s.ds); es = X86Segment(s.es)
        fs = X86Segment(s.fs); gs = X86Segment(s.gs); ss = X86Segment(s.ss)
        tr = X86Segment(s.tr); ldt = X86Segment(s.ldt)
        gdt = X86DescriptorTable(s.gdt); idt = X86DescriptorTable(s.idt)
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4; cr8 = s.cr8
        efer = s.efer; apicBase = s.apic_base
    }

    /// Writes these registers into `s`, leaving its pending-interrupt bitmap alone.
    func apply(to s: inout kvm_sregs) {
        s.cs = cs.kvm; s.ds = ds.kvm; s.es = es.kvm; s.fs = fs.kvm; s.gs = gs.kvm; s.ss = ss.kvm
        s.tr = tr.kvm; s.ldt = ldt.kvm
        s.gdt = gdt.kvm; s.idt = idt.kvm
        s.cr0 = cr0; s.cr2 = cr2; s.cr3 = cr3; s.cr4 = cr4; s.cr8 = cr8
        s.efer = efer; s.apic_base = apicBase
    }
}

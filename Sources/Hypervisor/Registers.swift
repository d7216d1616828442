/// x86 CPU state shared by both backends (KVM and the software CPU) and by the loaders,
/// which describe a kernel's entry state with these types. Field meanings follow
/// `struct kvm_regs` / `struct kvm_sregs` so the KVM backend converts field by field.

public struct X86Registers: Equatable, Sendable, Codable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is always set on x86.
    public var rflags: UInt64 = 0x2
    public init() {}
}

/// A segment register with its hidden descriptor cache.
public struct X86Segment: Equatable, Sendable, Codable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xFFFF
    public var selector: UInt16 = 0
    /// Descriptor type field (bits 0-3 of the access byte).
    public var type: UInt8 = 0x3
    public var present: Bool = true
    public var dpl: UInt8 = 0
    /// D/B bit: 32-bit default operand size.
    public var db: Bool = false
    /// S bit: code/data (true) or system (false) descriptor.
    public var s: Bool = true
    /// L bit: 64-bit code segment.
    public var l: Bool = false
    /// G bit: limit in 4 KiB units.
    public var g: Bool = false
    public var avl: Bool = false
    /// True for an unusable (null) segment.
    public var unusable: Bool = false

    public init() {}

    public init(base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, present: Bool = true,
                dpl: UInt8 = 0, db: Bool, s: Bool = true, l: Bool, g: Bool) {
        self.base = base; self.limit = limit; self.selector = selector; self.type = type
        self.present = present; self.dpl = dpl; self.db = db; self.s = s; self.l = l; self.g = g
    }

    /// A real-mode segment for `selector` (base = selector << 4, 64 KiB limit).
    public static func realMode(selector: UInt16, code: Bool = false) -> X86Segment {
        X86Segment(base: UInt64(selector) << 4, limit: 0xFFFF, selector: selector,
                   type: code ? 0xB : 0x3, db: false, l: false, g: false)
    }

    /// A flat 4 GiB 32-bit segment (code: execute/read accessed; data: read/write accessed).
    public static func flat32(selector: UInt16, code: Bool) -> X86Segment {
        X86Segment(base: 0, limit: 0xFFFF_FFFF, selector: selector, type: code ? 0xB : 0x3,
                   db: true, l: false, g: true)
    }

    /// A 64-bit code segment or a flat data segment for long mode.
    public static func flat64(selector: UInt16, code: Bool) -> X86Segment {
        X86Segment(base: 0, limit: 0xFFFF_FFFF, selector: selector, type: code ? 0xB : 0x3,
                   db: !code, l: code, g: true)
    }
}

public struct X86DescriptorTable: Equatable, Sendable, Codable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0xFFFF
    public init(base: UInt64 = 0, limit: UInt16 = 0xFFFF) { self.base = base; self.limit = limit }
}

public struct X86SpecialRegisters: Equatable, Sendable, Codable {
    public var cs = X86Segment.realMode(selector: 0, code: true)
    public var ds = X86Segment.realMode(selector: 0)
    public var es = X86Segment.realMode(selector: 0)
    public var fs = X86Segment.realMode(selector: 0)
    public var gs = X86Segment.realMode(selector: 0)
    public var ss = X86Segment.realMode(selector: 0)
    public var tr = X86Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0xB, db: false, s: false, l: false, g: false)
    public var ldt = X86Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, db: false, s: false, l: false, g: false)
    public var gdt = X86DescriptorTable()
    public var idt = X86DescriptorTable()
    public var cr0: UInt64 = 0x6000_0010
    public var cr2: UInt64 = 0
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0xFEE0_0900
    public init() {}
}

/// Control-register and EFER bits the loaders and backends use by name.
public enum X86Bits {
    public static let cr0PE: UInt64 = 1 << 0
    public static let cr0MP: UInt64 = 1 << 1
    public static let cr0EM: UInt64 = 1 << 2
    public static let cr0TS: UInt64 = 1 << 3
    public static let cr0ET: UInt64 = 1 << 4
    public static let cr0NE: UInt64 = 1 << 5
    public static let cr0WP: UInt64 = 1 << 16
    public static let cr0AM: UInt64 = 1 << 18
    public static let cr0NW: UInt64 = 1 << 29
    public static let cr0CD: UInt64 = 1 << 30
    public static let cr0PG: UInt64 = 1 << 31
    public static let cr4PSE: UInt64 = 1 << 4
    public static let cr4PAE: UInt64 = 1 << 5
    public static let cr4PGE: UInt64 = 1 << 7
    public static let cr4OSFXSR: UInt64 = 1 << 9
    public static let cr4OSXMMEXCPT: UInt64 = 1 << 10
    public static let eferSCE: UInt64 = 1 << 0
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
    public static let eferNXE: UInt64 = 1 << 11
}

/// A complete entry state: what a loader hands the VMM for the boot vCPU.
public struct X86CPUState: Equatable, Sendable, Codable {
    public var regs = X86Registers()
    public var sregs = X86SpecialRegisters()
    public init() {}
    public init(regs: X86Registers, sregs: X86SpecialRegisters) { self.regs = regs; self.sregs = sregs }
}

// MARK: - JIT compiler: the inline TLB probe, its side exits and the emit helpers (canonical check, stack pointer update, IMUL flags)

extension JITCompiler {
    /// A way out of the compiled code before instruction `index` (at byte offset `start`):
    /// the jumps to patch.
    struct SideExit {
        var patches: [Int]
        var index: Int
        var start: Int
    }

    /// Context words the probe reads: the TLB tag bit of the CPL, the read bank's tags and
    /// host pages (`X86CPU.tlbTag`/`tlbHost`), the write bank's, and the host address of
    /// the running block's first byte.
    static let contextUserTag = 24, contextTLBTags = 32, contextTLBHosts = 40
    static let contextWriteTags = 48, contextWriteHosts = 56, contextBlockHost = 64
    static let contextWords = 9

    /// Computes the address of `m` into rax (`end`: the offset after the instruction, for
    /// RIP-relative operands), probes the read TLB (or with `blockLen` the write TLB) like
    /// `hostPage` and then runs `load` with the host page in r8 and the page offset in rax.
    /// A non-canonical address, an access crossing the page or a TLB miss (also every
    /// non-RAM page) leaves through the side exit, where the block tier runs the
    /// instruction (fault, walk, MMIO exit). A write also leaves when it would touch any of
    /// the running block's `blockLen` bytes (host addresses, so also through an alias):
    /// the block tier stores and then sees its block changed.
    static func emitProbe(_ m: JITMem, size: Int, end: Int, into e: inout X64Emitter, exit: SideExit,
                          exits: inout [SideExit], blockLen: Int? = nil, addr32: Bool = false,
                          load: (inout X64Emitter, inout SideExit) -> Void) -> Bool {
        let A = HostReg.rax, C = HostReg.rcx, D = HostReg.rdx, R8 = HostReg.r8
        var total = Int64(bitPattern: m.disp)
        if m.ripRelative { total &+= Int64(end) }
        guard total >= Int64(Int32.min), total <= Int64(Int32.max) else { return false }
        if m.base >= 0 { e.load(A, m.base * 8, 8) }
        else if m.ripRelative { e.loadContext(A, 8) }
        else { e.movImm(A, 0, 4) }
        if m.index >= 0 { e.load(C, m.index * 8, 8) }
        e.lea(A, base: A, index: m.index >= 0 ? C : -1, scale: m.scale, disp: Int32(total))
        var x = exit
        e.pushfq()
        if addr32 {
            // a 32-bit linear address (base 0): wraps at 4 GiB, always canonical
            e.movRR(A, A, 4)
        } else {
            // canonical: sign-extending bit 47 gives the address back
            e.movRR(D, A, 8); e.shift(4, D, 8, 16); e.shift(7, D, 8, 16); e.alu(7, D, A, 8)
            x.patches.append(e.jccForward(5))
        }
        // within one page
        e.movRR(C, A, 4); e.aluImm(4, C, 0xFFF, 4); e.aluImm(7, C, Int32(4096 - size), 4)
        x.patches.append(e.jccForward(7))
        // tag = vpn | user bit; index = vpn & (tlbSize - 1)
        e.movRR(D, A, 8); e.shift(5, D, 8, 12)
        e.movRR(C, D, 4); e.aluImm(4, C, Int32(X86CPU.tlbSize - 1), 4)
        e.rmem([0x0B], 8, reg: D, base: HostReg.rsi, disp: contextUserTag)
        e.loadContext(R8, blockLen == nil ? contextTLBTags : contextWriteTags)
        e.rsib([0x39], 8, reg: D, base: R8, index: C, scale: 3)
        x.patches.append(e.jccForward(5))
        e.loadContext(R8, blockLen == nil ? contextTLBHosts : contextWriteHosts)
        e.rsib([0x8B], 8, reg: R8, base: R8, index: C, scale: 3)
        e.aluImm(4, A, 0xFFF, 4)
        if let blockLen {
            // overlap with [block, block + blockLen): (host + size - 1 - block) unsigned
            // below blockLen + size - 1
            e.lea(D, base: R8, index: A, scale: 0, disp: Int32(size - 1))
            e.rmem([0x2B], 8, reg: D, base: HostReg.rsi, disp: contextBlockHost)
            e.aluImm(7, D, Int32(blockLen + size - 1), 8)
            x.patches.append(e.jccForward(2))
        }
        load(&e, &x)
        e.popfq()
        exits.append(x)
        return true
    }

    /// Leaves through `exit` unless host register `h` holds a canonical address (rcx is
    /// clobbered; inside a probe, where the guest flags are saved).
    static func emitCanonicalCheck(_ h: Int, into e: inout X64Emitter, exit x: inout SideExit) {
        let C = HostReg.rcx
        e.movRR(C, h, 8); e.shift(4, C, 8, 16); e.shift(7, C, 8, 16); e.alu(7, C, h, 8)
        x.patches.append(e.jccForward(5))
    }

    /// `imul rax, b` (size 2, 4 or 8; rax holds the first factor), then, when a flag other
    /// than CF/OF is live, the interpreter's values for the ones the SDM leaves undefined:
    /// SF/ZF/PF from the truncated product, AF = 0 (`add rax, 0` sets exactly those and
    /// clears CF/OF, which are then set back from the IMUL's CF). rcx/rdx are clobbered.
    static func emitImul(_ b: Int, _ s: Int, liveAfter: UInt64, into e: inout X64Emitter) {
        let A = HostReg.rax, C = HostReg.rcx, D = HostReg.rdx
        e.rr([0x0F, 0xAF], s, reg: A, rm: b)
        guard liveAfter & (Flag.sf | Flag.zf | Flag.pf | Flag.af) != 0 else { return }
        e.alu(3, D, D, 8)                       // sbb rdx, rdx: -CF (CF = OF after IMUL)
        e.aluImm(0, A, 0, s)                    // SF/ZF/PF of the product, CF = OF = AF = 0
        e.pushfq(); e.pop(C)
        e.aluImm(4, D, Int32(Flag.cf | Flag.of), 8)
        e.alu(1, C, D, 8)
        e.push(C); e.popfq()
    }

    /// RSP += delta (rdx clobbered); a 32-bit stack (`stack` 4) wraps ESP at 32 bits and
    /// clears the upper half, as the interpreter's `push`/`adjustSP` do.
    static func emitMoveSP(_ delta: Int, _ stack: Int, into e: inout X64Emitter) {
        let D = HostReg.rdx
        e.load(D, 4 * 8, 8)
        e.lea(D, base: D, index: -1, scale: 0, disp: Int32(delta))
        if stack == 4 { e.movRR(D, D, 4) }
        e.store(D, 4 * 8, 8)
    }
}

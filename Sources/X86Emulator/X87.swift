import Hypervisor

/// A minimal x87: the control operations kernels and C runtimes use at start-up
/// (FNINIT, FNSTSW, FNSTCW, FLDCW, FNCLEX, FNSTENV/FLDENV) plus loads and stores of
/// float/double/integers and the basic arithmetic. Precision control and exceptions
/// are not modelled (results use Float80 arithmetic with round-to-nearest).
extension X86CPU {
    func push87(_ v: Float80) {
        let t = (fpu.top + 7) & 7
        fpu.fsw = (fpu.fsw & ~0x3800) | UInt16(t << 11)
        fpu.st[t] = v
        fpu.ftw |= UInt8(1 << t)
    }

    func pop87() {
        let t = fpu.top
        fpu.ftw &= ~UInt8(1 << t)
        fpu.fsw = (fpu.fsw & ~0x3800) | UInt16(((t + 1) & 7) << 11)
    }

    func st(_ i: Int) -> Float80 { fpu.st[(fpu.top + i) & 7] }
    func setST(_ i: Int, _ v: Float80) { fpu.st[(fpu.top + i) & 7] = v; fpu.ftw |= UInt8(1 << ((fpu.top + i) & 7)) }

    func x87(_ op: Int) throws(X86Fault) {
        if cr0 & (X86Bits.cr0EM | X86Bits.cr0TS) != 0 { throw fault(Vec.nm) }
        let k = d.reg & 7
        if d.mod == 3 {
            let i = d.rm & 7
            switch (op, k) {
            case (0xDB, 4):
                switch d.modrm {
                case 0xE3: fpu = X87State(); return           // fninit
                case 0xE2: fpu.fsw &= 0x7F00; return          // fnclex
                default: return                               // fneni/fndisi/fsetpm: no-ops
                }
            case (0xDF, 4) where d.modrm == 0xE0:
                setReg(0, 2, UInt64(fpu.fsw)); return          // fnstsw ax
            case (0xD9, 0): push87(st(i)); return             // fld st(i)
            case (0xD9, 1):
                let a = st(0); setST(0, st(i)); setST(i, a); return
            case (0xD9, 4):
                switch d.modrm {
                case 0xE0: setST(0, -st(0))
                case 0xE1: setST(0, abs(st(0)))
                case 0xE4: fcomFlags(st(0), 0)
                default: throw udFault()
                }
                return
            case (0xD9, 5):
                let consts: [Float80] = [1, 3.32192809488736234787, 1.44269504088896340736, .pi, 0.301029995663981195214, 0.693147180559945309417, 0]
                if i < 7 { push87(consts[i]); return }
                throw udFault()
            case (0xD9, 2): return // fnop
            case (0xDD, 3): setST(i, st(0)); pop87(); return   // fstp st(i)
            case (0xDD, 2): setST(i, st(0)); return
            case (0xDD, 0): fpu.ftw &= ~UInt8(1 << ((fpu.top + i) & 7)); return // ffree
            case (0xD8, _), (0xDC, _), (0xDE, _):
                let a = st(0), b = st(i)
                let toI = op != 0xD8
                var res: Float80
                switch k {
                case 0: res = a + b
                case 1: res = a * b
                case 2, 3:
                    fcomFlags(a, b); if k == 3 || op == 0xDE { pop87() }; return
                case 4: res = toI ? b - a : a - b
                case 5: res = toI ? a - b : b - a
                case 6: res = toI ? b / a : a / b
                default: res = toI ? a / b : b / a
                }
                if toI { setST(i, res) } else { setST(0, res) }
                if op == 0xDE { pop87() }
                return
            case (0xDB, 5), (0xDB, 6), (0xDF, 5), (0xDF, 6):
                // fucomi / fcomi (and the popping forms)
                let a = st(0), b = st(i)
                var f = arithFlags() & ~(Flag.zf | Flag.pf | Flag.cf)
                if a.isNaN || b.isNaN { f |= Flag.zf | Flag.pf | Flag.cf } else if a < b { f |= Flag.cf } else if a == b { f |= Flag.zf }
                setEager(f)
                if op == 0xDF { pop87() }
                return
            default:
                throw udFault()
            }
        }
        let ea = effectiveAddress()
        switch (op, k) {
        case (0xD9, 5): fpu.fcw = UInt16(try readMem(d.seg, ea, 2))
        case (0xD9, 7): try writeMem(d.seg, ea, 2, UInt64(fpu.fcw))
        case (0xDD, 7): try writeMem(d.seg, ea, 2, UInt64(fpu.fsw))
        case (0xD9, 6):
            // fnstenv (32-bit format)
            try writeMem(d.seg, ea, 4, UInt64(fpu.fcw) | 0xFFFF_0000)
            try writeMem(d.seg, (ea &+ 4) & sizeMask(d.addrSize), 4, UInt64(fpu.fsw) | 0xFFFF_0000)
            var tw: UInt64 = 0
            for r in 0..<8 where fpu.ftw & (1 << r) == 0 { tw |= 3 << UInt64(r * 2) }
            try writeMem(d.seg, (ea &+ 8) & sizeMask(d.addrSize), 4, tw | 0xFFFF_0000)
            for o in stride(from: UInt64(12), to: 28, by: 4) { try writeMem(d.seg, (ea &+ o) & sizeMask(d.addrSize), 4, 0) }
            fpu.fcw |= 0x3F
        case (0xD9, 4):
            fpu.fcw = UInt16(try readMem(d.seg, ea, 2))
            fpu.fsw = UInt16(try readMem(d.seg, (ea &+ 4) & sizeMask(d.addrSize), 2))
            let tw = try readMem(d.seg, (ea &+ 8) & sizeMask(d.addrSize), 2)
            var ftw: UInt8 = 0
            for r in 0..<8 where (tw >> UInt64(r * 2)) & 3 != 3 { ftw |= UInt8(1 << r) }
            fpu.ftw = ftw
        case (0xD9, 0): push87(Float80(Float(bitPattern: UInt32(try readMem(d.seg, ea, 4)))))
        case (0xDD, 0): push87(Float80(Double(bitPattern: try readMem(d.seg, ea, 8))))
        case (0xDB, 5):
            let lo = try readMem(d.seg, ea, 8), hi = try readMem(d.seg, (ea &+ 8) & sizeMask(d.addrSize), 2)
            push87(Float80(bitPatternParts: (lo, UInt16(hi))))
        case (0xDB, 7):
            let p = st(0).bitPatternParts
            try writeMem(d.seg, ea, 8, p.0); try writeMem(d.seg, (ea &+ 8) & sizeMask(d.addrSize), 2, p.1)
            pop87()
        case (0xD9, 2), (0xD9, 3):
            try writeMem(d.seg, ea, 4, UInt64(Float(st(0)).bitPattern)); if k == 3 { pop87() }
        case (0xDD, 2), (0xDD, 3):
            try writeMem(d.seg, ea, 8, Double(st(0)).bitPattern); if k == 3 { pop87() }
        case (0xDB, 0): push87(Float80(Int32(truncatingIfNeeded: try readMem(d.seg, ea, 4))))
        case (0xDF, 5): push87(Float80(Int64(bitPattern: try readMem(d.seg, ea, 8))))
        case (0xDF, 0): push87(Float80(Int16(truncatingIfNeeded: try readMem(d.seg, ea, 2))))
        case (0xDB, 2), (0xDB, 3), (0xDB, 1), (0xDF, 7), (0xDF, 2), (0xDF, 3), (0xDF, 1), (0xDD, 1):
            let v = st(0)
            let truncate = k == 1
            let rv = truncate ? v.rounded(.towardZero) : v.rounded(.toNearestOrEven)
            let size = op == 0xDB ? 4 : (k == 7 || (op == 0xDD) ? 8 : 2)
            let lim = Float80(sign: .plus, exponent: size * 8 - 1, significand: 1)
            let iv: UInt64 = (rv.isNaN || rv >= lim || rv < -lim) ? signBit(size) : UInt64(bitPattern: Int64(rv)) & sizeMask(size)
            try writeMem(d.seg, ea, size, iv)
            if k != 2 { pop87() }
        case (0xD8, _), (0xDC, _), (0xDA, _), (0xDE, _):
            let b: Float80
            switch op {
            case 0xD8: b = Float80(Float(bitPattern: UInt32(try readMem(d.seg, ea, 4))))
            case 0xDC: b = Float80(Double(bitPattern: try readMem(d.seg, ea, 8)))
            case 0xDA: b = Float80(Int32(truncatingIfNeeded: try readMem(d.seg, ea, 4)))
            default: b = Float80(Int16(truncatingIfNeeded: try readMem(d.seg, ea, 2)))
            }
            let a = st(0)
            switch k {
            case 0: setST(0, a + b)
            case 1: setST(0, a * b)
            case 2: fcomFlags(a, b)
            case 3: fcomFlags(a, b); pop87()
            case 4: setST(0, a - b)
            case 5: setST(0, b - a)
            case 6: setST(0, a / b)
            default: setST(0, b / a)
            }
        default:
            throw udFault()
        }
    }

    func fcomFlags(_ a: Float80, _ b: Float80) {
        var sw = fpu.fsw & ~0x4500
        if a.isNaN || b.isNaN { sw |= 0x4500 } else if a < b { sw |= 0x0100 } else if a == b { sw |= 0x4000 }
        fpu.fsw = sw
    }
}

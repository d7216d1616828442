/// A tiny ACPI Machine Language encoder: just the terms our DSDT needs (ACPI 6.x §20).
/// Each function returns the encoded bytes of one term; nest them as in ASL.
public enum AML {
    // MARK: data

    public static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00] // ZeroOp
        case 1: return [0x01] // OneOp
        case ...0xFF: return [0x0A, UInt8(v)]
        case ...0xFFFF: return [0x0B] + le(v, 2)
        case ...0xFFFF_FFFF: return [0x0C] + le(v, 4)
        default: return [0x0E] + le(v, 8)
        }
    }

    public static func string(_ s: String) -> [UInt8] {
        [0x0D] + Array(s.utf8.filter { $0 != 0 && $0 < 0x80 }) + [0x00]
    }

    /// EisaId("PNP0A03") as the compressed 32-bit integer ASL produces.
    public static func eisaID(_ id: String) -> [UInt8] {
        integer(UInt64(eisaIDValue(id)))
    }

    public static func eisaIDValue(_ id: String) -> UInt32 {
        let c = Array(id.utf8)
        guard c.count == 7 else { return 0 }
        let vendor = (UInt16(c[0] &- 0x40) & 0x1F) << 10 | (UInt16(c[1] &- 0x40) & 0x1F) << 5 | (UInt16(c[2] &- 0x40) & 0x1F)
        let product = UInt16(String(decoding: c[3...], as: UTF8.self), radix: 16) ?? 0
        // Big-endian byte order stored as a little-endian DWORD.
        let bytes: [UInt8] = [UInt8(vendor >> 8), UInt8(vendor & 0xFF), UInt8(product >> 8), UInt8(product & 0xFF)]
        return UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
    }

    public static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let body = [UInt8(truncatingIfNeeded: elements.count)] + elements.flatMap { $0 }
        return [0x12] + pkgLength(body.count) + body
    }

    public static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let body = integer(UInt64(bytes.count)) + bytes
        return [0x11] + pkgLength(body.count) + body
    }

    // MARK: named objects

    public static func name(_ path: String, _ value: [UInt8]) -> [UInt8] {
        [0x08] + nameString(path) + value
    }

    public static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + terms.flatMap { $0 }
        return [0x10] + pkgLength(body.count) + body
    }

    public static func device(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + terms.flatMap { $0 }
        return [0x5B, 0x82] + pkgLength(body.count) + body
    }

    /// A serialized method with no arguments whose body is `terms`.
    public static func method(_ path: String, args: UInt8 = 0, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + [args & 0x7] + terms.flatMap { $0 }
        return [0x14] + pkgLength(body.count) + body
    }

    public static func `return`(_ value: [UInt8]) -> [UInt8] { [0xA4] + value }

    // MARK: encoding primitives

    /// PkgLength for a body of `n` bytes (the encoded length counts its own bytes).
    public static func pkgLength(_ n: Int) -> [UInt8] {
        if n + 1 < 0x40 { return [UInt8(n + 1)] }
        for extra in 1...3 {
            let total = n + 1 + extra
            if total < 1 << (4 + 8 * extra) {
                var out = [UInt8(extra << 6) | UInt8(total & 0xF)]
                for i in 0..<extra { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
                return out
            }
        }
        return [0] // unreachable for tables < 256 MiB
    }

    /// A NameString: "\\_SB.PCI0", "_HID", "^FOO". Segments are padded with '_' to 4 chars.
    public static func nameString(_ path: String) -> [UInt8] {
        var out: [UInt8] = []
        var rest = Substring(path)
        while let f = rest.first, f == "\\" || f == "^" {
            out.append(UInt8(ascii: f == "\\" ? "\\" : "^"))
            rest = rest.dropFirst()
        }
        let segs = rest.split(separator: ".").map { seg -> [UInt8] in
            var b = Array(seg.utf8.prefix(4))
            while b.count < 4 { b.append(UInt8(ascii: "_")) }
            return b
        }
        switch segs.count {
        case 0: out.append(0x00) // NullName
        case 1: out += segs[0]
        case 2: out += [0x2E] + segs[0] + segs[1]
        default: out += [0x2F, UInt8(segs.count)] + segs.flatMap { $0 }
        }
        return out
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] {
        (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
    }

    // MARK: resource descriptors (ACPI 6.x §6.4)

    public enum Resource {
        /// IO(Decode16, min, max, alignment, length).
        public static func io(min: UInt16, max: UInt16, alignment: UInt8, length: UInt8) -> [UInt8] {
            [0x47, 0x01] + le(UInt64(min), 2) + le(UInt64(max), 2) + [alignment, length]
        }

        /// IRQNoFlags(){irq}: edge triggered, active high.
        public static func irqNoFlags(_ irq: UInt8) -> [UInt8] {
            let mask: UInt16 = irq < 16 ? 1 << UInt16(irq) : 0
            return [0x22] + le(UInt64(mask), 2)
        }

        /// Interrupt(ResourceConsumer, Level/Edge, ActiveHigh/ActiveLow, Shared/Exclusive){gsi}.
        public static func extendedInterrupt(_ gsi: UInt32, level: Bool, activeHigh: Bool, shared: Bool) -> [UInt8] {
            let flags: UInt8 = 0x01 | (level ? 0 : 0x02) | (activeHigh ? 0 : 0x04) | (shared ? 0x08 : 0)
            return [0x89] + le(6, 2) + [flags, 1] + le(UInt64(gsi), 4)
        }

        /// WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, n).
        public static func wordBusNumber(min: UInt16, max: UInt16) -> [UInt8] {
            wordAddress(type: 2, typeFlags: 0, min: min, max: max)
        }

        /// WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...).
        public static func wordIO(min: UInt16, max: UInt16) -> [UInt8] {
            wordAddress(type: 1, typeFlags: 0x03, min: min, max: max)
        }

        static func wordAddress(type: UInt8, typeFlags: UInt8, min: UInt16, max: UInt16) -> [UInt8] {
            let length = UInt64(max) - UInt64(min) + 1
            return [0x88] + le(13, 2) + [type, 0x0C, typeFlags] + le(0, 2) + le(UInt64(min), 2)
                + le(UInt64(max), 2) + le(0, 2) + le(length, 2)
        }

        /// DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...).
        public static func dwordMemory(min: UInt32, max: UInt32) -> [UInt8] {
            let length = UInt64(max) - UInt64(min) + 1
            return [0x87] + le(23, 2) + [0, 0x0C, 0x01] + le(0, 4) + le(UInt64(min), 4)
                + le(UInt64(max), 4) + le(0, 4) + le(length, 4)
        }

        /// QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...).
        public static func qwordMemory(min: UInt64, max: UInt64) -> [UInt8] {
            let length = max &- min &+ 1
            return [0x8A] + le(43, 2) + [0, 0x0C, 0x01] + le(0, 8) + le(min, 8)
                + le(max, 8) + le(0, 8) + le(length, 8)
        }

        /// ResourceTemplate(){...}: the descriptors plus an end tag, as a Buffer.
        public static func template(_ descriptors: [[UInt8]]) -> [UInt8] {
            buffer(descriptors.flatMap { $0 } + [0x79, 0x00])
        }
    }
}

import GuestMemory
import Hypervisor

/// An ELF executable (32- or 64-bit, little-endian, x86) parsed for loading: its PT_LOAD
/// segments, entry point and, when present, the PVH entry from a Xen ELF note
/// (XEN_ELFNOTE_PHYS32_ENTRY = 18).
public struct ELFImage: Sendable {
    public struct Segment: Equatable, Sendable {
        /// Physical load address (p_paddr).
        public var physicalAddress: UInt64
        public var virtualAddress: UInt64
        public var fileOffset: UInt64
        public var fileSize: UInt64
        public var memorySize: UInt64
    }

    public static let xenElfNotePhys32Entry: UInt32 = 18
    public static let xenElfNoteGuestOS: UInt32 = 6
    static let maxProgramHeaders = 512

    public let is64Bit: Bool
    public let entry: UInt64
    public let segments: [Segment]
    public let pvhEntry: UInt64?
    /// The Xen XEN_ELFNOTE_GUEST_OS string ("linux" for a Linux vmlinux), when present.
    public let guestOS: String?
    /// The image carries a note owned by "Linux" (every vmlinux has one).
    public let isLinuxKernel: Bool

    static func hasMagic(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x7F && bytes[1] == 0x45 && bytes[2] == 0x4C && bytes[3] == 0x46
    }

    public init(bytes: [UInt8], path: String) throws {
        func bad(_ why: String) -> BootError { .invalidKernel(path: path, reason: "ELF: \(why)") }
        guard Self.hasMagic(bytes), bytes.count >= 52 else { throw BootError.notAKernel(path: path) }
        let cls = bytes[4]
        guard cls == 1 || cls == 2 else { throw bad("unknown class \(cls)") }
        guard bytes[5] == 1 else { throw bad("big-endian images are not supported") }
        is64Bit = cls == 2
        let machine = bytes.le(UInt16.self, at: 18) ?? 0
        guard machine == (is64Bit ? 62 : 3) else {
            throw bad("machine \(machine) is not \(is64Bit ? "x86-64 (62)" : "i386 (3)")")
        }
        let type = bytes.le(UInt16.self, at: 16) ?? 0
        guard type == 2 || type == 3 else { throw bad("type \(type) is not an executable") }
        let phoff: UInt64, phentsize: Int, phnum: Int
        if is64Bit {
            guard bytes.count >= 64 else { throw bad("header truncated") }
            entry = bytes.le(UInt64.self, at: 24)!
            phoff = bytes.le(UInt64.self, at: 32)!
            phentsize = Int(bytes.le(UInt16.self, at: 54)!)
            phnum = Int(bytes.le(UInt16.self, at: 56)!)
        } else {
            entry = UInt64(bytes.le(UInt32.self, at: 24)!)
            phoff = UInt64(bytes.le(UInt32.self, at: 28)!)
            phentsize = Int(bytes.le(UInt16.self, at: 42)!)
            phnum = Int(bytes.le(UInt16.self, at: 44)!)
        }
        guard phnum > 0 else { throw bad("no program headers") }
        guard phnum <= Self.maxProgramHeaders else { throw bad("\(phnum) program headers (at most \(Self.maxProgramHeaders))") }
        guard phentsize >= (is64Bit ? 56 : 32) else { throw bad("program header size \(phentsize) is too small") }
        var segs: [Segment] = []
        var pvh: UInt64?
        var os: String?
        var linux = false
        for i in 0..<phnum {
            let (off, o1) = UInt64(i).multipliedReportingOverflow(by: UInt64(phentsize))
            let (at, o2) = phoff.addingReportingOverflow(off)
            guard !o1, !o2, at <= UInt64(bytes.count), UInt64(bytes.count) - at >= UInt64(phentsize) else {
                throw bad("program header \(i) lies outside the file")
            }
            let h = Int(at)
            let ptype = bytes.le(UInt32.self, at: h)!
            var seg: Segment
            if is64Bit {
                seg = Segment(physicalAddress: bytes.le(UInt64.self, at: h + 24)!,
                              virtualAddress: bytes.le(UInt64.self, at: h + 16)!,
                              fileOffset: bytes.le(UInt64.self, at: h + 8)!,
                              fileSize: bytes.le(UInt64.self, at: h + 32)!,
                              memorySize: bytes.le(UInt64.self, at: h + 40)!)
            } else {
                seg = Segment(physicalAddress: UInt64(bytes.le(UInt32.self, at: h + 12)!),
                              virtualAddress: UInt64(bytes.le(UInt32.self, at: h + 8)!),
                              fileOffset: UInt64(bytes.le(UInt32.self, at: h + 4)!),
                              fileSize: UInt64(bytes.le(UInt32.self, at: h + 16)!),
                              memorySize: UInt64(bytes.le(UInt32.self, at: h + 20)!))
            }
            let (fileEnd, o3) = seg.fileOffset.addingReportingOverflow(seg.fileSize)
            guard !o3, fileEnd <= UInt64(bytes.count) else {
                throw bad("segment \(i) (offset 0x\(String(seg.fileOffset, radix: 16)), \(seg.fileSize) bytes) lies outside the file")
            }
            switch ptype {
            case 1: // PT_LOAD
                guard seg.fileSize <= seg.memorySize else {
                    throw bad("segment \(i) has p_filesz \(seg.fileSize) > p_memsz \(seg.memorySize)")
                }
                guard seg.physicalAddress.addingReportingOverflow(seg.memorySize).overflow == false else {
                    throw bad("segment \(i) wraps around the address space")
                }
                if seg.memorySize > 0 { segs.append(seg) }
            case 4: // PT_NOTE
                for note in Self.notes(bytes, from: Int(seg.fileOffset), to: Int(fileEnd)) {
                    if note.name == Array("Linux".utf8) { linux = true }
                    guard note.name == Array("Xen".utf8) else { continue }
                    if note.type == Self.xenElfNotePhys32Entry, pvh == nil {
                        if note.desc.count == 4 { pvh = note.desc.le(UInt32.self, at: 0).map(UInt64.init) }
                        if note.desc.count == 8 { pvh = note.desc.le(UInt64.self, at: 0) }
                    }
                    if note.type == Self.xenElfNoteGuestOS, os == nil {
                        os = String(decoding: note.desc.prefix { $0 != 0 }.prefix(64), as: UTF8.self)
                    }
                }
            default:
                break
            }
        }
        guard !segs.isEmpty else { throw bad("no loadable (PT_LOAD) segments") }
        segments = segs
        pvhEntry = pvh
        guestOS = os
        isLinuxKernel = linux
    }

    /// One ELF note: its name without the terminating NUL, its type and its descriptor.
    struct Note {
        var name: [UInt8]
        var type: UInt32
        var desc: [UInt8]
    }

    /// The notes of a PT_NOTE segment in `start..<end`, in order. The walk is bounded (4096
    /// notes, names and descriptors under 1 MiB) and stops at the first note that does not
    /// fit the segment.
    static func notes(_ bytes: [UInt8], from start: Int, to end: Int) -> [Note] {
        var out: [Note] = []
        var p = start
        let end = min(end, bytes.count)
        while p >= 0, p + 12 <= end, out.count < 4096 {
            guard let namesz = bytes.le(UInt32.self, at: p), let descsz = bytes.le(UInt32.self, at: p + 4),
                  let type = bytes.le(UInt32.self, at: p + 8),
                  namesz < 1 << 20, descsz < 1 << 20 else { break }
            let nameStart = p + 12
            let descStart = nameStart + ((Int(namesz) + 3) & ~3)
            guard descStart + Int(descsz) <= end else { break }
            var name = Array(bytes[nameStart..<(nameStart + Int(namesz))])
            if name.last == 0 { name.removeLast() }
            out.append(Note(name: name, type: type, desc: Array(bytes[descStart..<(descStart + Int(descsz))])))
            p = descStart + ((Int(descsz) + 3) & ~3)
        }
        return out
    }

    /// The physical address of the entry point: e_entry, translated from a segment's
    /// virtual to its physical address when it lies in a segment's virtual range only.
    public var physicalEntry: UInt64 {
        if segments.contains(where: { entry >= $0.physicalAddress && entry - $0.physicalAddress < $0.memorySize }) {
            return entry
        }
        if let s = segments.first(where: { entry >= $0.virtualAddress && entry - $0.virtualAddress < $0.memorySize }) {
            return entry - s.virtualAddress + s.physicalAddress
        }
        return entry
    }

    /// Copies every PT_LOAD segment to its physical address (zero-filling p_memsz beyond
    /// p_filesz). Segments must lie in guest RAM, outside the loader's low area and the
    /// firmware area. Returns the loaded physical range (lowest start ..< highest end).
    @discardableResult
    public func load(bytes: [UInt8], into memory: GuestMemory, path: String) throws -> Range<UInt64> {
        var low = UInt64.max, high: UInt64 = 0
        for (i, seg) in segments.enumerated() {
            let start = seg.physicalAddress, end = seg.physicalAddress + seg.memorySize
            try Self.checkPlacement(start..<end, what: "ELF segment \(i)", path: path, memory: memory)
            guard seg.memorySize <= UInt64(Int.max) else { throw BootError.insufficientMemory("\(path): ELF segment \(i) is too large") }
            try guestWrite {
                let fileEnd = Int(seg.fileOffset + seg.fileSize)
                try bytes[Int(seg.fileOffset)..<fileEnd].withUnsafeBytes { try memory.write(from: $0, at: start) }
                try memory.fill(0, at: start + seg.fileSize, length: Int(seg.memorySize - seg.fileSize))
            }
            low = min(low, start); high = max(high, end)
        }
        return low..<high
    }

    /// Throws unless `range` is guest RAM clear of the loader's and the firmware's areas.
    static func checkPlacement(_ range: Range<UInt64>, what: String, path: String, memory: GuestMemory) throws {
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        if range.overlaps(BootLayout.loaderArea) || range.overlaps(BootLayout.firmwareArea) {
            throw BootError.invalidKernel(path: path, reason: "\(what) at \(hex(range.lowerBound))-\(hex(range.upperBound)) overlaps the low 1 MiB the loader and firmware tables use; link the kernel at 1 MiB or above")
        }
        let length = range.upperBound - range.lowerBound
        guard length <= UInt64(Int.max), memory.isRAM(range.lowerBound, length: Int(length)) else {
            throw BootError.insufficientMemory("\(path): \(what) at \(hex(range.lowerBound))-\(hex(range.upperBound)) is not inside guest RAM")
        }
    }
}

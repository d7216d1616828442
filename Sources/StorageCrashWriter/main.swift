// storage-crash-writer: opens a qcow2 image and writes to it at random until killed.
// Used by StorageTests' crash-consistency test, which SIGKILLs it at random moments and
// then runs `qemu-img check` on the image.
//
// usage: StorageCrashWriter <image.qcow2> <seed> [operations]
#if canImport(Glibc)
import Glibc
#endif
import Storage

func say(_ text: String, to fd: Int32) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
}

let args = CommandLine.arguments
guard args.count >= 3, let seed = UInt64(args[2]) else {
    say("usage: StorageCrashWriter <image.qcow2> <seed> [operations]\n", to: 2)
    exit(2)
}
let operations = args.count > 3 ? Int(args[3]) ?? Int.max : Int.max
do {
    let image = try Qcow2Image(path: args[1])
    var state = seed | 1
    func next() -> UInt64 {  // xorshift64*
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 4096)
    defer { buffer.deallocate() }
    say("ready\n", to: 1)
    var i = 0
    while i < operations {
        i += 1
        let sectors = image.size / 512
        let start = next() % sectors
        let count = min(sectors - start, 1 + next() % 128)
        let op = next() % 10
        if op < 7 {
            let byte = UInt8(truncatingIfNeeded: next())
            // SAFETY: count * 512 <= 64 KiB < the buffer's size.
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(count * 512)])
            slice.initializeMemory(as: UInt8.self, repeating: byte)
            try image.write(UnsafeRawBufferPointer(slice), at: start * 512)
        } else if op < 9 {
            try image.discard(offset: start * 512, length: count * 512)
        } else {
            try image.writeZeroes(offset: start * 512, length: count * 512)
        }
    }
    try image.flush()
} catch {
    say("StorageCrashWriter: \(error)\n", to: 2)
    exit(1)
}

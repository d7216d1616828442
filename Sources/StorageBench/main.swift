// StorageBench: times 4k-style I/O through our RawImage / Qcow2Image (bench/storage-qcow2.sh).
//
// usage: StorageBench <image> <seq|rand> <read|write> <block size> <count> [seed]
// Prints: "<ops/s> <MiB/s>".
#if canImport(Glibc)
import Glibc
#endif
import Storage

func fail(_ text: String) -> Never {
    var bytes = Array((text + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

let args = CommandLine.arguments
guard args.count >= 6, let blockSize = Int(args[4]), let count = Int(args[5]), blockSize > 0, count > 0,
      ["seq", "rand"].contains(args[2]), ["read", "write"].contains(args[3])
else { fail("usage: StorageBench <image> <seq|rand> <read|write> <block size> <count> [seed]") }
let random = args[2] == "rand"
let writing = args[3] == "write"
var state = UInt64(args.count > 6 ? args[6] : "1") ?? 1
state |= 1

do {
    let image = try DiskImage.open(args[1], readOnly: !writing)
    let blocks = image.size / UInt64(blockSize)
    guard blocks > 0 else { fail("the image is smaller than one block") }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0xa5)
    var start = timespec()
    clock_gettime(CLOCK_MONOTONIC, &start)
    for i in 0..<count {
        let block: UInt64
        if random {
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            block = (state &* 2_685_821_657_736_338_717) % blocks
        } else {
            block = UInt64(i) % blocks
        }
        if writing {
            try image.write(UnsafeRawBufferPointer(buffer), at: block * UInt64(blockSize))
        } else {
            try image.read(into: buffer, at: block * UInt64(blockSize))
        }
    }
    if writing { try image.flush() }
    var end = timespec()
    clock_gettime(CLOCK_MONOTONIC, &end)
    let seconds = Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
    let ops = Double(count) / seconds
    print(String(Int(ops)), String(Int(ops * Double(blockSize) / 1_048_576)))
} catch {
    fail("StorageBench: \(error)")
}

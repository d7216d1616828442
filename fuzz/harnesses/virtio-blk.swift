// libFuzzer harness: virtio-blk requests (header, data, status; read, write, flush, get-id,
// discard and write-zeroes ranges) against a 64 KiB in-memory disk.
import Storage
import Devices

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioBlk(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let ro = size > 0 && data[size - 1] & 0x80 != 0
    VirtioFuzz.run(VirtioBlock(disk: MemoryDisk(size: 64 << 10), serial: "fuzz", readOnly: ro), data, size)
    return 0
}

// libFuzzer harness: a qcow2 image (header, extensions, backing name, L1/L2 and refcount
// tables, compressed clusters) opened from an unlinked temporary file, read at two places and written at one.
// The backing file is never opened by name: a 1 MiB MemoryDisk stands in for it.
#if canImport(Glibc)
import Glibc
#endif
@testable import Storage

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQcow2(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 8 else { return 0 }
    // The last 8 bytes choose where to read and write (sector numbers).
    let tail = UnsafeBufferPointer(start: data + size - 8, count: 8)
    let image = UnsafeBufferPointer(start: data, count: size - 8)
    // An unlinked temporary file (Glibc does not export memfd_create to Swift).
    var template = Array("/tmp/fuzz-qcow2-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    guard fd >= 0 else { fatalError("mkstemp") }
    unlink(template)
    var off = 0
    while off < image.count {
        // SAFETY: image outlives the call; write reads at most count - off bytes.
        let n = write(fd, image.baseAddress! + off, image.count - off)
        if n <= 0 { break }
        off += n
    }
    let file = ImageFile.adopt(fd: fd, path: "/fuzz/top.qcow2", readOnly: false)
    let disk: Qcow2Image
    do {
        disk = try Qcow2Image(file: file, chain: [], backingOpener: { name, _, path, _ in
            _ = Qcow2Image.resolveBacking(name, of: path)
            return MemoryDisk(size: 1 << 20)
        })
    } catch { return 0 }
    let sectors = max(disk.size / 512, 1)
    var buf = [UInt8](repeating: 0, count: 4096)
    for i in 0..<2 {
        let s = (UInt64(tail[i * 2]) << 8 | UInt64(tail[i * 2 + 1])) % sectors
        let len = min(UInt64(buf.count), disk.size - s * 512)
        buf.withUnsafeMutableBytes { b in
            _ = try? disk.read(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<Int(len)]), at: s * 512)
        }
    }
    let ws = (UInt64(tail[4]) << 8 | UInt64(tail[5])) % sectors
    let wlen = min(UInt64(512 * (1 + Int(tail[6] & 7))), disk.size - ws * 512)
    buf.withUnsafeBytes { b in
        _ = try? disk.write(UnsafeRawBufferPointer(rebasing: b[0..<Int(wlen)]), at: ws * 512)
    }
    if tail[7] & 1 == 1 { try? disk.discard(offset: ws * 512, length: wlen) }
    try? disk.flush()
    return 0
}

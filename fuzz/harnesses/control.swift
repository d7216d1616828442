// libFuzzer harness: bytes a client could send vmd's control socket, read as frames
// (4-byte length + JSON) and decoded as requests, then as replies (what vmctl reads).
#if canImport(Glibc)
import Glibc
#endif
import Control

private func decode<T: Decodable>(_ type: T.Type, _ bytes: UnsafeBufferPointer<UInt8>) {
    var sv: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0 else { fatalError("socketpair") }
    var sent = 0
    while sent < bytes.count {
        // SAFETY: bytes outlives the call; write reads at most count - sent bytes.
        let n = write(sv[0], bytes.baseAddress! + sent, bytes.count - sent)
        if n <= 0 { break }
        sent += n
    }
    close(sv[0])
    let ch = ControlChannel(fd: sv[1])
    for _ in 0..<8 {
        do {
            guard let (_, fds) = try ch.receive(T.self) else { break }
            for f in fds { close(f) }
        } catch { break }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // A socket buffer holds ~200 KiB; larger inputs would block the writer.
    guard size <= 65536 else { return 0 }
    let b = UnsafeBufferPointer(start: data, count: size)
    decode(RequestFrame.self, b)
    decode(ReplyFrame.self, b)
    return 0
}

// libFuzzer harness: virtio-net transmit (virtio_net_hdr + frame, locked MAC) and receive
// (frames written into the guest's buffers, mergeable or not) on an in-memory backend.
import Devices

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioNet(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let backend = MemoryNetworkBackend()
    let locked = size > 0 && data[size - 1] & 1 != 0
    let net = VirtioNet(mac: [0xfe, 0xe1, 0xba, 0xd0, 0, 1], backend: backend, lockedMAC: locked)
    // Frames waiting for the receive queue: sizes from the input's last bytes.
    let n = size > 2 ? Int(data[size - 2] % 4) : 0
    for i in 0..<n { backend.inject([UInt8](repeating: UInt8(i), count: 14 + Int(data[size - 3 - i % 2]) * 7)) }
    VirtioFuzz.run(net, data, size, between: { net.pollBackend() })
    return 0
}

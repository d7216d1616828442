// libFuzzer harness: virtio-rng (entropy) requests: writable buffers filled with bytes.
import Devices

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioRng(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    VirtioFuzz.run(VirtioEntropy(source: { $0.initializeMemory(as: UInt8.self, repeating: 7) }), data, size)
    return 0
}

// libFuzzer harness: virtio-console receive (host input into guest buffers) and transmit
// (guest output) queues.
import Devices

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioConsole(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let console = VirtioConsole(output: { _ in })
    console.input(Array("hello from the host\n".utf8))
    VirtioFuzz.run(console, data, size)
    return 0
}

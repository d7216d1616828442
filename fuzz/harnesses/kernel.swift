// libFuzzer harness: a kernel file (bzImage, ELF32/64 with PVH and Linux notes, multiboot)
// detected by content and loaded into a 64 MiB guest with an initrd and a command line.
import GuestMemory
import Boot

private let memory = try! GuestMemory(size: 64 << 20)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzKernel(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let image = try? KernelImage(bytes: bytes, path: "fuzz-kernel") else { return 0 }
    _ = try? BootLoader.load(image: image, initrd: [1, 2, 3, 4], initrdPath: "fuzz-initrd",
                             cmdline: "console=ttyS0", memory: memory, vcpus: 2)
    return 0
}

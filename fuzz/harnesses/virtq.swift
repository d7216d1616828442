// libFuzzer harness: the split-virtqueue descriptor walk (direct and indirect chains,
// EVENT_IDX) and the chain's gather/scatter copies, on guest RAM made of the input.
import GuestMemory
import Devices

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtq(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    VirtioFuzz.run(ChainWalker(), data, size, repeat: 1)
    return 0
}

/// A device that only walks: pops every chain, reads what is readable, fills what is writable.
final class ChainWalker: VirtioDeviceModel {
    var deviceType: VirtioDeviceType { .entropy }
    var pciClass: (UInt8, UInt8, UInt8) { (0xff, 0, 0) }
    var deviceFeatures: UInt64 { 0 }
    var queueMaxSizes: [UInt16] { [256] }
    var configSize: Int { 0 }
    func readConfig(offset: Int, size: Int) -> UInt32 { 0 }
    func writeConfig(offset: Int, size: Int, value: UInt32) {}
    func activate(features: UInt64) {}
    func reset() {}
    func process(queueIndex: Int, queue: inout SplitVirtqueue, memory: GuestMemory) throws {
        var chain = DescriptorChain()
        var budget = 512
        while budget > 0, try queue.pop(into: &chain, memory: memory) {
            budget -= 1
            let r = try chain.readBytes(offset: 0, count: min(chain.readableLength, 4096), memory: memory)
            let w = try chain.writeBytes(r + [0x5a], offset: 1, memory: memory)
            try queue.push(head: chain.head, written: UInt32(w), memory: memory)
            _ = try queue.shouldInterrupt(memory: memory)
        }
    }
}

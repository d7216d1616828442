// kvm-exit-bench: exits per second of a port-I/O loop guest through the KVM layer
// (KVMSystem -> KVMVirtualMachine -> KVMVCPU.run() -> VCPUExit). bench/kvm-exits.sh runs
// it next to bench/kvm-exits.c, a minimal C KVM_RUN loop over the same guest bytes.
//
// Usage: kvm-exit-bench [EXITS]   (default 200000). Prints one line: "<exits> <seconds>".
#if canImport(Glibc)
import Glibc
#endif
import GuestMemory
import Hypervisor
import KVM

// Real mode at 0x1000:  1: out 0x10,al / inc al / jmp 1b
let guest: [UInt8] = [0xe6, 0x10, 0xfe, 0xc0, 0xeb, 0xfa]

func fail(_ message: String) -> Never {
    let line = "kvm-exit-bench: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

let args = CommandLine.arguments
let target = args.count > 1 ? Int(args[1]) ?? -1 : 200_000
guard target > 0 else { fail("the exit count must be a positive integer, not \(args[1])") }

do {
    let memory = try GuestMemory(size: 1 << 16)
    try memory.write(bytes: guest, at: 0x1000)
    let vm = try KVMSystem().createVirtualMachine(memory: memory)
    let vcpu = try vm.makeVCPU(index: 0)
    var sregs = try vcpu.specialRegisters()
    sregs.cs = .realMode(selector: 0, code: true)
    try vcpu.setSpecialRegisters(sregs)
    var regs = X86Registers()
    regs.rip = 0x1000
    try vcpu.setRegisters(regs)

    // Warm up (page faults on first touch, CPUID, ...).
    for _ in 0..<1000 { _ = try vcpu.run() }

    var t0 = timespec(), t1 = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t0)
    var count = 0
    var sink: UInt8 = 0
    while count < target {
        switch try vcpu.run() {
        case let .io(io):
            if io.port == 0x10 && io.isWrite {
                sink &+= io.data.load(as: UInt8.self)
                count += 1
            }
        case .interrupted:
            continue
        case let other:
            fail("unexpected exit \(other)")
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1)
    let seconds = Double(t1.tv_sec - t0.tv_sec) + Double(t1.tv_nsec - t0.tv_nsec) / 1e9
    print("\(count) \(seconds) \(sink)")
} catch {
    fail("\(error)")
}

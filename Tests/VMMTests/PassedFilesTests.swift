#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import Storage
@testable import VMM

/// `MachineConfig.passedFiles`: a machine built from descriptors opens no guest file by
/// name (the paths only name the files in messages).
@Suite struct PassedFilesTests {
    func build(_ config: MachineConfig) throws -> Machine {
        try Machine(config: config, host: HostCapabilities(kvmProblem: nil, isPVM: false, emulatorAvailable: false),
                    backendFactory: { memory, _, _ in
                        FakeBackend(memory: memory) { i in FakeVCPU(index: i) { _ in .exit(.systemShutdown) } }
                    })
    }

    static func identity(_ fd: Int32) -> [UInt64]? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return [UInt64(st.st_dev), UInt64(st.st_ino)]
    }

    /// A multiboot image with the a.out-kludge addresses: loaded at 1 MiB, entry after the header.
    static func loadableMultibootKernel() -> [UInt8] {
        var bytes = [UInt8](repeating: 0xf4, count: 4096)  // hlt
        let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 0x0001_0000
        let words: [UInt32] = [magic, flags, 0 &- (magic &+ flags), 0x10_0000, 0x10_0000, 0, 0, 0x10_0040]
        for (i, w) in words.enumerated() { for b in 0..<4 { bytes[i * 4 + b] = UInt8(truncatingIfNeeded: w >> (8 * b)) } }
        return bytes
    }

    @Test func aMachineIsBuiltFromDescriptorsWhoseFilesHaveNoNamesLeft() throws {
        let kernel = temporaryFile(Self.loadableMultibootKernel())
        let initrd = temporaryFile([UInt8](repeating: 0x42, count: 3000))
        let cdrom = temporaryFile([UInt8](repeating: 0x43, count: 8192))
        let disk = temporaryFile([])
        unlink(disk)
        try RawImage.create(path: disk, size: 1 << 20)
        let kfd = open(kernel, O_RDONLY | O_CLOEXEC), ifd = open(initrd, O_RDONLY | O_CLOEXEC)
        let cfd = open(cdrom, O_RDONLY | O_CLOEXEC)
        let chain = try DiskImage.openChain(path: disk)
        let kernelID = Self.identity(kfd), initrdID = Self.identity(ifd)
        for f in [kernel, initrd, cdrom, disk] { unlink(f) }

        var config = MachineConfig(kernelPath: "passed-kernel", initrdPath: "passed-initrd", memorySize: 16 << 20,
                                   diskPaths: ["passed-disk", "passed-cdrom"], console: .none)
        config.passedFiles = PassedFiles(kernel: kfd, initrd: ifd, disks: [
            chain, [OpenedImageFile(fd: cfd, path: "passed-cdrom", format: .raw, readOnly: true)],
        ])
        let machine = try build(config)
        #expect(machine.kernelKind == .multiboot)
        let range = try #require(machine.bootResult?.initrdRange)
        #expect(range.count == 3000)
        #expect(try machine.memory.readBytes(at: range.lowerBound, count: 4) == [0x42, 0x42, 0x42, 0x42])
        #expect(machine.virtio.blockModels.map(\.disk.size) == [1 << 20, 8192])
        #expect(machine.virtio.blockModels.map(\.isReadOnly) == [false, true])
        // The kernel's and the initrd's descriptors were read and closed.
        #expect(Self.identity(kfd) != kernelID)
        #expect(Self.identity(ifd) != initrdID)
    }

    @Test func passedFilesThatDoNotMatchTheConfigurationAreRefused() throws {
        let kernel = temporaryFile(fakeMultibootKernel())
        defer { unlink(kernel) }
        var config = MachineConfig(kernelPath: kernel, memorySize: 16 << 20, diskPaths: ["a"], console: .none)
        config.passedFiles = PassedFiles(kernel: open(kernel, O_RDONLY | O_CLOEXEC))
        #expect(throws: VMMError.machine("the files passed to the machine do not match its configuration")) {
            _ = try build(config)
        }
    }
}

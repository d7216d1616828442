import Testing
import GuestMemory
@testable import Boot

@Suite struct KernelFormatTests {
    @Test func garbageIsNotAKernelAndTheErrorNamesTheFile() {
        let bytes = [UInt8](repeating: 0x90, count: 16384)
        #expect(throws: BootError.notAKernel(path: "/tmp/junk.bin")) {
            try KernelImage(bytes: bytes, path: "/tmp/junk.bin")
        }
        let message = BootError.notAKernel(path: "/tmp/junk.bin").description
        #expect(message.contains("/tmp/junk.bin"))
        #expect(message.contains("not a kernel"))
    }

    @Test func missingFileIsReported() {
        do {
            _ = try KernelImage(path: "/nonexistent/vmlinuz")
            Issue.record("expected an error")
        } catch let err as BootError {
            guard case let .unreadableFile(path, reason) = err else { Issue.record("wrong error \(err)"); return }
            #expect(path == "/nonexistent/vmlinuz")
            #expect(reason.contains("No such file"))
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func directoryIsNotAKernelFile() {
        #expect(throws: BootError.self) { try KernelImage(path: "/tmp") }
    }

    @Test func bzImageIsDetectedByContent() throws {
        let image = try KernelImage(bytes: SyntheticBzImage().bytes, path: "k.elf")
        #expect(image.format == .bzImage)
    }

    @Test func multibootMagicBeyond8KiBIsIgnored() throws {
        var bytes = [UInt8](repeating: 0, count: 12288)
        bytes.put(MultibootHeader.magic, at: 8192)
        bytes.put(UInt32(0), at: 8196)
        bytes.put(0 &- MultibootHeader.magic, at: 8200)
        #expect(MultibootHeader.find(in: bytes) == nil)
        bytes.put(MultibootHeader.magic, at: 4096)
        bytes.put(UInt32(0), at: 4100)
        bytes.put(0 &- MultibootHeader.magic, at: 4104)
        #expect(MultibootHeader.find(in: bytes)?.offset == 4096)
        // A wrong checksum does not count.
        bytes.put(UInt32(1), at: 4104)
        #expect(MultibootHeader.find(in: bytes) == nil)
    }

    @Test func elfFormatsAreDetected() throws {
        let k64 = try Support.buildELF(haltKernelSource, bits: 64, name: "plain64")
        #expect(try KernelImage(path: k64).format == .elf(is64Bit: true, pvhEntry: nil))
        let k32 = try Support.buildELF(haltKernelSource, bits: 32, name: "plain32")
        #expect(try KernelImage(path: k32).format == .elf(is64Bit: false, pvhEntry: nil))
        let pvh = try Support.buildELF(haltKernelSource + pvhNoteSource, bits: 32, name: "pvh32")
        #expect(try KernelImage(path: pvh).format == .elf(is64Bit: false, pvhEntry: 0x200000))
    }
}

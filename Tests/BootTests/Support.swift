import Foundation
import Testing
import GuestMemory
@testable import Boot

/// Test helpers: a scratch directory, gcc, and readers over guest memory.
enum Support {
    static func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("boottests-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Runs a program; returns (status, combined output).
    @discardableResult
    static func run(_ program: String, _ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func which(_ name: String) -> String? {
        for dir in ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"] {
            let path = dir + "/" + name
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    static let linkerScript = """
        ENTRY(_start)
        SECTIONS {
          . = 0x200000;
          .text : { *(.multiboot) *(.text*) }
          .note : { *(.note*) }
          .data : { *(.data*) }
          .bss : { *(.bss*) *(COMMON) }
        }
        """

    /// Assembles and links `source` (GNU as syntax, with `_start`) at 0x200000 with gcc.
    static func buildELF(_ source: String, bits: Int, name: String) throws -> String {
        guard let gcc = which("gcc") else { throw SetupError("gcc is not installed") }
        let dir = try tempDir()
        let src = dir.appendingPathComponent("\(name).S").path
        let ld = dir.appendingPathComponent("\(name).ld").path
        let out = dir.appendingPathComponent(name).path
        try source.write(toFile: src, atomically: true, encoding: .utf8)
        try linkerScript.write(toFile: ld, atomically: true, encoding: .utf8)
        let (status, output) = try run(gcc, [bits == 32 ? "-m32" : "-m64", "-nostdlib", "-static", "-no-pie",
                                             "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
                                             "-T", ld, "-o", out, src])
        guard status == 0 else { throw SetupError("gcc failed: \(output)") }
        return out
    }

    static func memory(_ size: UInt64 = 64 << 20) throws -> GuestMemory {
        try GuestMemory(layout: PhysicalMap.ramLayout(ramSize: size))
    }

    static func bytes(_ mem: GuestMemory, _ at: UInt64, _ n: Int) throws -> [UInt8] {
        try mem.readBytes(at: at, count: n)
    }

    static func sum(_ bytes: [UInt8]) -> UInt8 { bytes.reduce(0, &+) }
}

struct SetupError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Assembly shared by the ELF tests: a halt loop, some data, 8 KiB of bss.
let haltKernelSource = """
    .globl _start
    .text
    _start: hlt
     jmp _start
    .data
    .long 0x11223344
    .bss
    .space 8192

    """

let pvhNoteSource = """
    .pushsection .note.Xen, "a", @note
    .align 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long _start
    .popsection

    """

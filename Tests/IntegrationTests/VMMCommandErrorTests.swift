import Foundation
import Testing

/// Bad input to the `vmm` command: one clear line on stderr, exit status 2, no crash.
@Suite struct VMMCommandErrorTests {
    func expectOneLineError(_ args: [String], mentions: [String]) throws {
        let r = try Harness.vmm(args)
        #expect(r.status == 2, "vmm \(args) exited with \(r.status): \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(r.stderr)")
        for m in mentions { #expect(r.stderr.contains(m), "'\(r.stderr)' does not mention \(m)") }
        #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("Backtrace"))
        #expect(r.stdout.isEmpty)
    }

    @Test func missingKernel() throws {
        try expectOneLineError(["-k", "/no/such/vmlinuz"], mentions: ["/no/such/vmlinuz", "No such file"])
    }

    @Test func aFileThatIsNotAKernel() throws {
        try expectOneLineError(["-k", "/etc/passwd"], mentions: ["/etc/passwd", "not a kernel"])
    }

    @Test func aDirectoryAsKernel() throws {
        try expectOneLineError(["-k", "/tmp"], mentions: ["/tmp"])
    }

    @Test func tooLittleAndTooMuchMemory() throws {
        try expectOneLineError(["-k", "/etc/passwd", "-m", "1M"], mentions: ["memory size 1M is too small"])
        try expectOneLineError(["-k", "/etc/passwd", "-m", "100T"], mentions: ["memory size 100T is too large"])
        try expectOneLineError(["-k", "/etc/passwd", "-m", "lots"], mentions: ["'lots'"])
    }

    @Test func badCPUCount() throws {
        try expectOneLineError(["-k", "/etc/passwd", "-c", "0"], mentions: ["0 vCPUs"])
    }

    @Test func missingInitrd() throws {
        let kernel = try Harness.testGuest("longmode")
        try expectOneLineError(["-k", kernel, "-i", "/no/initrd.img"], mentions: ["/no/initrd.img"])
    }
}

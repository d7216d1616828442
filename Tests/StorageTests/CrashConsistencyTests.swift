import Foundation
import Testing
@testable import Storage

/// Kills a writer process (StorageCrashWriter, built with the tests) with SIGKILL at random
/// moments and checks that `qemu-img check` finds no corruption (leaked clusters allowed)
/// and that the image still opens and reads the same through our code and through qemu.
@Suite(.enabled(if: qemuImgAvailable, "qemu-img not installed"))
struct CrashConsistencyTests {
    static var writerPath: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("StorageCrashWriter").path
    }

    @Test(arguments: [512, 65536])
    func killedWriterLeavesAConsistentImage(clusterSize: Int) throws {
        let writer = Self.writerPath
        guard FileManager.default.isExecutableFile(atPath: writer) else {
            Issue.record("the StorageCrashWriter helper was not built next to the tests (\(writer))")
            return
        }
        let dir = TempDir()
        let path = dir.file("crash.qcow2")
        // 512-byte clusters make refcount blocks and refcount table growth frequent.
        try Qcow2Image.create(path: path, size: clusterSize == 512 ? 16 << 20 : 32 << 20, clusterSize: clusterSize)
        var rng = TestRandom(seed: UInt64(clusterSize))
        for round in 0..<6 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: writer)
            process.arguments = [path, String(rng.next() % 1_000_000)]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = out
            try process.run()
            // Wait until the image is open, then let it write for a random time.
            var seen = Data()
            while !String(decoding: seen, as: UTF8.self).contains("ready") {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                seen += chunk
            }
            #expect(String(decoding: seen, as: UTF8.self).contains("ready"), "writer failed: \(String(decoding: seen, as: UTF8.self))")
            usleep(UInt32(20_000 + rng.next(200_000)))
            #expect(process.isRunning, "the writer stopped before it was killed (round \(round))")
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            #expect(process.terminationReason == .uncaughtSignal)

            let check = try qemuCheck(path)
            #expect(check.status == 0 || check.status == 3,
                    "round \(round): qemu-img check found corruption: \(check.output)")
            if check.status != 0 && check.status != 3 { return }
            let ours = try Qcow2Image(path: path, readOnly: true).readAll()
            #expect(firstDifference(ours, try qemuContent(path, in: dir)) == nil, "round \(round): our reading differs from qemu's")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// Network boot under vmd (`boot device net`, issue 13 item 6), with real software end to
/// end on the software CPU: SeaBIOS runs iPXE's virtio-net option ROM (Debian's ipxe-qemu,
/// given to SeaBIOS through fw_cfg), iPXE's DHCP is answered by the local interface's
/// server with the boot file (an iPXE script), the built-in TFTP server serves the script,
/// Debian's kernel (bzImage) and the initramfs from the script's directory, and the
/// kernel's init prints its marker. Needs root (taps), seabios, ipxe-qemu and the guest files.
@Suite(.serialized) struct NetBootTests {
    static let rom = "/usr/lib/ipxe/qemu/pxe-virtio.rom"
    static let bios = "/usr/share/seabios/bios-256k.bin"
    static var vmlinuz: String { "\(LocalGuestTests.cache)/amd64/vmlinuz" }
    static var initramfs: String { "\(LocalGuestTests.cache)/amd64/initramfs.cpio.gz" }

    static let problem: String? = {
        if ProcessInfo.processInfo.environment["SWIFTVMM_SKIP_LINUX_BOOT"] != nil { return "SWIFTVMM_SKIP_LINUX_BOOT is set" }
        if let p = NetworkTests.tapProblem() { return p }
        for f in [rom, bios, vmlinuz, initramfs] where access(f, R_OK) != 0 {
            return "\(f) is missing (ipxe-qemu, seabios, guests/debian/build.sh)"
        }
        return nil
    }()

    @Test(.enabled(if: NetBootTests.problem == nil, "needs root, taps, ipxe-qemu, seabios and the guest files (guests/debian/build.sh)"),
          .timeLimit(.minutes(30)))
    func pxeBootsDebianThroughIPXEAndTheBuiltInTFTPServer() throws {
        try #require(Binaries.available)
        let dir = NSTemporaryDirectory() + "netboot-\(getpid())"
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: dir) }
        // TFTP serves regular files only (no symbolic links): copies of the files themselves.
        func real(_ p: String) -> String { URL(fileURLWithPath: p).resolvingSymlinksInPath().path }
        try fm.copyItem(atPath: real(Self.vmlinuz), toPath: dir + "/vmlinuz")
        try fm.copyItem(atPath: real(Self.initramfs), toPath: dir + "/initramfs.cpio.gz")
        try Data("""
            #!ipxe
            echo SWIFTVMM-IPXE-SCRIPT ${net0/ip} from ${next-server}
            kernel vmlinuz console=ttyS0 swiftvmm.netboot
            initrd initramfs.cpio.gz
            echo SWIFTVMM-IPXE-LOADED
            boot
            """.utf8).write(to: URL(fileURLWithPath: dir + "/boot.ipxe"))
        chmod(dir, 0o755)
        let d = try TestDaemon(config: """
            local prefix "10.218.0.0/16"
            vm "pxe" {
              disable
              boot "\(dir)/boot.ipxe"
              boot device net
              memory 256M
              accel emulator
              local interface
            }
            """, fake: false)
        defer { d.stop() }
        let started = Date()
        let start = try d.vmctl("start", "pxe")
        #expect(start.status == 0, "\(start.stderr)")
        let id = try #require(row(try d.vmctl("status").stdout, "pxe")?.first.flatMap { Int($0) })
        let console = try ConsoleClient(socket: d.socket, name: "pxe")
        defer { _ = console.detach() }
        let script = console.waitFor("SWIFTVMM-IPXE-SCRIPT", timeout: 900)
        let scriptAt = Date().timeIntervalSince(started)
        let loaded = script && console.waitFor("SWIFTVMM-IPXE-LOADED", timeout: 900)
        let loadedAt = Date().timeIntervalSince(started)
        let done = loaded && console.waitFor("SWIFTVMM-INIT-OK", timeout: 1500)
        let total = Date().timeIntervalSince(started)
        let out = console.output.snapshot().replacingOccurrences(of: "\r", with: "")
        #expect(script, "iPXE never ran the script; console:\n\(out.suffix(3000))\nvmd:\n\(d.log.snapshot())")
        #expect(done, "no init marker; console:\n\(out.suffix(3000))\nvmd:\n\(d.log.snapshot())")
        // iPXE got the lease from the local interface's DHCP and the script from its TFTP.
        #expect(out.contains("SWIFTVMM-IPXE-SCRIPT 10.218.\(id).3 from 10.218.\(id).2"), "\(out.suffix(3000))")
        #expect(out.contains("swiftvmm.netboot"), "the kernel's command line came from the script")
        #expect(loaded, "iPXE did not load the kernel and initrd; console:\n\(out.suffix(3000))")
        let f = { (t: Double) in String(format: "%.1f", t) }
        let bytes = ((try? fm.attributesOfItem(atPath: dir + "/vmlinuz")[.size] as? Int) ?? 0)
            + ((try? fm.attributesOfItem(atPath: dir + "/initramfs.cpio.gz")[.size] as? Int) ?? 0)
        print("NetBootTests: iPXE script after \(f(scriptAt)) s, kernel + initrd (\(bytes >> 10) KiB by TFTP) loaded after \(f(loadedAt)) s, init marker after \(f(total)) s (software CPU, vmctl start to marker)")
    }
}

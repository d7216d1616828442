#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// vmd booting through the firmware (SeaBIOS) when a VM has no kernel: `vmctl start -r ISO`
/// puts the ISO on the virtio-scsi CD-ROM and GRUB's menu appears on `vmctl console`;
/// `boot device` (vm.conf) and `-B` choose which of a disk and the CD the firmware tries
/// first. On the software CPU (`accel emulator`), so no /dev/kvm is needed.
@Suite(.serialized) struct FirmwareVMDTests {
    static let bios = "/usr/share/seabios/bios-256k.bin"
    static let tools = [bios, "/usr/bin/grub-mkrescue", "/usr/bin/xorriso", "/usr/lib/grub/i386-pc/cdboot.img"]
    static let haveTools = tools.allSatisfy { access($0, R_OK) == 0 }
    /// Changing a VM's settings at start (-r, -B) and creating one from options is root's.
    static let canRun = haveTools && geteuid() == 0

    /// A grub-mkrescue ISO whose only content is a serial menu that waits (no kernel).
    static let iso: Result<String, RealGuestTests.BuildFailure> = {
        let dir = RealGuestTests.repoRoot + "/.build/guests-vmd-firmware"
        let out = dir + "/menu.iso"
        do {
            try FileManager.default.createDirectory(atPath: dir + "/root/boot/grub", withIntermediateDirectories: true)
            try """
                serial --unit=0 --speed=115200
                terminal_input serial
                terminal_output serial
                set timeout=-1
                menuentry "swiftvmm vmd cdrom menu" {
                  echo "chosen"
                }

                """.write(toFile: dir + "/root/boot/grub/grub.cfg", atomically: true, encoding: .utf8)
            let r = try run("/usr/bin/grub-mkrescue", ["-o", out, dir + "/root"], timeout: 120)
            guard r.status == 0 else { return .failure(.init(description: "grub-mkrescue failed: \(r.stderr.suffix(300))")) }
            return .success(out)
        } catch {
            return .failure(.init(description: "cannot make the ISO: \(error)"))
        }
    }()

    @Test(.enabled(if: canRun, "needs seabios, grub-pc-bin, xorriso and root (vmctl start -r/-B)"))
    func vmctlStartWithACDROMShowsTheBootLoaderOnTheConsole() throws {
        try #require(Binaries.available)
        let iso = try Self.iso.get()
        let d = try TestDaemon(config: "", fake: false)
        defer { d.stop() }
        // A VM created from the options alone: no kernel means firmware boot.
        let start = try d.vmctl("start", "-m", "64M", "-r", iso, "--accel", "emulator", "cd")
        #expect(start.status == 0, "\(start.stderr)")
        let c = try ConsoleClient(socket: d.socket, name: "cd")
        #expect(c.waitFor("Booting from DVD/CD...", timeout: 60), "\(c.output.snapshot())")
        #expect(c.waitFor("swiftvmm vmd cdrom menu", timeout: 120), "\(c.output.snapshot())")
        #expect(c.output.snapshot().contains("GNU GRUB"), "\(c.output.snapshot())")
        #expect(try d.vmctl("stop", "-f", "-w", "cd").status == 0)
        #expect(c.waitForExit())
    }

    /// vm.conf's `cdrom` and `boot device`: with a blank disk and the CD, `boot device
    /// cdrom` tries the CD first; `-B disk` at start tries the disk first (then the CD).
    @Test(.enabled(if: canRun, "needs seabios, grub-pc-bin, xorriso and root (vmctl start -r/-B)"))
    func bootDeviceChoosesWhatTheFirmwareTriesFirst() throws {
        try #require(Binaries.available)
        let iso = try Self.iso.get()
        let disk = NSTemporaryDirectory() + "vmd-fw-blank-\(getpid()).img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        defer { unlink(disk) }
        let conf = "vm \"bd\" {\n disable\n memory 64M\n accel emulator\n disk \"\(disk)\" format raw\n cdrom \"\(iso)\"\n boot device cdrom\n}\n"
        let d = try TestDaemon(config: conf, fake: false)
        defer { d.stop() }
        for (args, first, then) in [(["start", "bd"], "Booting from DVD/CD...", nil as String?),
                                    (["start", "-B", "disk", "bd"], "Booting from Hard Disk...", "Booting from DVD/CD...")] {
            let start = try d.vmctl(args: args)
            #expect(start.status == 0, "\(args): \(start.stderr)")
            let c = try ConsoleClient(socket: d.socket, name: "bd")
            #expect(c.waitFor("swiftvmm vmd cdrom menu", timeout: 120), "\(args): \(c.output.snapshot())")
            let log = c.output.snapshot()
            let order = ["Booting from Hard Disk...", "Booting from DVD/CD..."].compactMap { s in log.range(of: s).map { (s, $0.lowerBound) } }
                .sorted { $0.1 < $1.1 }.map(\.0)
            #expect(order.first == first, "\(args): \(log)")
            if let then { #expect(order.contains(then), "\(args): \(log)") } else { #expect(order.count == 1, "\(args): \(log)") }
            #expect(try d.vmctl("stop", "-f", "-w", "bd").status == 0)
            #expect(c.waitForExit())
        }
    }

    /// A cdrom that is no ISO fails the start with one line naming it; a VM with neither
    /// kernel, disk nor CD bootable gets the firmware's "No bootable device" and stops.
    @Test(.enabled(if: canRun, "needs seabios, grub-pc-bin, xorriso and root (vmctl start -r/-B)"))
    func badCDROMsAndNothingBootableAreReported() throws {
        try #require(Binaries.available)
        let notISO = NSTemporaryDirectory() + "vmd-fw-notiso-\(getpid()).iso"
        FileManager.default.createFile(atPath: notISO, contents: Data(count: 64 << 10))
        defer { unlink(notISO) }
        let blank = NSTemporaryDirectory() + "vmd-fw-blank2-\(getpid()).img"
        FileManager.default.createFile(atPath: blank, contents: Data(count: 1 << 20))
        defer { unlink(blank) }
        let d = try TestDaemon(config: "", fake: false)
        defer { d.stop() }
        let bad = try d.vmctl("start", "-m", "64M", "-r", notISO, "--accel", "emulator", "bad")
        #expect(bad.status != 0, "\(bad.stdout)")
        #expect(bad.stderr.contains("\(notISO): it is not an ISO 9660 image") && bad.stderr.split(separator: "\n").count == 1,
                "\(bad.stderr)")
        let none = try d.vmctl("start", "-m", "64M", "-d", "raw:" + blank, "--accel", "emulator", "none")
        #expect(none.status == 0, "\(none.stderr)")
        let waited = try d.vmctl("wait", "none")
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(d.log.snapshot().contains("guest reset"), "\(d.log.snapshot())")
    }
}

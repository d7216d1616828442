import Foundation
import Testing

/// Booting through SeaBIOS (Debian's seabios package) on the software CPU: its banner on
/// COM1 through fw_cfg's etc/sercon-port, "No bootable device" and a clean stop for a blank
/// disk or an empty CD drive, and images made from Debian packages
/// (guests/firmware/make-images.sh): a raw disk with SYSLINUX in its MBR and on a FAT
/// partition, and a grub-mkrescue ISO on the virtio-scsi CD-ROM, each booted to Debian's
/// kernel and its init (the ISO's init mounts the CD through virtio_scsi + sr_mod).
@Suite(.serialized) struct FirmwareBootTests {
    static let bios = "/usr/share/seabios/bios-256k.bin"
    static let haveBIOS = FileManager.default.fileExists(atPath: bios)
    static let cache = ProcessInfo.processInfo.environment["SWIFTVMM_GUEST_CACHE"]
        ?? Harness.packageRoot.appendingPathComponent(".build/guests/debian").path
    static let arch = "\(cache)/amd64"
    static let kernel = "\(arch)/vmlinuz", initrd = "\(arch)/initramfs.cpio.gz"
    static let tools = ["/usr/bin/syslinux", "/usr/bin/mcopy", "/usr/sbin/mkfs.vfat", "/usr/sbin/sfdisk",
                        "/usr/lib/syslinux/mbr/mbr.bin", "/usr/bin/grub-mkrescue", "/usr/bin/xorriso",
                        "/usr/lib/grub/i386-pc/cdboot.img"]
    /// The Linux boot needs the guest kernel, the image tools, and is skipped with
    /// SWIFTVMM_SKIP_LINUX_BOOT (each boot costs ~130-200 CPU-seconds in a debug build, most
    /// of it the kernel's own XZ decompression on the software CPU).
    static let canBootLinux = haveBIOS && ProcessInfo.processInfo.environment["SWIFTVMM_SKIP_LINUX_BOOT"] == nil
        && ([kernel, initrd, "\(arch)/initramfs", "\(arch)/root/lib/modules"] + tools)
            .allSatisfy { FileManager.default.fileExists(atPath: $0) }

    static let imageDir = Harness.packageRoot.appendingPathComponent(".build/guests-firmware").path

    /// Builds the images once per test process; returns the directory.
    static func images() throws -> String {
        lock.lock(); defer { lock.unlock() }
        if !built {
            let r = try Harness.run(["/bin/sh", Harness.packageRoot.appendingPathComponent("guests/firmware/make-images.sh").path,
                                     imageDir, arch, "--iso"], timeout: 300)
            guard r.status == 0 else { throw HarnessError("make-images.sh failed: \(r.stderr)") }
            built = true
        }
        return imageDir
    }
    private static let lock = NSLock()
    nonisolated(unsafe) private static var built = false   // guarded by lock

    /// A private copy of `image` (the guest writes to its disk).
    static func copy(_ image: String) throws -> String {
        let dst = NSTemporaryDirectory() + "swiftvmm-fw-\(getpid())-\(UUID().uuidString).img"
        try FileManager.default.copyItem(atPath: image, toPath: dst)
        return dst
    }

    @Test(.enabled(if: haveBIOS, "needs Debian's seabios package"))
    func seaBIOSBannerThenNoBootableDeviceAndACleanStop() throws {
        let blank = NSTemporaryDirectory() + "swiftvmm-fw-blank-\(getpid()).img"
        FileManager.default.createFile(atPath: blank, contents: Data(count: 1 << 20))
        defer { unlink(blank) }
        let r = try Harness.vmm(["--accel", "emulator", "-m", "64M", "-d", blank], timeout: 120)
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "\(log)\n\(r.stderr)")
        #expect(log.contains("SeaBIOS (version "), "\(log)")
        #expect(log.contains("Booting from Hard Disk..."), "\(log)")
        #expect(log.contains("No bootable device."), "\(log)")
        #expect(r.status == 0 && r.stderr.contains("guest reset"), "status \(r.status): \(r.stderr)")
    }

    @Test(.enabled(if: haveBIOS, "needs Debian's seabios package"))
    func noDiskAtAllAlsoStopsCleanly() throws {
        // Two vCPUs: SeaBIOS starts the AP and waits for it under a spin lock (this hung
        // before PAUSE ended the emulator's slice at once).
        let r = try Harness.vmm(["--accel", "emulator", "-m", "32M", "-c", "2"], timeout: 120)
        #expect(!r.timedOut)
        #expect(r.stdout.contains("No bootable device."), "\(r.stdout)")
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test(.enabled(if: haveBIOS, "needs Debian's seabios package"))
    func anEmptyCDDriveIsReportedByTheFirmware() throws {
        let r = try Harness.vmm(["--accel", "emulator", "-m", "32M", "-B", "cdrom"], timeout: 120)
        #expect(!r.timedOut)
        #expect(r.stdout.contains("Booting from DVD/CD..."), "\(r.stdout)")
        #expect(r.stdout.contains("Could not read from CDROM") && r.stdout.contains("No bootable device."), "\(r.stdout)")
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test func badFirmwareAndCDROMFilesAreOneLine() throws {
        for (args, mention) in [(["--firmware", "/no/bios.bin"], "cannot read firmware /no/bios.bin"),
                                (["--firmware", "/etc/passwd"], "/etc/passwd is not a BIOS image"),
                                (["-r", "/no/cd.iso"], "cannot use CD-ROM image /no/cd.iso"),
                                (["-r", "/etc/passwd"], "/etc/passwd: it is not an ISO 9660 image"),
                                (["-B", "net"], "boot device net needs a local interface with a boot file")] {
            let r = try Harness.vmm(["--accel", "emulator", "-m", "32M"] + args)
            #expect(r.status == 2, "\(args): \(r.status) \(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(mention), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
    }

    @Test(.enabled(if: canBootLinux, "needs seabios, syslinux, mtools, dosfstools, fdisk and the Debian guest kernel (guests/debian/build.sh); SWIFTVMM_SKIP_LINUX_BOOT skips it"))
    func syslinuxDiskBootsDebianThroughSeaBIOS() throws {
        let disk = try Self.copy(Self.images() + "/syslinux-disk.img")
        defer { unlink(disk) }
        let r = try Harness.vmm(["--accel", "emulator", "-m", "256M", "-d", disk], timeout: 1500)
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "no power-off in time; console so far:\n\(log.suffix(3000))")
        #expect(r.status == 0, "vmm status \(r.status): \(r.stderr)\n\(log.suffix(3000))")
        for step in ["SeaBIOS (version ", "Booting from Hard Disk...", "SYSLINUX 6.04", "swiftvmm syslinux disk",
                     "boot:", "Loading /vmlinuz", "Linux version 6.", "BOOT_IMAGE=/vmlinuz"] {
            #expect(log.contains(step), "missing '\(step)':\n\(log.prefix(3000))")
        }
        // Linux found our ACPI tables through SeaBIOS's table loader, and its virtio disk.
        #expect(log.contains("ACPI: RSDP") && log.contains("SWVMM"), "\(log.prefix(4000))")
        #expect(log.contains("loaded virtio_blk") && log.contains("vda: vda1"), "\(log.suffix(3000))")
        #expect(log.contains(LinuxGuestTests.marker))
        #expect(log.contains("reboot: Power down"), "\(log.suffix(1000))")
    }

    @Test(.enabled(if: canBootLinux, "needs seabios, grub-pc-bin, xorriso, mtools and the Debian guest kernel and modules (guests/debian/build.sh); SWIFTVMM_SKIP_LINUX_BOOT skips it"))
    func grubISOBootsDebianWhichReadsTheCDROM() throws {
        let iso = try Self.images() + "/grub-cdrom.iso"
        let r = try Harness.vmm(["--accel", "emulator", "-m", "256M", "-r", iso], timeout: 1500)
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "no power-off in time; console so far:\n\(log.suffix(3000))")
        #expect(r.status == 0, "vmm status \(r.status): \(r.stderr)\n\(log.suffix(3000))")
        for step in ["SeaBIOS (version ", "Booting from DVD/CD...", "GNU GRUB", "swiftvmm cdrom linux",
                     "Linux version 6.", "swiftvmm.cdrom=1"] {
            #expect(log.contains(step), "missing '\(step)':\n\(log.prefix(3000))")
        }
        for m in ["virtio_scsi", "sr_mod", "isofs"] {
            #expect(log.contains("loaded \(m)\n"), "module \(m): \(log.suffix(2000))")
        }
        // Linux's sr driver on our LUN, then the marker file read from the mounted ISO.
        #expect(log.contains("SWIFTVMM VIRTUAL CD-ROM"), "\(log.suffix(3000))")
        #expect(log.contains("cdrom marker: SWIFTVMM-CDROM-MARKER"), "\(log.suffix(3000))")
        #expect(log.contains(LinuxGuestTests.marker))
        #expect(log.contains("reboot: Power down"), "\(log.suffix(1000))")
    }
}

/// The same firmware on KVM. SeaBIOS's POST runs on this host's PVM-backed KVM; SYSLINUX
/// does not: its 32-bit `iret` (RIP 0x8ffc in ldlinux) is an instruction kvm_pvm cannot
/// emulate ("KVM could not emulate an instruction"; QEMU with -enable-kvm stops at the same
/// RIP here), so the boot-loader and Linux steps need KVM on real VT-x/SVM hardware.
@Suite(.serialized) struct FirmwareKVMTests {
    static let kvmUsable = Harness.kvmProblem == nil && FirmwareBootTests.haveBIOS
    static let isPVM = access("/sys/module/kvm_pvm", F_OK) == 0

    @Test(.enabled(if: kvmUsable, "needs a usable /dev/kvm and Debian's seabios package"))
    func seaBIOSPOSTOnKVM() throws {
        let blank = NSTemporaryDirectory() + "swiftvmm-fwkvm-blank-\(getpid()).img"
        FileManager.default.createFile(atPath: blank, contents: Data(count: 1 << 20))
        defer { unlink(blank) }
        let r = try Harness.vmm(["--accel", "kvm", "-m", "64M", "-c", "2", "-d", blank], timeout: 120)
        #expect(!r.timedOut, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("SeaBIOS (version ") && r.stdout.contains("Booting from Hard Disk..."), "\(r.stdout)")
        #expect(r.stdout.contains("No bootable device."), "\(r.stdout)")
        #expect(r.status == 0, "\(r.stderr)")
    }

    static let grubTools = ["/usr/bin/grub-mkrescue", "/usr/bin/xorriso", "/usr/lib/grub/i386-pc/cdboot.img"]
        .allSatisfy { FileManager.default.fileExists(atPath: $0) }

    /// A grub-mkrescue ISO holding only a serial menu whose one entry prints a line and
    /// reboots (a guest reset stops the VM): the boot loader without a kernel.
    static func menuISO() throws -> String {
        let dir = Harness.packageRoot.appendingPathComponent(".build/guests-firmware-menu").path
        try FileManager.default.createDirectory(atPath: dir + "/root/boot/grub", withIntermediateDirectories: true)
        try """
            serial --unit=0 --speed=115200
            terminal_input serial
            terminal_output serial
            set timeout=1
            menuentry "swiftvmm grub menu" {
              echo "swiftvmm grub entry ran"
              reboot
            }

            """.write(toFile: dir + "/root/boot/grub/grub.cfg", atomically: true, encoding: .utf8)
        let r = try Harness.run(["/usr/bin/grub-mkrescue", "-o", dir + "/menu.iso", dir + "/root"], timeout: 120)
        guard r.status == 0 else { throw HarnessError("grub-mkrescue failed: \(r.stderr)") }
        return dir + "/menu.iso"
    }

    /// GRUB (from the ISO, through SeaBIOS's El Torito boot of the virtio-scsi CD-ROM) runs
    /// on this host's PVM-backed KVM: its menu, the entry, its reboot.
    @Test(.enabled(if: kvmUsable && grubTools, "needs a usable /dev/kvm, seabios, grub-pc-bin and xorriso"))
    func grubMenuFromTheCDROMOnKVM() throws {
        let r = try Harness.vmm(["--accel", "kvm", "-m", "64M", "-r", Self.menuISO()], timeout: 120)
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(!r.timedOut, "\(log)\n\(r.stderr)")
        for step in ["SeaBIOS (version ", "Booting from DVD/CD...", "GNU GRUB", "swiftvmm grub menu", "swiftvmm grub entry ran"] {
            #expect(log.contains(step), "missing '\(step)':\n\(log.suffix(3000))")
        }
        #expect(r.status == 0 && r.stderr.contains("guest reset"), "\(r.status): \(r.stderr)")
    }

    @Test(.enabled(if: kvmUsable && !isPVM && FirmwareBootTests.canBootLinux,
                   "needs KVM on real VT-x/SVM hardware (kvm_pvm cannot emulate SYSLINUX's 32-bit iret), the image tools and the Debian guest kernel"))
    func syslinuxDiskBootsDebianOnKVM() throws {
        let disk = try FirmwareBootTests.copy(FirmwareBootTests.images() + "/syslinux-disk.img")
        defer { unlink(disk) }
        let r = try Harness.vmm(["--accel", "kvm", "-m", "256M", "-d", disk], timeout: 300)
        let log = r.stdout.replacingOccurrences(of: "\r", with: "")
        #expect(r.status == 0 && !r.timedOut, "\(r.stderr)\n\(log.suffix(3000))")
        for step in ["SeaBIOS (version ", "SYSLINUX 6.04", "boot:", "Linux version 6.", LinuxGuestTests.marker] {
            #expect(log.contains(step), "missing '\(step)':\n\(log.suffix(3000))")
        }
    }
}

/// The PIIX3 PCI-to-ISA bridge at 0:1.0 (Intel 82371SB function 0, 8086:7000, class 06/01),
/// as QEMU's i440FX machine has it: what SeaBIOS's `pci_setup` looks for to program the
/// PCI interrupt routers (PIRQRC[A:D], config 0x60-0x63) and the ELCR.
///
/// The PIRQRC registers read back what firmware writes (reset value 0x80: routing disabled;
/// writable bits 7 and 3:0) and route nothing: this machine wires PCI INTx lines to the
/// GSIs of its `PCIInterruptRouting` (IOAPIC inputs 16-19), which the ACPI `_PRT` states
/// and guests with ACPI use. The ELCR lives in the 8259 model (ports 0x4D0/0x4D1).
public final class PIIX3ISABridge: PCIDevice {
    public private(set) var header: PCIConfigHeader
    /// Config offset of PIRQRC[A]; B, C and D follow.
    public static let pirqRouteControl = 0x60

    public init() {
        header = PCIConfigHeader(vendorID: 0x8086, deviceID: 0x7000, classCode: 0x06, subclass: 0x01,
                                 revision: 0x00, subsystemVendorID: 0x1AF4, subsystemID: 0x1100,
                                 headerType: 0x80)
        for i in 0..<4 {
            header.setRaw(Self.pirqRouteControl + i, size: 1, value: 0x80)
            header.setMask(Self.pirqRouteControl + i, size: 1, mask: 0x8F)
        }
    }

    /// The ISA IRQ firmware routed PIRQ `line` (0 = A ... 3 = D) to, nil when disabled.
    public func routedIRQ(line: Int) -> UInt8? {
        guard (0..<4).contains(line) else { return nil }
        let v = UInt8(truncatingIfNeeded: header.read(offset: Self.pirqRouteControl + line, size: 1))
        return v & 0x80 != 0 ? nil : v & 0x0F
    }

    public var pciName: String { "piix3-isa-bridge" }
    public var bars: [PCIBar] { [] }
    public func configRead(offset: Int, size: Int) -> UInt32 { header.read(offset: offset, size: size) }
    public func configWrite(offset: Int, size: Int, value: UInt32) { header.write(offset: offset, size: size, value: value) }
    public func barRead(index: Int, offset: UInt64, size: Int) -> UInt64 { 0 }
    public func barWrite(index: Int, offset: UInt64, size: Int, value: UInt64) {}
}

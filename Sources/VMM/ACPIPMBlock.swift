import Boot
import Devices

/// The fixed ACPI power-management hardware the FADT describes (Boot's
/// `ACPIPowerManagement` constants): PM1a event block (PM1_STS +0, PM1_EN +2) and PM1a
/// control block. A control write with SLP_EN and SLP_TYP = S5 powers the VM off. The
/// machine is always in ACPI mode, so control reads have SCI_EN set. Map the event block
/// and the control block separately (`eventPorts`, `controlPorts`).
///
/// The fixed-feature power button (the FADT's PWR_BUTTON flag is clear): `pressPowerButton()`
/// sets PWRBTN_STS in PM1_STS; the SCI line is high while any status bit is set whose
/// enable bit in PM1_EN is set (level-triggered, as ACPI requires), so a guest that enabled
/// PWRBTN_EN takes an SCI and clears the status by writing one to it.
public final class ACPIPMBlock {
    public private(set) var status: UInt16 = 0
    public private(set) var enable: UInt16 = 0
    public private(set) var control: UInt16 = ACPIPowerManagement.sciEnable
    /// Called when the guest enters S5 (soft off).
    public var onPowerOff: (() -> Void)?
    /// PM1_STS / PM1_EN bits: the fixed power button.
    public static let powerButtonStatus: UInt16 = 1 << 8
    public static let powerButtonEnable: UInt16 = 1 << 8
    /// The status bits that can raise the SCI (those we implement).
    static let sciSources: UInt16 = powerButtonStatus

    private let sci: IRQLine?
    private var sciLevel = false

    /// The port facets to map (each keeps this block alive).
    public var eventPorts: EventBlock { EventBlock(owner: self) }
    public var controlPorts: ControlBlock { ControlBlock(owner: self) }

    /// - Parameter sci: the SCI line (GSI `ACPIPowerManagement.sciIRQ`); nil: no SCI.
    public init(sci: IRQLine? = nil) { self.sci = sci }

    /// Presses the power button: sets PWRBTN_STS and raises the SCI when the guest enabled
    /// it. The guest decides what to do (an ACPI OS shuts down). Call with the device lock held.
    public func pressPowerButton() {
        status |= Self.powerButtonStatus
        updateSCI()
    }

    /// Whether the SCI line is asserted now.
    public var sciAsserted: Bool { sciLevel }

    func updateSCI() {
        let level = status & enable & Self.sciSources != 0
        guard level != sciLevel else { return }
        sciLevel = level
        sci?.set(level)
    }

    public final class EventBlock: PortIODevice {
        let owner: ACPIPMBlock
        init(owner: ACPIPMBlock) { self.owner = owner }

        public func ioRead(offset: UInt16, size: Int) -> UInt32 {
            let regs = UInt32(owner.status) | UInt32(owner.enable) << 16
            return (regs >> (UInt32(offset & 3) * 8)) & ACPIPMBlock.mask(size)
        }

        public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            for i in 0..<size {
                let byte = UInt16(truncatingIfNeeded: value >> (8 * i))
                let o = Int(offset) + i
                switch o {
                case 0: owner.status &= ~byte          // write-one-to-clear
                case 1: owner.status &= ~(byte << 8)
                case 2: owner.enable = owner.enable & 0xFF00 | byte
                case 3: owner.enable = owner.enable & 0x00FF | byte << 8
                default: break
                }
            }
            owner.updateSCI()
        }
    }

    public final class ControlBlock: PortIODevice {
        let owner: ACPIPMBlock
        init(owner: ACPIPMBlock) { self.owner = owner }

        public func ioRead(offset: UInt16, size: Int) -> UInt32 {
            (UInt32(owner.control) >> (UInt32(offset & 1) * 8)) & ACPIPMBlock.mask(size)
        }

        public func ioWrite(offset: UInt16, size: Int, value: UInt32) {
            var v = owner.control
            for i in 0..<size where Int(offset) + i < 2 {
                let byte = UInt16(truncatingIfNeeded: value >> (8 * i))
                v = (Int(offset) + i == 0) ? (v & 0xFF00 | byte) : (v & 0x00FF | byte << 8)
            }
            // SLP_EN is write-only; SCI_EN stays set.
            owner.control = (v & ~ACPIPowerManagement.sleepEnable) | ACPIPowerManagement.sciEnable
            if ACPIPowerManagement.isPowerOff(controlWrite: v) { owner.onPowerOff?() }
        }
    }

    static func mask(_ size: Int) -> UInt32 { size >= 4 ? 0xFFFF_FFFF : (UInt32(1) << (size * 8)) - 1 }
}

extension ACPIPMBlock {
    /// PM1 status, enable and control (for snapshots); the SCI level follows from them.
    public struct Snapshot: Codable, Sendable, Equatable {
        public var status: UInt16, enable: UInt16, control: UInt16
    }

    public func snapshot() -> Snapshot { Snapshot(status: status, enable: enable, control: control) }

    /// Restores a snapshot and drives the SCI to match. Call with the device lock held.
    public func restore(_ s: Snapshot) {
        status = s.status & Self.sciSources
        enable = s.enable
        control = s.control | ACPIPowerManagement.sciEnable
        updateSCI()
    }
}

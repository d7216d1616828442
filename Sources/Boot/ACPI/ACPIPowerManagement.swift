/// The fixed ACPI power-management hardware our FADT describes, for the VMM that emulates
/// it: a PM1a event block (PM1_STS at +0, PM1_EN at +2) and a PM1a control block in port
/// I/O space, SCI on IRQ 9. A 16-bit write to the control port with SLP_EN set and SLP_TYP
/// equal to `s5SleepType` (the value of the DSDT's `\_S5` package) requests soft-off (S5):
/// the VMM powers the VM off. Reads of the control port must return SCI_EN set (the
/// machine is always in ACPI mode: the FADT has no SMI command port).
public enum ACPIPowerManagement {
    public static let pm1aEventPort: UInt16 = 0x600
    public static let pm1EventLength: UInt8 = 4
    public static let pm1aControlPort: UInt16 = 0x604
    public static let pm1ControlLength: UInt8 = 2
    public static let sciIRQ: UInt8 = 9
    /// SLP_TYP for S5, as `Name(_S5, Package(){5, 5, 0, 0})` tells the guest.
    public static let s5SleepType: UInt16 = 5
    /// PM1_CNT bits.
    public static let sciEnable: UInt16 = 1 << 0
    public static let sleepTypeShift: UInt16 = 10
    public static let sleepTypeMask: UInt16 = 0x7 << 10
    public static let sleepEnable: UInt16 = 1 << 13

    /// True when `value` written to PM1a_CNT asks for S5 (power off).
    public static func isPowerOff(controlWrite value: UInt16) -> Bool {
        value & sleepEnable != 0 && (value & sleepTypeMask) >> sleepTypeShift == s5SleepType
    }
}

/// `vmctl status` output, laid out as OpenBSD's vmctl does.
public enum StatusTable {
    public static let header = row("ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME")

    static func row(_ c: String...) -> String {
        func pad(_ s: String, _ w: Int) -> String {
            s.count >= w ? s : String(repeating: " ", count: w - s.count) + s
        }
        return [pad(c[0], 5), pad(c[1], 5), pad(c[2], 5), pad(c[3], 7), pad(c[4], 7),
                pad(c[5], 7), pad(c[6], 12), pad(c[7], 8), c[8]].joined(separator: " ")
    }

    /// Memory as fmt_scaled(3) prints it: at most three digits, one decimal when short.
    public static func scaled(_ bytes: UInt64) -> String {
        let units = ["B", "K", "M", "G", "T", "P", "E"]
        var value = Double(bytes)
        var i = 0
        while value >= 1024 && i < units.count - 1 {
            value /= 1024
            i += 1
        }
        if i == 0 { return "\(bytes)B" }
        if value < 10 {
            let tenths = Int((value * 10).rounded())
            return "\(tenths / 10).\(tenths % 10)\(units[i])"
        }
        return "\(Int(value.rounded()))\(units[i])"
    }

    public static func format(_ vms: [VMStatus]) -> String {
        var lines = [header]
        for vm in vms {
            let running = vm.state != .stopped
            var tty = vm.tty ?? "-"
            if tty.hasPrefix("/dev/") { tty = String(tty.dropFirst(5)) }
            var state = vm.state.rawValue
            if vm.state == .stopped && !vm.enabled { state = "disabled" }
            lines.append(row(String(vm.id), running ? vm.pid.map(String.init) ?? "-" : "-",
                             String(vm.vcpus), scaled(vm.maxMemory),
                             running ? scaled(vm.currentMemory) : "-",
                             running ? tty : "-", vm.owner, state, vm.name))
        }
        return lines.map { $0 + "\n" }.joined()
    }
}

/// Writes a configuration back as vm.conf text in one canonical layout: globals, switches,
/// then VMs, each setting on its own line, every value quoted. Parsing the output gives the
/// same configuration (locations aside), which the golden tests rely on.
extension VMConfiguration {
    public var canonicalText: String {
        var out: [String] = []
        if let p = localPrefix { out.append("local prefix \(q(p.description))") }
        if localInet6Enabled {
            if let p = localInet6Prefix {
                out.append("local inet6 prefix \(q(p.description))")
            } else {
                out.append("local inet6")
            }
        }
        if let o = socketOwner { out.append("socket owner \(q(o.description))") }
        if let a = agentx {
            out.append("agentx" + (a.context.map { " context \(q($0))" } ?? "")
                       + (a.path.map { " path \(q($0))" } ?? ""))
        }
        if let s = staggeredStart {
            out.append("staggered start parallel \(s.parallel) delay \(s.delay)")
        }
        for sw in switches {
            out.append("switch \(q(sw.name)) {")
            out.append("\t" + (sw.enabled ? "enable" : "disable"))
            if let i = sw.interface { out.append("\tinterface \(q(i))") }
            if let g = sw.group { out.append("\tgroup \(q(g))") }
            if sw.locked { out.append("\tlocked lladdr") }
            if let r = sw.rdomain { out.append("\trdomain \(r)") }
            out.append("\t" + (sw.up ? "up" : "down"))
            out.append("}")
        }
        for vm in vms {
            if let p = vm.parent {
                out.append("vm \(q(p)) instance \(q(vm.name)) {")
            } else {
                out.append("vm \(q(vm.name)) {")
            }
            out.append("\t" + (vm.enabled ? "enable" : "disable"))
            if let b = vm.boot { out.append("\tboot \(q(b))") }
            if let d = vm.bootDevice { out.append("\tboot device \(d.rawValue)") }
            if let c = vm.cdrom { out.append("\tcdrom \(q(c))") }
            for d in vm.disks {
                out.append("\tdisk \(q(d.path))" + (d.format.map { " format \($0.rawValue)" } ?? ""))
            }
            for i in vm.interfaces { out.append("\t" + interfaceLine(i)) }
            if let n = vm.interfaceCount { out.append("\tinterfaces \(n)") }
            if let m = vm.memory { out.append("\tmemory \(ScaledSize.format(m))") }
            if let o = vm.owner { out.append("\towner \(q(o.description))") }
            if let v = vm.vcpus { out.append("\tvcpus \(v)") }
            if let i = vm.initrd { out.append("\tinitrd \(q(i))") }
            if let c = vm.cmdline { out.append("\tcmdline \(q(c))") }
            if let a = vm.accel { out.append("\taccel \(a.rawValue)") }
            if let l = vm.cpuLevel { out.append("\tcpu-level \(l.rawValue)") }
            if let s = vm.sev { out.append("\t\(s.rawValue)") }
            let a = vm.allowInstance
            if !a.isEmpty {
                var flags: [String] = []
                if a.boot { flags.append("boot") }
                if a.cdrom { flags.append("cdrom") }
                if a.disk { flags.append("disk") }
                if a.instance { flags.append("instance") }
                if a.interface { flags.append("interface") }
                if a.memory { flags.append("memory") }
                if let o = a.owner { flags.append("owner \(q(o.description))") }
                out.append("\tallow instance { \(flags.joined(separator: ", ")) }")
            }
            out.append("}")
        }
        return out.map { $0 + "\n" }.joined()
    }

    private func interfaceLine(_ i: InterfaceSpec) -> String {
        var s = i.isLocal ? "local interface" : "interface"
        if let n = i.name { s += " \(q(n))" }
        var opts: [String] = []
        if let sw = i.switchName { opts.append("switch \(q(sw))") }
        if let g = i.group { opts.append("group \(q(g))") }
        if i.locked || i.lladdr != nil {
            opts.append((i.locked ? "locked lladdr" : "lladdr") + (i.lladdr.map { " \($0)" } ?? ""))
        }
        if let r = i.rdomain { opts.append("rdomain \(r)") }
        if !i.up { opts.append("down") }
        return opts.isEmpty ? s : s + " { " + opts.joined(separator: " ") + " }"
    }

    private func q(_ s: String) -> String {
        "\"" + s.replacingQuotes() + "\""
    }
}

extension String {
    /// The text between double quotes that the lexer reads back as `self`. The lexer (as
    /// OpenBSD's parse.y) treats `\` as an escape only before the quote, a blank or a
    /// newline, and keeps it literally before anything else, so a backslash needs no
    /// doubling except where what follows it would be taken as escaped: a quote gets its own
    /// `\` (so the backslash before it is followed by `\`), a blank after a backslash gets
    /// one too, and a backslash at the very end is followed by `\` + newline, which the lexer
    /// drops (a quoted string cannot otherwise end in a backslash). A newline cannot be
    /// written in a quoted string at all (the lexer drops it); it is written as a blank.
    fileprivate func replacingQuotes() -> String {
        var r = ""
        var previous: Character?
        for c in self {
            switch c {
            case "\"":
                r.append("\\\"")
            case " ", "\t":
                if previous == "\\" { r.append("\\") }
                r.append(c)
            case "\n", "\r\n", "\r":
                if previous == "\\" { r.append("\\") }
                r.append(" ")
            default:
                r.append(c)
            }
            previous = c
        }
        if previous == "\\" { r.append("\\\n") }
        return r
    }
}

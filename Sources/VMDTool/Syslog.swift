#if canImport(Glibc)
import Glibc
#endif
import Logging

/// swift-log to syslog(3) (daemon facility), for vmd without -d.
struct SyslogLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    init(label: String) {}
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?,
             source: String, file: String, function: String, line: UInt) {
        let prio: Int32
        switch level {
        case .trace, .debug: prio = LOG_DEBUG
        case .info: prio = LOG_INFO
        case .notice: prio = LOG_NOTICE
        case .warning: prio = LOG_WARNING
        case .error: prio = LOG_ERR
        case .critical: prio = LOG_CRIT
        }
        let text = "\(message)"
        text.withCString { s in
            withVaList([s]) { vsyslog(prio, "%s", $0) }
        }
    }
}

/// `vmd: message` lines on stderr, for -d.
struct StderrLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    init(label: String) {}
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?,
             source: String, file: String, function: String, line: UInt) {
        let prefix = level >= .warning ? "vmd: \(level): " : "vmd: "
        let s = prefix + "\(message)\n"
        printError(s)
    }
}

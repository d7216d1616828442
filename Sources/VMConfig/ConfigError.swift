/// One problem in a vm.conf, printed as `file:line: message` (just the message for a problem
/// of no line, such as a file that cannot be opened).
public struct ConfigDiagnostic: Error, Hashable, Sendable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String
    public init(_ location: SourceLocation, _ message: String) {
        self.location = location
        self.message = message
    }
    public var description: String { location.line == 0 ? message : "\(location): \(message)" }
}

/// A vm.conf that could not be loaded: every problem found, in order.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [ConfigDiagnostic]
    public init(_ diagnostics: [ConfigDiagnostic]) { self.diagnostics = diagnostics }
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

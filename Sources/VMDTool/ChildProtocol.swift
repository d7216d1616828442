import VMConfig

/// vmd -> VM process messages (over the socketpair at fd 3 of the VM process).
enum ParentMessage: Codable {
    case spec(ChildSpec)
    case pause
    case unpause
    case shutdown
}

/// VM process -> vmd replies.
enum ChildMessage: Codable {
    case started
    /// Started; the console is this pty (its slave side travels with the message).
    case startedWithConsole(String)
    case failed(String)
    case ok
    case error(String)
}

/// What a VM process runs.
struct ChildSpec: Codable {
    var vm: VMDefinition
    /// Run the stand-in guest instead of a machine (tests, hosts without /dev/kvm).
    var fake: Bool
    var verbose: Int
}

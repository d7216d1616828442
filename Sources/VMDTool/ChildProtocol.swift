import VMConfig

/// vmd -> VM process messages (over the socketpair at fd 3 of the VM process).
///
/// Start: `.spec` (no descriptors), then as many `.files` frames as it takes to carry the
/// `spec.files.count` descriptors vmd opened for the guest (at most
/// `ControlChannel.maxFDsPerFrame` per frame), in the order `ChildFiles` indexes them.
enum ParentMessage: Codable {
    case spec(ChildSpec)
    /// Carries the next descriptors of the guest's files.
    case files
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
    /// The guest files vmd opened; the VM process opens none by name.
    var files = ChildFiles()
    /// When vmd runs as root: the user the VM process becomes once it holds its files,
    /// /dev/kvm and its console (nil: keep the identity it was started with).
    var dropTo: DropIdentity?
    /// The guest's network interfaces; their taps are among the passed descriptors
    /// (Network.swift).
    var interfaces: [ChildInterface] = []
}

/// Which of the passed descriptors is which file. Indexes count from 0 over the
/// descriptors of the `.files` frames, in order.
struct ChildFiles: Codable, Equatable {
    struct File: Codable, Equatable {
        var index: Int
        /// For messages only.
        var path: String
    }
    struct Image: Codable, Equatable {
        var index: Int
        var path: String
        var format: String
        var readOnly: Bool
    }
    var kernel: File?
    var initrd: File?
    var cdrom: File?
    /// Per disk: the image, then its backing files (qcow2 chain), as vmd opened them.
    var disks: [[Image]] = []
    /// How many descriptors follow the spec.
    var count = 0
}

/// The unprivileged identity a VM process switches to (uid, gid and supplementary groups
/// none but the gid).
struct DropIdentity: Codable, Equatable {
    var user: String
    var uid: UInt32
    var gid: UInt32
}

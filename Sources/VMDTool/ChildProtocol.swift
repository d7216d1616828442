import VMConfig
import Storage
import VMM

/// vmd -> VM process messages (over the socketpair at fd 3 of the VM process).
///
/// Start: `.spec` (no descriptors), then as many `.files` frames as it takes to carry the
/// `spec.files.count` descriptors vmd opened for the guest (at most
/// `ControlChannel.maxFDsPerFrame` per frame), in `spec.files` order.
enum ParentMessage: Codable {
    case spec(ChildSpec)
    /// Carries the next descriptors of the guest's files.
    case files
    case pause
    case unpause
    case shutdown
    /// Pause, write the machine's state stream to the descriptor that comes with the
    /// message, stop (`vmctl send`).
    case send
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
    /// The descriptors vmd passes, which is which; the VM process opens no file by name.
    var files: [GuestFile] = []
    /// When vmd runs as root: the user the VM process becomes once it holds its files,
    /// /dev/kvm and its console (nil: keep the identity it was started with).
    var dropTo: DropIdentity?
    /// The guest's network interfaces; their taps are among the passed descriptors
    /// (Network.swift).
    var interfaces: [ChildInterface] = []
    /// `vmctl receive`: the CONF section vmd read; the machine is restored from the rest
    /// of the stream (the `.stateStream` descriptor) instead of booting.
    var restore: SavedMachineConfig? = nil
}

/// The descriptors vmd passes, as one typed list: entry i describes descriptor i of the
/// `.files` frames (counted from 0, in order).
struct GuestFile: Codable, Equatable {
    enum Role: Codable, Equatable {
        case kernel
        case initrd
        case cdrom
        /// Disk n's image (the top of its chain).
        case disk(Int)
        /// The backing file `depth` levels below disk n's image (1: its direct backing).
        case backing(disk: Int, depth: Int)
        /// Network interface n's tap.
        case tap(Int)
        /// The state stream to restore from, positioned after its CONF section (receive).
        case stateStream
    }
    var role: Role
    /// For messages only: the VM process opens nothing by name.
    var path: String
    /// Disk images (disks, backing files, the cdrom); nil for the kernel, initrd, taps.
    var format: DiskImageFormat?
    var readOnly: Bool
}

/// The unprivileged identity a VM process switches to (uid, gid and supplementary groups
/// none but the gid).
struct DropIdentity: Codable, Equatable {
    var user: String
    var uid: UInt32
    var gid: UInt32
}

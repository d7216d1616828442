#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Storage

/// Whose rights vmd uses to open a VM's files: the VM's owner when it is not root
/// (docs/vmd.md, "Privilege separation"). `groups` are its supplementary groups.
public struct FileIdentity: Sendable, Equatable, CustomStringConvertible {
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    /// For messages.
    public var name: String

    public init(uid: UInt32, gid: UInt32, groups: [UInt32], name: String) {
        self.uid = uid; self.gid = gid; self.groups = groups; self.name = name
    }

    public var description: String { name }
}

/// Opens files with a user's rights although vmd runs as root. A thread of its own switches
/// its file-system credentials (setfsuid, setfsgid and the raw setgroups system call are
/// per thread on Linux), so the kernel itself checks every directory's search permission,
/// the file's mode bits and its ACLs as it would for that user: vmd cannot be made to open
/// what the user could not. Symbolic links are refused where the user could have made them
/// (owned by the user, or in a directory the user can write), and the file is then opened
/// with no symbolic link in its path (openat2 RESOLVE_NO_SYMLINKS), so swapping a
/// component for a link between the check and the open fails instead of redirecting.
public enum UserFileAccess {
    /// Runs `body` on a new thread with `id`'s file-system credentials and waits for it.
    /// nil, or vmd not running as root: runs `body` here with vmd's own rights.
    /// Credentials that cannot be switched are an error, never a silent open as root.
    public static func run<T>(as id: FileIdentity?, _ body: () throws -> T) throws -> T {
        guard let id, geteuid() == 0 else { return try body() }
        return try withoutActuallyEscaping(body) { escapable in
            let job = Job(id: id, body: escapable)
            var thread = pthread_t()
            // SAFETY: `job` is retained across the thread's life: joined below before return.
            let arg = Unmanaged.passRetained(job).toOpaque()
            let rc = pthread_create(&thread, nil, { raw in
                let job = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! JobRunner
                job.runSwitched()
                return nil
            }, arg)
            guard rc == 0 else {
                Unmanaged<Job<T>>.fromOpaque(arg).release()
                throw StorageError.badArgument("cannot start a thread to open files as \(id.name): \(String(cString: strerror(rc)))")
            }
            pthread_join(thread, nil)
            return try job.take()
        }
    }

    /// Opens `path` with `flags` as the calling thread's file-system identity (`run`), first
    /// refusing a symbolic link `id` could have placed. Errors name `path`.
    public static func open(_ path: String, flags: Int32, as id: FileIdentity) throws -> Int32 {
        let resolved = try resolve(path, as: id)
        var fd = ckvm_open_no_symlinks(resolved, flags | O_CLOEXEC)
        if fd < 0 && errno == ENOSYS { fd = Glibc.open(resolved, flags | O_CLOEXEC | O_NOFOLLOW) }
        guard fd >= 0 else {
            let e = errno
            if e == ELOOP {
                throw StorageError.badArgument("\(path): a component changed into a symbolic link while it was opened")
            }
            throw StorageError.system(path: path, operation: "open", errno: e)
        }
        return fd
    }

    /// `path` made absolute with every symbolic link expanded (at most 40), checked: a
    /// link owned by `id.uid` or inside a directory `id` may write is refused.
    static func resolve(_ path: String, as id: FileIdentity) throws -> String {
        var pending: [Substring] = []
        if !path.hasPrefix("/") {
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            guard getcwd(&buf, buf.count) != nil else { throw StorageError.system(path: path, operation: "getcwd", errno: errno) }
            pending = String(cString: buf).split(separator: "/")
        }
        pending += path.split(separator: "/")
        var resolved: [Substring] = []
        var links = 0
        var i = 0
        while i < pending.count {
            let c = pending[i]
            i += 1
            if c == "." || c.isEmpty { continue }
            if c == ".." { if !resolved.isEmpty { resolved.removeLast() }; continue }
            let dir = "/" + resolved.joined(separator: "/")
            let candidate = (dir == "/" ? "" : dir) + "/" + c
            var st = stat()
            guard lstat(candidate, &st) == 0 else { throw StorageError.system(path: path, operation: "open", errno: errno) }
            guard st.st_mode & S_IFMT == S_IFLNK else { resolved.append(c); continue }
            links += 1
            if links > 40 { throw StorageError.system(path: path, operation: "open", errno: ELOOP) }
            if st.st_uid == id.uid || ckvm_access_as_fsuid(dir, W_OK) == 0 {
                throw StorageError.badArgument("\(path): \(candidate) is a symbolic link \(id.name) could have made (in a directory they may write); name the file itself")
            }
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(candidate, &target, target.count - 1)
            guard n >= 0 else { throw StorageError.system(path: path, operation: "readlink", errno: errno) }
            let text = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("/") { resolved = [] }
            pending.replaceSubrange(i..<i, with: text.split(separator: "/"))
        }
        return "/" + resolved.joined(separator: "/")
    }
}

private protocol JobRunner: AnyObject { func runSwitched() }

/// One `run` call: the body, the identity, the result.
private final class Job<T>: JobRunner {
    let id: FileIdentity
    let body: () throws -> T
    var result: Result<T, any Error>?

    init(id: FileIdentity, body: @escaping () throws -> T) {
        self.id = id
        self.body = body
    }

    /// On the new thread: switch, run, switch back (the thread ends right after anyway).
    func runSwitched() {
        let groups = id.groups.isEmpty ? [id.gid] : id.groups
        // SAFETY: `groups` outlives the call; the kernel copies n gids from it.
        let okGroups = groups.withUnsafeBufferPointer { ckvm_thread_setgroups($0.count, $0.baseAddress) } == 0
        _ = ckvm_thread_setfsgid(id.gid)
        _ = ckvm_thread_setfsuid(id.uid)
        // setfsuid/setfsgid return the previous value: asking again reads back the current one.
        let switched = okGroups && UInt32(bitPattern: ckvm_thread_setfsgid(id.gid)) == id.gid
            && UInt32(bitPattern: ckvm_thread_setfsuid(id.uid)) == id.uid
        if switched {
            result = Result { try body() }
        } else {
            result = .failure(StorageError.badArgument("cannot take the file access rights of \(id.name) (uid \(id.uid))"))
        }
        _ = ckvm_thread_setfsuid(0)
        _ = ckvm_thread_setfsgid(0)
        var none: [UInt32] = [0]
        _ = ckvm_thread_setgroups(0, &none)
    }

    func take() throws -> T {
        guard let result else { throw StorageError.badArgument("the file-opening thread did not finish") }
        return try result.get()
    }
}

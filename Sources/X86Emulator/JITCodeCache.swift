#if canImport(Glibc)
import Glibc
#endif

// MARK: - JIT code cache (SWIFTVMM_CPU_TIER=jit)

/// Host memory for generated code: one shared-memory file mapped twice, a read+write view
/// where the compiler writes and a read+execute view where the code runs, so no page is
/// ever writable and executable at once. Bump allocation; when the next block does not fit,
/// the whole cache is flushed (`generation` goes up, which invalidates every compiled
/// block at once) and filling starts again at offset 0. Per vCPU, used only from its thread,
/// and never flushed while generated code runs (compilation happens between blocks).
final class JITCodeCache {
    /// Default size: `SWIFTVMM_JIT_CACHE_KB` (KiB), else 16 MiB.
    static let defaultSize: Int = {
        if let p = getenv("SWIFTVMM_JIT_CACHE_KB"), let kb = Int(String(cString: p)), kb > 0 { return kb << 10 }
        return 16 << 20
    }()

    let size: Int
    private let rw: UnsafeMutableRawPointer
    private let rx: UnsafeMutableRawPointer
    /// Bytes handed out since the last flush.
    private(set) var used = 0
    /// Bumped by every flush; a compiled block is valid only for the generation it was made
    /// in. A raw word so the run loop reads it without touching this object.
    let generationWord: UnsafeMutablePointer<UInt32>
    var generation: UInt32 { generationWord.pointee }
    private(set) var flushes = 0

    /// Maps the cache (rounded up to whole pages, at least one). Nil when the host refuses
    /// (no memfd/shm, or executable mappings forbidden): the JIT tier then runs blocks only.
    init?(size requested: Int) {
        let page = 4096
        let size = max(page, (requested + page - 1) & ~(page - 1))
        let fd = JITCodeCache.anonymousFile()
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { return nil }
        // SAFETY: two fresh shared mappings of the same file of `size` bytes; nothing else
        // maps it (the descriptor is closed when init returns, the mappings keep the file).
        let w = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let w, w != MAP_FAILED else { return nil }
        let x = mmap(nil, size, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0)
        guard let x, x != MAP_FAILED else { munmap(w, size); return nil }
        self.size = size
        rw = w
        rx = x
        generationWord = .allocate(capacity: 1)
        generationWord.initialize(to: 1)
    }

    deinit {
        // SAFETY: the two mappings made in init, of `size` bytes each; no generated code
        // runs any more (the owning CPU is gone).
        munmap(rw, size)
        munmap(rx, size)
        generationWord.deallocate()
    }

    /// A descriptor for an unnamed shared-memory file: memfd_create (looked up at run time:
    /// the Glibc module does not declare it), else a shm object unlinked right away.
    private static func anonymousFile() -> Int32 {
        typealias MemfdCreate = @convention(c) (UnsafePointer<CChar>, UInt32) -> Int32
        // SAFETY: RTLD_DEFAULT (nil) lookup of a libc symbol whose C signature is
        // `int memfd_create(const char *, unsigned int)`.
        if let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memfd_create") {
            let f = unsafeBitCast(sym, to: MemfdCreate.self)
            let fd = f("swiftvmm-jit", 1 /* MFD_CLOEXEC */)
            if fd >= 0 { return fd }
        }
        let name = "/swiftvmm-jit-\(getpid())-\(UInt64.random(in: 0 ... .max))"
        let fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 { shm_unlink(name) }
        return fd
    }

    /// Copies `code` into the cache and returns its executable address, flushing the whole
    /// cache first when it does not fit. Nil only when `code` is larger than the cache.
    func install(_ code: [UInt8]) -> UnsafeRawPointer? {
        let n = (code.count + 15) & ~15
        guard n <= size, !code.isEmpty else { return nil }
        if used + n > size { flush() }
        let off = used
        used += n
        // SAFETY: off + code.count <= size: the write stays inside the RW view; the code
        // becomes reachable through the RX view only after this copy (same thread; x86
        // keeps instruction fetch coherent with stores to the same physical page).
        code.withUnsafeBytes { (rw + off).copyMemory(from: $0.baseAddress!, byteCount: code.count) }
        return UnsafeRawPointer(rx + off)
    }

    /// Forgets every compiled block (their generation no longer matches).
    func flush() {
        used = 0
        generationWord.pointee &+= 1
        if generationWord.pointee == 0 { generationWord.pointee = 1 }
        flushes += 1
    }
}

#if canImport(Glibc)
import Glibc
#endif

// Global options come before the command: -v (verbose), --socket PATH.
var args = Array(CommandLine.arguments.dropFirst())
while let a = args.first, a.hasPrefix("-"), a != "-h", a != "--help" {
    if a == "-v" {
        verboseOutput = true
        args.removeFirst()
    } else if a == "--socket" || a == "-s", args.count >= 2 {
        socketPathOverride = args[1]
        args.removeFirst(2)
    } else {
        break
    }
}
if args.isEmpty { usageExit() }
switch expandCommand(args) {
case .success(let expanded):
    runVMCTL(splittingGluedValues(expanded))
case .failure(let e):
    var b = Array("vmctl: \(e.message)\n".utf8)
    _ = write(2, &b, b.count)
    exit(1)
}

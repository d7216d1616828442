// vmd: `vmd _vm NAME` is the per-VM process vmd starts by re-executing itself; anything
// else is the daemon's command line.
if CommandLine.arguments.count > 1 && CommandLine.arguments[1] == "_vm" {
    VMProcessMain.run()
}
VMDCommand.main()

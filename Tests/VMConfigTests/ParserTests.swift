import Testing
@testable import VMConfig

@Suite struct ParserTests {
    func parse(_ text: String, macros: [String: String] = [:]) throws -> VMConfiguration {
        try ConfigParser(macros: macros).parse(text: text, name: "t.conf").configuration
    }
    func errors(_ text: String) -> [String] {
        do {
            _ = try ConfigParser().parse(text: text, name: "t.conf")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func sizesScaleLikeScanScaled() {
        #expect(ScaledSize.parse("512M") == 512 << 20)
        #expect(ScaledSize.parse("1g") == 1 << 30)
        #expect(ScaledSize.parse("1.5G") == 3 << 29)
        #expect(ScaledSize.parse("100") == 100)
        #expect(ScaledSize.parse("12X") == nil)
        #expect(ScaledSize.parse("") == nil)
        #expect(ScaledSize.parse("99999999999E") == nil)
        // scan_scaled's EINVAL vs ERANGE: malformed text vs a number too large for 64 bits.
        #expect(ScaledSize.scan("99999999999E") == .failure(.outOfRange))
        #expect(ScaledSize.scan("123456789012345678901") == .failure(.outOfRange))
        #expect(ScaledSize.scan("1.5") == .failure(.invalid))
        #expect(ScaledSize.scan("1.G") == .failure(.invalid))
        #expect(ScaledSize.scan("12X") == .failure(.invalid))
        #expect(ScaledSize.scan("4.5G") == .success(9 << 29))
        #expect(ScaledSize.format(3 << 29) == "1536M")
        #expect(ScaledSize.format(1 << 30) == "1G")
    }

    @Test func commandLineMacrosOverrideTheFile() throws {
        let c = try parse("k = \"/a\"\nvm x { boot $k }\n", macros: ["k": "/b"])
        #expect(c.vms[0].boot == "/b")
    }

    @Test func macrosAreNotExpandedInQuotesNorRecursively() throws {
        let c = try parse("a = \"/x\"\nvm x {\n boot \"$a\"\n}\n")
        #expect(c.vms[0].boot == "$a")
        // $a expands to the text $b, whose `$` is then an ordinary (invalid) character.
        #expect(errors("a = \"$b\"\nb = \"/y\"\nvm x {\n cdrom $a\n}\n")
                == ["t.conf:4: syntax error near \"$\""])
    }

    @Test func aMacroCanHoldSeveralTokens() throws {
        let c = try parse("opts = \"switch lan group vms\"\nvm x {\n interface $opts\n}\n")
        #expect(c.vms[0].interfaces[0].switchName == "lan")
        #expect(c.vms[0].interfaces[0].group == "vms")
    }

    @Test func keywordsNeedQuotesToBeNames() throws {
        #expect(errors("vm memory { disable }\n") == ["t.conf:1: syntax error near \"memory\""])
        #expect(try parse("vm \"memory\" { disable }\n").vms[0].name == "memory")
    }

    @Test func errorsNameTheLineOfTheBadToken() {
        #expect(errors("\n\n# c\nvm a {\n\n  disk \"/x\" 12\n}\n")
                == ["t.conf:6: syntax error near \"12\""])
        #expect(errors("vm a {\n memory 1G\n") == ["t.conf:3: syntax error near end of file"])
        #expect(errors("vm a { memory 1G } vm b { disable }\n")
                == ["t.conf:1: syntax error near \"vm\""])
        #expect(errors("vm a {\n boot é\n}\n") == ["t.conf:2: syntax error near \"é\""])
    }

    @Test func continuationLinesCountForErrors() {
        #expect(errors("vm a \\\n{\n\\\n  bad\n}\n") == ["t.conf:4: syntax error near \"bad\""])
    }

    @Test func ownersResolveAgainstTheUserDatabase() throws {
        struct Fake: UserDatabase {
            func uid(forUser name: String) -> UInt32? { name == "joe" ? 1000 : nil }
            func gid(forGroup name: String) -> UInt32? { name == "staff" ? 50 : nil }
            func groups(ofUID uid: UInt32) -> [UInt32] { [] }
        }
        let c = try parse("vm a {\n owner joe:staff\n}\nsocket owner :wheel\nvm b {\n owner bob\n}\nvm c {\n owner :nogroup\n}\n")
        #expect(try Fake().resolve(c.vms[0].owner!) == ResolvedOwner(uid: 1000, gid: 50))
        #expect(try Fake().resolve(OwnerSpec(parsing: "42")) == ResolvedOwner(uid: 42, gid: nil))
        let d = ConfigValidator.checkOwners(c, users: Fake()).map(\.description)
        // `socket owner` is reported at its own line (it was line 0).
        #expect(d == ["t.conf:4: failed to get group: wheel", "t.conf:5: failed to get user: bob",
                      "t.conf:8: failed to get group: nogroup"])
    }

    @Test func instancesInheritFromTheirParent() throws {
        let c = try parse("""
            vm p {
             memory 1G
             disk "/p.img"
             interface tap4 { switch "lan" lladdr 1:2:3:4:5:6 }
             owner joe
             vcpus 2
             cpu-level baseline
            }
            vm p instance c {
             disk "/c.img"
            }
            vm p instance d { cpu-level v2 }

            """)
        let r = ConfigValidator.resolvedVMs(c)
        #expect(r[1].memory == 1 << 30)
        #expect(r[1].disks == [DiskSpec(path: "/c.img")])
        #expect(r[1].interfaces.count == 1)
        #expect(r[1].interfaces[0].switchName == "lan")
        #expect(r[1].interfaces[0].name == nil)
        #expect(r[1].interfaces[0].lladdr == nil)
        #expect(r[1].owner == OwnerSpec(user: "joe"))
        #expect(r[1].vcpus == 2)
        #expect(r[1].cpuLevel == .baseline && r[2].cpuLevel == .v2)
    }

    @Test func includeCyclesStop() {
        let loader: ConfigFileLoader = { _ in Array("include \"self.conf\"\n".utf8) }
        do {
            _ = try ConfigParser(loader: loader).parse(path: "/x/self.conf")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.hasSuffix("includes nested too deeply"))
        }
    }

    /// The lexer keeps `\` literally except before the quote, a blank or a newline (as
    /// OpenBSD's parse.y); the dump must write every string so that it reads back the same.
    @Test(arguments: ["/a\\b", "/a\\ b", "/a\\\"b", "/a\\", "/a\\\\", "/a\\\\ ", "/a\\\t\\", "/\"q\" \\x\\"])
    func backslashesRoundTripThroughTheDump(_ path: String) throws {
        var c = VMConfiguration()
        var vm = VMDefinition(name: "x", location: SourceLocation(file: "t.conf", line: 1))
        vm.disks = [DiskSpec(path: path)]
        vm.boot = path
        c.vms = [vm]
        let again = try parse(c.canonicalText)
        #expect(again.vms.first?.disks.first?.path == path)
        #expect(again.vms.first?.boot == path)
    }

    @Test func quotedBackslashesReadAsUpstream() throws {
        // `\` before another character stays; before the quote or a blank it escapes.
        let c = try parse("vm x {\n boot \"/a\\b\\ c\\\"d\"\n disk '/e\\'f'\n}\n")
        #expect(c.vms[0].boot == "/a\\b c\"d")
        #expect(c.vms[0].disks.first?.path == "/e'f")
    }
}

import Testing
import Foundation
@testable import X86Emulator

/// LOCK-prefixed read-modify-writes and XCHG with memory, which run as host atomics
/// (`HostAtomics.swift`) when the operand lies in one aligned 8-byte word and on the plain
/// path otherwise: both against the host CPU running the same locked instructions
/// (registers, defined flags, memory), every operation at sizes 1/2/4/8, aligned,
/// misaligned inside a word and crossing a word (the split-lock fallback).
extension DiffCases {
    static var locked: [DiffCase] {
        var c: [DiffCase] = []
        let sized = [("byte", "bl"), ("word", "bx"), ("dword", "ebx"), ("qword", "rbx")]
        let places = ["[rsi]", "[rsi+8]", "[rsi+17]", "[rsi+38]"]   // aligned, aligned, in a word, across a word
        for op in ["add", "adc", "sub", "sbb", "and", "or", "xor", "xadd"] {
            for (i, (w, r)) in sized.enumerated() {
                let fl = ["and", "or", "xor"].contains(op) ? noAF : allF
                c.append(DiffCase(asm: "lock \(op) \(w) ptr \(places[i % 4]), \(r)", flags: fl))
                c.append(DiffCase(asm: "lock \(op) \(w) ptr \(places[(i + 2) % 4]), \(r)", flags: fl))
            }
        }
        for op in ["add", "adc", "sub", "sbb", "and", "or", "xor"] {
            let fl = ["and", "or", "xor"].contains(op) ? noAF : allF
            c.append(DiffCase(asm: "lock \(op) dword ptr [rsi+4], 0x80001234", flags: fl))
            c.append(DiffCase(asm: "lock \(op) qword ptr [rsi+16], -5", flags: fl))
            c.append(DiffCase(asm: "lock \(op) byte ptr [rsi+7], 0x81", flags: fl))
        }
        for op in ["inc", "dec", "not", "neg"] {
            for (i, (w, _)) in sized.enumerated() {
                c.append(DiffCase(asm: "lock \(op) \(w) ptr \(places[i % 4])", flags: allF))
                c.append(DiffCase(asm: "lock \(op) \(w) ptr \(places[(i + 2) % 4])", flags: allF))
            }
        }
        // Bit offsets from a register reach below and above the operand.
        let bitIndex: (inout [UInt64], inout SplitMix) -> Void = { r, g in
            r[2] = UInt64(bitPattern: Int64(g.next() % 512) - 128)
        }
        for op in ["bts", "btr", "btc"] {
            for (w, r) in [("word", "cx"), ("dword", "ecx"), ("qword", "rcx")] {
                c.append(DiffCase(asm: "lock \(op) \(w) ptr [rsi+32], \(r)", flags: 0x1, fix: bitIndex))
            }
            c.append(DiffCase(asm: "lock \(op) dword ptr [rsi], 19", flags: 0x1))
            c.append(DiffCase(asm: "lock \(op) qword ptr [rsi+8], 63", flags: 0x1))
            c.append(DiffCase(asm: "lock \(op) word ptr [rsi+39], 5", flags: 0x1))
        }
        for (i, (w, r)) in sized.enumerated() {
            c.append(DiffCase(asm: "xchg \(w) ptr \(places[i % 4]), \(r)", flags: allF))
            c.append(DiffCase(asm: "lock xchg \(w) ptr \(places[(i + 2) % 4]), \(r)", flags: allF))
        }
        // CMPXCHG: about half the inputs make the accumulator equal the memory operand.
        for (i, (w, r)) in sized.enumerated() {
            for place in [places[i % 4], places[(i + 2) % 4]] {
                let off = place == "[rsi]" ? 0 : Int(place.dropFirst(5).dropLast())!
                let size = 1 << i
                c.append(DiffCase(asm: "lock cmpxchg \(w) ptr \(place), \(r)", flags: allF,
                                  record: { rec, base, g in
                                      if g.next() & 1 == 0 {
                                          for k in 0..<size { rec[base + k] = rec[base + 288 + off + k] }
                                      }
                                  }))
            }
        }
        let equalPair: (Int, Int) -> ((inout [UInt8], Int, inout SplitMix) -> Void) = { off, half in
            { rec, base, g in
                if g.next() & 1 == 0 {
                    for k in 0..<half { rec[base + k] = rec[base + 288 + off + k] }            // rax
                    for k in 0..<half { rec[base + 24 + k] = rec[base + 288 + off + half + k] } // rdx
                }
            }
        }
        c.append(DiffCase(asm: "lock cmpxchg8b qword ptr [rsi+8]", flags: 0x40, record: equalPair(8, 4)))
        c.append(DiffCase(asm: "lock cmpxchg8b qword ptr [rsi+20]", flags: 0x40, record: equalPair(20, 4)))
        c.append(DiffCase(asm: "lock cmpxchg16b xmmword ptr [rsi+16]", flags: 0x40, record: equalPair(16, 8)))
        return c
    }
}

@Suite struct LockedDifferentialTests {
    @Test func lockedReadModifyWritesMatchTheHost() throws {
        try DifferentialTests().check(DiffCases.locked, perCase: 64, seed: 15)
    }

    @Test func lockedCmpxchg16bStillRaisesGPWhenMisaligned() throws {
        #expect(try X87Tests.vectorRaised("sub rsp, 32\nand rsp, -16\nlock cmpxchg16b xmmword ptr [rsp+8]", level: .v3) == 13)
        #expect(try X87Tests.vectorRaised("sub rsp, 32\nand rsp, -16\nlock cmpxchg16b xmmword ptr [rsp]", level: .v3) == nil)
    }
}

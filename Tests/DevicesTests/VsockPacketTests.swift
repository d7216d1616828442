import Devices
import Testing

@Suite struct VsockPacketTests {
    typealias H = VsockHeader

    func guestPacket(op: UInt16, len: UInt32 = 0, flags: UInt32 = 0, bufAlloc: UInt32 = 4096,
                     fwdCnt: UInt32 = 0, type: UInt16 = H.typeStream) -> H {
        H(srcCID: 3, dstCID: H.hostCID, srcPort: 1000, dstPort: 52, len: len, type: type, op: op,
          flags: flags, bufAlloc: bufAlloc, fwdCnt: fwdCnt)
    }

    func established(bufAlloc: UInt32 = 64) -> VsockConnection {
        var c = VsockConnection(guestCID: 3, guestPort: 1000, hostPort: 52, bufAlloc: bufAlloc,
                                initiatedByGuest: true)
        _ = c.response()
        return c
    }

    @Test func headerRoundTripsLittleEndian() throws {
        let h = H(srcCID: 0x0102030405060708, dstCID: 2, srcPort: 0xAABBCCDD, dstPort: 9, len: 5,
                  op: H.opRW, flags: 3, bufAlloc: 0x10000, fwdCnt: 7)
        let b = h.bytes
        #expect(b.count == H.size)
        #expect(b[0] == 0x08 && b[7] == 0x01)
        #expect(b[16] == 0xDD && b[28] == 1 && b[30] == 5)
        #expect(H(bytes: b) == h)
        #expect(H(bytes: b.prefix(43)) == nil)
    }

    @Test func hostInitiatedConnectWaitsForResponse() {
        var c = VsockConnection(guestCID: 3, guestPort: 1000, hostPort: 52, bufAlloc: 64, initiatedByGuest: false)
        #expect(c.request().op == H.opRequest)
        #expect(c.reserveSend(10) == 0)  // not connected yet
        #expect(c.receive(guestPacket(op: H.opResponse)).isEmpty)
        #expect(c.state == .established)
        #expect(c.reserveSend(10) == 10)
    }

    @Test func sendIsBoundedByGuestCredit() {
        var c = established()
        _ = c.receive(guestPacket(op: H.opCreditUpdate, bufAlloc: 100, fwdCnt: 0))
        #expect(c.reserveSend(80) == 80)
        #expect(c.reserveSend(80) == 20)
        #expect(c.reserveSend(1) == 0)
        // The guest consumed 50 bytes.
        _ = c.receive(guestPacket(op: H.opCreditUpdate, bufAlloc: 100, fwdCnt: 50))
        #expect(c.peerCredit == 50)
        #expect(c.reserveSend(1000) == 50)
    }

    @Test func guestDataIsDeliveredAndCreditUpdatedAtHalfBuffer() {
        var c = established(bufAlloc: 64)
        let data = [UInt8](repeating: 7, count: 40)
        #expect(c.receive(guestPacket(op: H.opRW, len: 40), payload: data) == [.deliver(data)])
        #expect(c.buffered == 40)
        #expect(c.forwarded(10).isEmpty)  // 10 < 32: no update yet
        guard case .send(let upd)? = c.forwarded(30).first else { Issue.record("no credit update"); return }
        #expect(upd.op == H.opCreditUpdate && upd.fwdCnt == 40 && upd.bufAlloc == 64)
    }

    @Test func creditRequestIsAnswered() {
        var c = established()
        guard case .send(let h)? = c.receive(guestPacket(op: H.opCreditRequest)).first else {
            Issue.record("no reply"); return
        }
        #expect(h.op == H.opCreditUpdate && h.dstPort == 1000 && h.srcPort == 52)
    }

    @Test func guestOverrunningCreditIsReset() {
        var c = established(bufAlloc: 64)
        let data = [UInt8](repeating: 1, count: 65)
        let ev = c.receive(guestPacket(op: H.opRW, len: 65), payload: data)
        #expect(ev.last == .reset)
        #expect(c.state == .closed)
        #expect(c.receive(guestPacket(op: H.opRW, len: 1), payload: [1]).isEmpty)
    }

    @Test func hostilePacketsResetNeverTrap() {
        let bad: [(H, [UInt8])] = [
            (guestPacket(op: H.opRW, len: 10), [1, 2]),                       // len lies
            (guestPacket(op: 0xFFFF), []),                                     // unknown op
            (guestPacket(op: H.opRW, type: 2), []),                            // seqpacket
            (guestPacket(op: H.opResponse), []),                               // response when established
            (guestPacket(op: H.opRW, len: UInt32.max), []),
        ]
        for (h, p) in bad {
            var c = established()
            #expect(c.receive(h, payload: p).last == .reset, "\(h)")
            #expect(c.state == .closed)
        }
        // A guest claiming a huge fwd_cnt or buf_alloc does not make credit wrap past its buffer.
        var c = established()
        _ = c.receive(guestPacket(op: H.opCreditUpdate, bufAlloc: 10, fwdCnt: 0xFFFF_FFF0))
        #expect(c.peerCredit <= 10)
    }

    @Test func countersWrapModulo32() {
        var c = established(bufAlloc: 64)
        _ = c.receive(guestPacket(op: H.opCreditUpdate, bufAlloc: 100, fwdCnt: 0))
        var sent: UInt64 = 0
        // Drive txCnt across 2^32 with the guest acknowledging as it goes.
        for _ in 0..<3 {
            let n = c.reserveSend(100); sent += UInt64(n)
            _ = c.receive(guestPacket(op: H.opCreditUpdate, bufAlloc: 100, fwdCnt: c.txCnt))
        }
        #expect(sent == 300 && c.peerCredit == 100)
    }

    @Test func shutdownAndRst() {
        var c = established()
        #expect(c.receive(guestPacket(op: H.opShutdown, flags: H.shutdownSend)) == [.peerClosed])
        #expect(c.state == .established)
        let ev = c.receive(guestPacket(op: H.opShutdown, flags: H.shutdownSend | H.shutdownReceive))
        #expect(ev.last == .reset && c.state == .closed)
        var d = established()
        #expect(d.receive(guestPacket(op: H.opRst)) == [.peerClosed, .reset])
        var e = established()
        guard case .send(let rst)? = e.hostClosed().first else { Issue.record("no rst"); return }
        #expect(rst.op == H.opRst)
        #expect(e.hostClosed().isEmpty)
    }
}

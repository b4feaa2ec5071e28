import Dataplane
import SystemCalls
import Testing

/// Which of a pod's sockets enrolment keeps out of capture: pure selection over what sock_diag
/// reported (the reading itself is tested in SocketDiagTests, the keeping in KeptConnectionsTests).
@Suite("kept connections")
struct KeptConnectionSelectionTests {
    @Test("what is kept: connections to the outside, each with its direction; not listeners, loopback or the pod's own addresses")
    func selection() {
        func conn(_ l: String, _ r: String, state: UInt8 = 1, cookie: UInt64 = 0) -> SocketDiag.Connection {
            SocketDiag.Connection(local: SocketAddress(parsing: l)!, remote: SocketAddress(parsing: r)!, state: state, cookie: cookie)
        }
        let sockets = [
            conn("0.0.0.0:8080", "0.0.0.0:0", state: SocketDiag.listenState),
            conn("10.0.0.5:8080", "10.0.1.9:5555", cookie: 1),   // inbound to the listener
            conn("10.0.0.5:40000", "10.0.2.7:443", cookie: 2),   // outbound
            conn("127.0.0.1:40001", "127.0.0.1:8080", cookie: 3), // loopback
            conn("10.0.0.5:40002", "10.0.0.5:8080", cookie: 4),  // to the pod's own address
            conn("[fd00::5]:40003", "[fd00:1::7]:80", state: 8, cookie: 5), // closing, still kept
        ]
        let kept = KeptConnections.select(sockets, localAddresses: [IPAddress("10.0.0.5")!, IPAddress("fd00::5")!])
        #expect(kept.map(\.cookie) == [1, 2, 5])
        #expect(kept[0].from == SocketAddress(parsing: "10.0.1.9:5555") && kept[0].to == SocketAddress(parsing: "10.0.0.5:8080"))
        #expect(kept[1].from == SocketAddress(parsing: "10.0.0.5:40000"))
    }
}

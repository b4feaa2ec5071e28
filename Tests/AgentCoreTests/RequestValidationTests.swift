import AgentAPI
import AgentCore
import Dataplane
import Foundation
import HostileInput
import PropertyBased
import SystemCalls
import Testing

@Suite("Request validation: hostile input gets an error, never a trap")
struct RequestValidationTests {
    @Test("every field hostile: validation throws an AgentError or yields a spec that keeps the invariants")
    func hostileRequests() async {
        await propertyCheck(count: 400, input: Hostile.text, Hostile.text, Hostile.text, Hostile.text, Hostile.ips, Hostile.text) { uid, name, ns, netns, ips, iface in
            let req = PodRequest(uid: uid, name: name, namespace: ns, netns: netns, ips: ips, interface: iface)
            do {
                let spec = try RequestValidation.spec(from: req)
                #expect(!spec.uid.isEmpty && spec.uid.utf8.count <= 128 && !spec.uid.contains("/") && !spec.uid.contains("\0"))
                #expect(spec.name.unicodeScalars.allSatisfy { $0.isASCII && $0.value > 0x20 })
                #expect(spec.netns.hasPrefix("/") && !spec.netns.unicodeScalars.contains { $0.value < 0x20 })
                #expect(!spec.ips.isEmpty && spec.ips.allSatisfy { !$0.isReserved })
                #expect(spec.ips.filter(\.isIPv6).count <= 4 && spec.ips.filter { !$0.isIPv6 }.count <= 4)
                #expect((1...15).contains(spec.interface.utf8.count) && !spec.interface.contains("/"))
            } catch let e as AgentError {
                #expect(!e.message.contains("\n"), "error messages are one line: \(e.message)")
            } catch {
                Issue.record("not an AgentError: \(error)")
            }
        }
    }

    @Test("the requests that crashed the agent get their own error codes", arguments: [
        (["", "10.244.1.2"], AgentError.Code.invalidRequest), (["/"], .invalidRequest), (["10.244.1.2\0x"], .invalidRequest),
        ([], .invalidRequest), (["0.0.0.0"], .invalidRequest), ((1...5).map { "10.244.1.\($0)" }, .tooManyValues),
        ((1...32766).map { "10.\($0 / 65536).\($0 / 256 % 256).\($0 % 256)" }, .tooManyValues),
    ])
    func crashers(ips: [String], code: AgentError.Code) {
        let req = PodRequest(uid: "u1", name: "p", namespace: "default", netns: "/run/netns/p", ips: ips)
        #expect(throws: AgentError.self) { try RequestValidation.spec(from: req) }
        do { _ = try RequestValidation.spec(from: req) } catch let e as AgentError { #expect(e.code == code, "\(e)") } catch {}
    }

    @Test("names, UIDs, interfaces and paths: limits and characters", arguments: [
        ("u\0x", "p", "eth0", "/run/netns/p", AgentError.Code.invalidRequest), ("u", "p\nINFO forged", "eth0", "/run/netns/p", .invalidRequest),
        (String(repeating: "u", count: 129), "p", "eth0", "/run/netns/p", .fieldTooLong), ("u", "p", "eth0/x", "/run/netns/p", .invalidRequest),
        ("u", "p", String(repeating: "e", count: 16), "/run/netns/p", .fieldTooLong), ("u", "p", "eth0", "run/netns/p", .invalidRequest),
        ("u", "p", "eth0", "/run/netns/../../proc/1/ns/net", .invalidRequest), ("u/../x", "p", "eth0", "/run/netns/p", .invalidRequest),
    ])
    func fields(uid: String, name: String, iface: String, netns: String, code: AgentError.Code) {
        let req = PodRequest(uid: uid, name: name, namespace: "default", netns: netns, ips: ["10.244.1.2"], interface: iface)
        do { _ = try RequestValidation.spec(from: req); Issue.record("accepted") } catch let e as AgentError { #expect(e.code == code, "\(e)") } catch { Issue.record("\(error)") }
    }

    @Test("a well-formed dual-stack pod passes unchanged (the validator is not a wall)")
    func accepts() throws {
        let req = PodRequest(uid: "6f1c0a8e-2b7d-4a52-9d0e-3c1f5b7a9e21", name: "web-7d9f-abcde", namespace: "shop", netns: "/var/run/netns/cni-1234",
                             ips: ["10.244.1.2/24", "fd00:10:244:1::2/64", "10.244.1.2"], interface: "eth0", podLabels: ["app.kubernetes.io/name": "web"])
        let spec = try RequestValidation.spec(from: req)
        #expect(spec.ips == [IPAddress("10.244.1.2")!, IPAddress("fd00:10:244:1::2")!])
        #expect(spec.uid == req.uid && spec.netns == req.netns && spec.interface == "eth0")
    }
}

@Suite("Log lines cannot be forged")
struct LogEscapingTests {
    @Test("any message or value renders as exactly one line, as text and as JSON")
    func oneLine() async {
        await propertyCheck(count: 300, input: Hostile.text, Hostile.text) { message, value in
            for format in LogFormat.allCases {
                let line = LineLogHandler.render(format: format, label: "t", level: .info, message: message, metadata: ["pod": "\(value)"], time: Date(timeIntervalSince1970: 0))
                #expect(!line.contains("\n") && !line.contains("\r"), "\(format): \(line)")
                if format == .json {
                    let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
                    #expect(obj?["msg"] == message && obj?["pod"] == value, "JSON round-trips the values")
                }
            }
        }
    }

    @Test("istio.io/reroute-virtual-interfaces: names parsed, folded and checked")
    func rerouteAnnotation() throws {
        #expect(try RequestValidation.rerouteInterfaces(nil) == [])
        #expect(try RequestValidation.rerouteInterfaces(" tap0, net1 ,tap0,,") == ["tap0", "net1"])
        for bad in ["tap0,a/b", "0123456789abcdef", "x:y", "..", String(repeating: "t,", count: 17) + "u"] {
            #expect(throws: AgentError.self, "\(bad)") { try RequestValidation.rerouteInterfaces(bad) }
        }
    }
}

import AgentAPI
import Foundation
import Glibc

// redirect-cni: a chained CNI plugin (spec 1.0.0). It runs after the primary plugin, asks the node
// agent to enroll the pod, and passes prevResult through. Errors are CNI error JSON on stdout with
// the spec's codes; logs go to stderr. A failed ADD keeps the pod from starting uncaptured.

let supportedVersions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]

/// A CNI error result.
struct CNIFailure: Error {
    var code: Int
    var msg: String
    var details: String = ""
}

func log(_ s: String) { FileHandle.standardError.write(Data("redirect-cni: \(s)\n".utf8)) }

func emit(_ obj: [String: Any]) {
    let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])) ?? Data("{}".utf8)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

/// CNI_ARGS as a dictionary (`K=V;K=V`).
func cniArgs(_ raw: String) -> [String: String] {
    var out: [String: String] = [:]
    for pair in raw.split(separator: ";") {
        let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
        if kv.count == 2 { out[kv[0]] = kv[1] }
    }
    return out
}

/// `k:v,k:v` label lists from CNI_ARGS (`=` cannot appear in a CNI_ARGS value; label keys and
/// values never contain `:`).
func labels(_ raw: String?) -> [String: String] {
    var out: [String: String] = [:]
    for pair in (raw ?? "").split(separator: ",") {
        let kv = pair.split(separator: ":", maxSplits: 1).map(String.init)
        if kv.count == 2 { out[kv[0]] = kv[1] }
    }
    return out
}

func run() throws -> Int32 {
    let env = ProcessInfo.processInfo.environment
    guard let command = env["CNI_COMMAND"] else { throw CNIFailure(code: 4, msg: "CNI_COMMAND is not set") }
    let stdin = FileHandle.standardInput.readDataToEndOfFile()
    if command == "VERSION" {
        emit(["cniVersion": "1.0.0", "supportedVersions": supportedVersions])
        return 0
    }
    guard let conf = (try? JSONSerialization.jsonObject(with: stdin)) as? [String: Any] else {
        throw CNIFailure(code: 6, msg: "failed to decode the network configuration on stdin")
    }
    // The spec makes cniVersion a required string: a number, or a version we do not speak, is refused.
    guard let version = conf["cniVersion"] as? String, supportedVersions.contains(version) else {
        throw CNIFailure(code: 1, msg: "unsupported or missing cniVersion \(conf["cniVersion"].map { "\($0)" } ?? "(absent)")",
                         details: "cniVersion must be one of the strings \(supportedVersions)")
    }
    let socket = conf["agentSocket"] as? String ?? AgentClient.defaultSocket
    let timeout = (conf["agentTimeoutSeconds"] as? Double).map { min(max($0, 0.1), 60) } ?? defaultAgentTimeout
    func call(_ req: ControlRequest) throws -> ControlResponse { try callAgent(req, socket: socket, timeout: timeout) }
    let args = cniArgs(env["CNI_ARGS"] ?? "")
    for k in ["CNI_CONTAINERID", "CNI_IFNAME"] where (env[k] ?? "").isEmpty { throw CNIFailure(code: 4, msg: "\(k) is not set") }
    let prev = conf["prevResult"] as? [String: Any]
    let ips = (prev?["ips"] as? [[String: Any]] ?? []).compactMap { $0["address"] as? String }
    let pod = PodRequest(uid: args["K8S_POD_UID"] ?? env["CNI_CONTAINERID"]!, name: args["K8S_POD_NAME"] ?? "",
                         namespace: args["K8S_POD_NAMESPACE"] ?? "default", netns: env["CNI_NETNS"] ?? "", ips: ips,
                         interface: env["CNI_IFNAME"]!, podLabels: labels(args["POD_LABELS"]), namespaceLabels: labels(args["NAMESPACE_LABELS"]))
    switch command {
    case "ADD":
        guard var result = prev else { throw CNIFailure(code: 7, msg: "redirect-cni must be chained after a primary plugin (no prevResult)") }
        guard !pod.netns.isEmpty else { throw CNIFailure(code: 4, msg: "CNI_NETNS is not set") }
        guard !pod.name.isEmpty else { throw CNIFailure(code: 4, msg: "CNI_ARGS has no K8S_POD_NAME") }
        let r = try call(ControlRequest(op: "add", pod: pod))
        log("ADD \(pod.namespace)/\(pod.name): \(r.enrolled == true ? "enrolled" : "not in the mesh")")
        result["cniVersion"] = version
        emit(result)
    case "DEL":
        do { _ = try call(ControlRequest(op: "del", pod: pod)) } catch let f as CNIFailure where f.code == 11 {
            // The agent removes what belongs to gone pods when it starts again.
            log("DEL \(pod.namespace)/\(pod.name): agent unreachable, left for its start-up reconciliation")
        }
    case "CHECK":
        _ = try call(ControlRequest(op: "check", pod: pod))
    default:
        throw CNIFailure(code: 4, msg: "unknown CNI_COMMAND \(command)")
    }
    return 0
}

/// The whole exchange with the agent, well under the runtime's own CNI timeout: a stuck agent
/// fails the ADD (the runtime retries) instead of hanging it.
let defaultAgentTimeout = 10.0

func callAgent(_ req: ControlRequest, socket: String, timeout: Double) throws -> ControlResponse {
    let r: ControlResponse
    do { r = try AgentClient.call(req, socket: socket, timeout: timeout) } catch {
        throw CNIFailure(code: 11, msg: "the redirect-agent is not reachable at \(socket)", details: "\(error)")
    }
    guard r.ok else { throw CNIFailure(code: 100, msg: "redirect-agent refused \(req.op): \(r.error ?? "unknown error")", details: r.code ?? "") }
    return r
}

// A runtime that closes our stdout early gets an error, not a killed plugin.
signal(SIGPIPE, SIG_IGN)
do {
    exit(try run())
} catch let f as CNIFailure {
    log("\(f.msg) \(f.details)")
    emit(["cniVersion": "1.0.0", "code": f.code, "msg": f.msg, "details": f.details])
    exit(1)
} catch {
    emit(["cniVersion": "1.0.0", "code": 999, "msg": "\(error)"])
    exit(1)
}

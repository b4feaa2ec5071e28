import AgentAPI
import AgentCore
import ArgumentParser
import Foundation
import MapSync
import SystemCalls

/// `redirect-agent maps`: every pinned BPF map, decoded, read from the kernel (the agent need not
/// run; when it answers, pods get their names).
struct Maps: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the ebpf dataplane's pinned maps decoded: config, node, pods with addresses, interfaces, settings and counters, probe flows.")
    @Option(help: "bpffs directory of the pins (env REDIRECT_PIN_ROOT).") var pinRoot: String = env("REDIRECT_PIN_ROOT") ?? "/sys/fs/bpf/redirect-agent"
    @Option(help: "The agent's control socket, asked for pod names (env REDIRECT_CONTROL_SOCKET).")
    var controlSocket: String = env("REDIRECT_CONTROL_SOCKET") ?? AgentClient.defaultSocket
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        let maps: MapSync
        do { maps = try MapSync(pinDirectory: "\(pinRoot)/maps") } catch {
            FileHandle.standardError.write(Data("redirect-agent maps: no ebpf dataplane's maps under \(pinRoot)/maps: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let report = try MapReport.read(maps, names: agentPodNames(controlSocket))
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(report), as: UTF8.self))
        } else {
            print(report.text)
        }
    }
}

/// Pod names (namespace/name) by address, from the agent at `controlSocket` when it answers; none otherwise.
func agentPodNames(_ controlSocket: String) -> [IPAddress: String] {
    guard let s = try? AgentClient.call(ControlRequest(op: "status"), socket: controlSocket).status else { return [:] }
    var names: [IPAddress: String] = [:]
    for p in s.pods { for ip in p.ips.compactMap(IPAddress.init) { names[ip] = p.pod } }
    return names
}

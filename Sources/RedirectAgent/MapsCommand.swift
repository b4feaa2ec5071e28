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
    @OptionGroup var pins: PinnedMaps
    @Flag(help: "JSON output.") var json = false

    func run() throws {
        let maps = try pins.open(for: "maps")
        let report = try MapReport.read(maps, names: agentPodNames(pins.controlSocket))
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(report), as: UTF8.self))
        } else {
            print(report.text)
        }
    }
}

/// Where the maps and agent of `maps` and `monitor` are.
struct PinnedMaps: ParsableArguments {
    @Option(help: "bpffs directory of the pins (env REDIRECT_PIN_ROOT).") var pinRoot: String = env("REDIRECT_PIN_ROOT") ?? "/sys/fs/bpf/redirect-agent"
    @Option(help: "The agent's control socket, asked for pod names (env REDIRECT_CONTROL_SOCKET).")
    var controlSocket: String = env("REDIRECT_CONTROL_SOCKET") ?? AgentClient.defaultSocket

    /// The pinned maps; exits 2 with the reason when there are none.
    func open(for command: String) throws -> MapSync {
        do { return try MapSync(pinDirectory: "\(pinRoot)/maps") } catch {
            FileHandle.standardError.write(Data("redirect-agent \(command): no ebpf dataplane's maps under \(pinRoot)/maps: \(error)\n".utf8))
            throw ExitCode(2)
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

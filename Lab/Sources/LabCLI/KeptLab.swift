import AgentAPI
import ArgumentParser
import Dispatch
import Foundation
import Glibc
import NodeLab
import SystemCalls

/// A lab left running by `redirect-lab up`, as its keeper describes it in ``KeptLab/path``: what
/// `status`, `exec` and `down` use. One kept lab at a time.
struct KeptLab: Codable {
    struct Node: Codable {
        var name: String
        var netns: String
        var agentControlSocket: String
        var pinRoot: String
    }
    struct Pod: Codable {
        var name: String
        var node: String
        var netns: String
        var addresses: [String]
        var meshed: Bool
    }
    var runID: String
    /// The keeper process: it owns the lab and tears it down on SIGTERM.
    var pid: Int32
    var dataplane: String
    var kubeconfig: String?
    var nodes: [Node]
    var pods: [Pod]

    static let path = "\(Lab.runRoot)/kept-lab.json"

    static func read() -> KeptLab? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(KeptLab.self, from: data)
    }

    /// Whether its keeper still runs: that pid, and it is this lab's keeper (a pid can be reused).
    var isRunning: Bool {
        guard let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return args.contains("keep") && args.contains(runID)
    }

    func pod(_ name: String) throws -> Pod {
        guard let p = pods.first(where: { $0.name == name }) else {
            throw ValidationError("no pod '\(name)' in the lab; pods: \(pods.map(\.name).joined(separator: ", "))")
        }
        return p
    }

    static func kept() throws -> KeptLab {
        guard let k = read(), k.isRunning else { throw ValidationError("no lab is up: redirect-lab up starts one") }
        return k
    }
}

/// `redirect-lab up`: starts a lab that stays after this command returns (its keeper runs on in a
/// session of its own), and prints how to reach it.
struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a lab that keeps running (2 nodes, meshed pods, an outsider, agents, proxies, the Kubernetes API); print how to reach it.")
    @Option(help: "The agents' dataplane: ebpf, iptables, nftables or auto.") var dataplane = "ebpf"
    @Flag(help: "No IPv6 addresses.") var noIPv6 = false

    func validate() throws {
        guard ["ebpf", "iptables", "auto"].contains(dataplane) else { throw ValidationError("--dataplane: ebpf, iptables or auto") }
    }

    func run() throws {
        if let k = KeptLab.read(), k.isRunning { throw ValidationError("lab \(k.runID) is up already: redirect-lab down first") }
        let runID = Lab.newRunID()
        try FileManager.default.createDirectory(atPath: Lab.runRoot, withIntermediateDirectories: true)
        let log = "\(Lab.runRoot)/keeper-\(runID).log"
        // setsid: the keeper leaves this session, so it outlives this command and its terminal.
        var args = [try LabBinaries.path("redirect-lab"), "keep", "--run-id", runID, "--dataplane", dataplane]
        if noIPv6 { args.append("--no-ipv6") }
        let r = try Command.capture("/bin/sh", ["-c", "setsid -f \"$@\" >\(log) 2>&1 </dev/null", "sh"] + args)
        guard r.status == 0 else { throw LabError("could not start the lab's keeper: \(r.stderr)") }
        let end = Date().addingTimeInterval(180)
        while Date() < end {
            if let k = KeptLab.read(), k.runID == runID { return print(Self.describe(k)) }
            if (try? String(contentsOfFile: log, encoding: .utf8))?.contains("keeper failed") == true { break }
            usleep(200_000)
        }
        // Whatever did start goes: a keeper that has not written its file yet is found by its run id.
        _ = try? Command.capture("pkill", ["-TERM", "-f", "redirect-lab keep --run-id \(runID)"])
        throw LabError("the lab did not come up: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    }

    static func describe(_ k: KeptLab) -> String {
        var out = ["lab \(k.runID) is up (dataplane \(k.dataplane), kept by pid \(k.pid))", "pods:"]
        for p in k.pods { out.append("  \(p.name)  on \(p.node)  \(p.addresses.joined(separator: " "))  \(p.meshed ? "in the mesh" : "not in the mesh")") }
        out.append("reach it:")
        out.append("  redirect-lab exec \(k.pods.first?.name ?? "POD") -- CMD...      # a command in a pod's network namespace")
        if let n = k.nodes.first {
            out.append("  redirect-agent status --control-socket \(n.agentControlSocket)")
            out.append("  redirect-agent maps --pin-root \(n.pinRoot) --control-socket \(n.agentControlSocket)")
            out.append("  redirect-agent monitor --pin-root \(n.pinRoot) --control-socket \(n.agentControlSocket)")
            out.append("  nsenter --net=\(n.netns) bpftool map dump pinned \(n.pinRoot)/maps/ra_pods")
        }
        if let kc = k.kubeconfig, let n = k.nodes.first { out.append("  nsenter --net=\(n.netns) kubectl --kubeconfig \(kc) get pods -A") }
        out.append("  redirect-lab status; redirect-lab down")
        return out.joined(separator: "\n")
    }
}

/// The keeper `up` starts: builds the lab, describes it in ``KeptLab/path``, and holds it until
/// SIGTERM or SIGINT (`redirect-lab down`), then tears it down.
struct Keep: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "(internal) Build a lab and keep it until SIGTERM.", shouldDisplay: false)
    @Option var runID: String
    @Option var dataplane = "ebpf"
    @Flag var noIPv6 = false

    func run() throws {
        var options = LabOptions()
        options.runID = runID
        options.ipv6 = !noIPv6
        options.podsPerNode = 0
        options.agentDataplane = dataplane
        options.kubeAPI = true
        let lab = Lab(options: options)
        let done = DispatchSemaphore(value: 0)
        let signals = [SIGINT, SIGTERM].map { sig in
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { done.signal() }
            src.resume()
            return src
        }
        defer {
            try? FileManager.default.removeItem(atPath: KeptLab.path)
            lab.teardown()
            _ = signals
        }
        do {
            try lab.up()
            var meshed: Set<String> = []
            for node in lab.nodes {
                for i in 1...2 { meshed.insert(try lab.addMeshedPod(on: node, name: "\(node.name)-pod\(i)").name) }
            }
            _ = try lab.addPod(on: lab.nodes[1], name: "n2-outsider")
            let kept = KeptLab(runID: runID, pid: getpid(), dataplane: dataplane, kubeconfig: lab.kube == nil ? nil : lab.kubeconfig(for: lab.nodes[0]),
                               nodes: lab.nodes.map { .init(name: $0.name, netns: $0.netns.path, agentControlSocket: $0.agentControlSocket, pinRoot: $0.bpfPinRoot) },
                               pods: lab.pods.map { .init(name: $0.name, node: $0.node.name, netns: $0.netns.path, addresses: $0.addresses.map(\.description),
                                                          meshed: meshed.contains($0.name)) })
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(kept).write(to: URL(fileURLWithPath: KeptLab.path), options: .atomic)
            say("lab \(runID) kept")
        } catch {
            say("keeper failed: \(error)")
            throw error
        }
        done.wait()
        say("tearing the lab down")
    }
}

/// `redirect-lab status`: the kept lab, its pods, and each node's agent.
struct LabStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the lab `up` left running: pods, and each node's agent.")
    func run() throws {
        let k = try KeptLab.kept()
        print(Up.describe(k))
        for n in k.nodes {
            let s = try? AgentClient.call(ControlRequest(op: "status"), socket: n.agentControlSocket).status
            print("agent on \(n.name): " + (s.map { "\($0.dataplane), \($0.pods.count) pods, proxy \($0.proxyConnected ? "connected" : "not connected")" } ?? "not answering"))
        }
    }
}

/// `redirect-lab exec POD -- CMD...`: runs CMD in the pod's network namespace (it replaces this process).
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a command in a pod of the kept lab (its network namespace).")
    @Argument(help: "The pod's name (redirect-lab status lists them).") var pod: String
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments, after --.") var command: [String] = []

    func run() throws {
        let p = try KeptLab.kept().pod(pod)
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard !argv.isEmpty else { throw ValidationError("give a command after --") }
        let args = ["/usr/bin/nsenter", "--net=\(p.netns)", "--"] + argv
        let cArgs = args.map { strdup($0) } + [nil]
        execv(args[0], cArgs)
        throw LabError("exec nsenter: \(String(cString: strerror(errno)))")
    }
}

/// `redirect-lab down`: stops the kept lab's keeper, which tears the lab down.
struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Tear down the lab `up` left running.")
    func run() throws {
        guard let k = KeptLab.read() else { return print("no lab is up") }
        if k.isRunning {
            kill(k.pid, SIGTERM)
            let end = Date().addingTimeInterval(60)
            while k.isRunning && Date() < end { usleep(100_000) }
            if k.isRunning { kill(k.pid, SIGKILL) }
        }
        Lab.sweep(runID: k.runID) // whatever a keeper that was killed left
        try? FileManager.default.removeItem(atPath: KeptLab.path)
        try? FileManager.default.removeItem(atPath: "\(Lab.runRoot)/keeper-\(k.runID).log")
        rmdir(Lab.runRoot)
        print("lab \(k.runID) is down")
    }
}

import ArgumentParser
import Foundation
import NetworkPolicyCheck
import SystemCalls

/// `redirect-agent netpol`.
struct NetPol: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netpol", abstract: "Kubernetes NetworkPolicy checks for meshed pods.", subcommands: [NetPolCheck.self])
}

/// `redirect-agent netpol check`: which policies will break meshed pods, and the fix.
struct NetPolCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Find NetworkPolicies that will block HBONE (15008) or kubelet probes (from the probe IP) once pods join the mesh.",
        discussion: "Exit status: 0 nothing breaks, 1 something will break, 2 the input is not valid.")

    @Argument(help: "YAML files with NetworkPolicy objects (several documents, kind: List, or kubectl get -o yaml output); - or none for stdin.")
    var files: [String] = []
    @Option(help: "IPv4 source of kubelet probes in the mesh (HOST_PROBE_SNAT_IP).") var probeIP = "169.254.7.127"
    @Option(name: .customLong("probe-ipv6"), help: "IPv6 source of kubelet probes; IPv6 probes are checked only when this is given (HOST_PROBE_SNAT_IPV6).") var probeIPv6: String?
    @Option(help: "The mesh tunnel port.") var hbonePort = 15008
    @Option(name: .customLong("ambient-namespace"), help: "A namespace labelled for ambient (repeat); none: every namespace.") var ambientNamespaces: [String] = []
    @Option(help: "YAML list of pods ({namespace, name, labels}) or Pod objects, to evaluate selectors exactly.") var podLabels: String?
    @Flag(help: "Print corrected policies as YAML for kubectl apply.") var fix = false
    @Flag(help: "Print the report as JSON.") var json = false

    func run() throws {
        var options = CheckOptions()
        guard let v4 = IPAddress(probeIP), !v4.isIPv6 else { throw ValidationError("--probe-ip: '\(probeIP)' is not an IPv4 address") }
        options.probeIPv4 = v4
        if let probeIPv6 {
            guard let v6 = IPAddress(probeIPv6), v6.isIPv6 else { throw ValidationError("--probe-ipv6: '\(probeIPv6)' is not an IPv6 address") }
            options.probeIPv6 = v6
        }
        options.hbonePort = hbonePort
        options.ambientNamespaces = Set(ambientNamespaces)
        let policies: [NetworkPolicy]
        do {
            if let podLabels { options.pods = try PodLabelsParser.parse(try String(contentsOfFile: podLabels, encoding: .utf8)) }
            policies = try readInputs().flatMap { name, text in
                do { return try PolicyParser.parse(text) } catch let e as PolicyInputError {
                    throw ValidationError("\(name): \(e)")
                }
            }
        } catch let e as ValidationError {
            FileHandle.standardError.write(Data("error: \(e.message)\n".utf8))
            throw ExitCode(2)
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let report = PolicyAnalyzer(options: options).check(policies)
        if fix {
            print(try PolicyFixer(options: options).yaml(policies, findings: report.findings), terminator: "")
        } else if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(report), as: UTF8.self))
        } else {
            printText(report)
        }
        if !report.clean && !fix { throw ExitCode(1) }
    }

    func readInputs() throws -> [(String, String)] {
        if files.isEmpty || files == ["-"] {
            return [("stdin", String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self))]
        }
        return try files.map { f in
            do { return (f, try String(contentsOfFile: f, encoding: .utf8)) } catch { throw ValidationError("\(f): cannot read: \(error.localizedDescription)") }
        }
    }

    func printText(_ r: CheckReport) {
        for f in r.findings {
            print("BREAKS  \(f.policy)\(f.rule.map { "  \($0)" } ?? "")")
            print("        \(f.message)")
        }
        for n in r.notes { print("note: \(n)") }
        print(r.clean
              ? "ok: \(r.policiesChecked) policies checked, \(r.policiesSelectingMeshedPods.count) select meshed pods, nothing will break"
              : "\(r.findings.count) problem(s) in \(Set(r.findings.map(\.policy)).count) of \(r.policiesChecked) policies; run with --fix for corrected policies")
    }
}

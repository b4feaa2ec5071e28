import Foundation
import NetworkPolicyCheck
import SystemCalls
import Testing
import Yams

/// One table row: policies, options, and the findings expected as `kind policy rule probeIP`.
struct PolicyCase: CustomTestStringConvertible, Sendable {
    let name: String
    let yaml: String
    var probeIP = "169.254.7.127"
    var probeIPv6: String? = nil
    var ambient: [String] = []
    var pods: [PodLabels]? = nil
    let expected: Set<String>
    var testDescription: String { name }
}

func np(_ name: String, ns: String = "demo", _ spec: String) -> String {
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: \(name)\n  namespace: \(ns)\nspec:\n" +
        spec.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n") + "\n"
}

// Istio's ambient NetworkPolicy documentation examples.
let istioAllow9090 = np("my-app-allow-9090", """
podSelector:
  matchLabels:
    app.kubernetes.io/name: my-app
policyTypes:
- Ingress
ingress:
- ports:
  - port: 9090
    protocol: TCP
""")
let istioAllow9090Fixed = np("my-app-allow-9090", """
podSelector:
  matchLabels:
    app.kubernetes.io/name: my-app
policyTypes:
- Ingress
ingress:
- ports:
  - port: 9090
    protocol: TCP
  - port: 15008
    protocol: TCP
""")
let istioDenyIngress = np("default-deny-ingress", """
podSelector: {}
policyTypes:
- Ingress
""")
let istioAllowHostProbes = np("allow-ambient-hostprobes", """
podSelector: {}
ingress:
- from:
  - ipBlock:
      cidr: 169.254.7.127/32
""")

let fromFrontend8080 = np("a", """
podSelector:
  matchLabels: {app: api}
ingress:
- from:
  - podSelector:
      matchLabels: {app: frontend}
  ports:
  - port: 8080
""")

let cases: [PolicyCase] = [
    PolicyCase(name: "Istio docs: allowing only 9090 blocks HBONE", yaml: istioAllow9090,
               expected: ["hbone-ingress demo/my-app-allow-9090 spec.ingress[0] -"]),
    PolicyCase(name: "Istio docs: 9090 and 15008 is clean", yaml: istioAllow9090Fixed, expected: []),
    PolicyCase(name: "Istio docs: deny-all ingress blocks probes", yaml: istioDenyIngress,
               expected: ["probe-blocked demo/default-deny-ingress - 169.254.7.127"]),
    PolicyCase(name: "Istio docs: deny-all plus the host-probe allow policy is clean (union)", yaml: istioDenyIngress + "---\n" + istioAllowHostProbes, expected: []),
    PolicyCase(name: "empty ingress list with no policyTypes isolates too", yaml: np("p", "podSelector: {}\ningress: []"),
               expected: ["probe-blocked demo/p - 169.254.7.127"]),
    PolicyCase(name: "rule from pods only: HBONE and probes both blocked", yaml: fromFrontend8080,
               expected: ["hbone-ingress demo/a spec.ingress[0] -", "probe-blocked demo/a - 169.254.7.127"]),
    PolicyCase(name: "named port does not cover 15008", yaml: np("p", "podSelector: {}\ningress:\n- ports:\n  - port: http"),
               expected: ["hbone-ingress demo/p spec.ingress[0] -"]),
    PolicyCase(name: "endPort range covering 15008 is clean", yaml: np("p", "podSelector: {}\ningress:\n- ports:\n  - port: 15000\n    endPort: 15010"), expected: []),
    PolicyCase(name: "endPort range below 15008 is not", yaml: np("p", "podSelector: {}\ningress:\n- ports:\n  - port: 8000\n    endPort: 9000"),
               expected: ["hbone-ingress demo/p spec.ingress[0] -"]),
    PolicyCase(name: "a UDP-only rule carries nothing the mesh tunnels", yaml: np("p", "podSelector: {}\ningress:\n- ports:\n  - port: 53\n    protocol: UDP"), expected: []),
    PolicyCase(name: "another policy allowing 15008 from the same peers clears it (union)",
               yaml: fromFrontend8080 + "---\n" + np("b", """
podSelector:
  matchLabels: {app: api}
ingress:
- from:
  - podSelector:
      matchLabels: {app: frontend}
  ports:
  - port: 15008
- from:
  - ipBlock: {cidr: 169.254.7.127/32}
"""), expected: []),
    PolicyCase(name: "15008 allowed only from other peers does not clear it",
               yaml: fromFrontend8080 + "---\n" + np("b", """
podSelector: {}
ingress:
- from:
  - podSelector:
      matchLabels: {app: other}
  ports:
  - port: 15008
"""), expected: ["hbone-ingress demo/a spec.ingress[0] -", "probe-blocked demo/a - 169.254.7.127",
                 "probe-blocked demo/b - 169.254.7.127"]),
    PolicyCase(name: "a policy in another namespace does not clear it",
               yaml: istioDenyIngress + "---\n" + np("allow-ambient-hostprobes", ns: "other", "podSelector: {}\ningress:\n- from:\n  - ipBlock: {cidr: 169.254.7.127/32}"),
               ambient: ["demo"], expected: ["probe-blocked demo/default-deny-ingress - 169.254.7.127"]),
    PolicyCase(name: "ipBlock with except carving out the probe IP", yaml: np("p", "podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 169.254.0.0/16\n      except: [169.254.7.0/24]"),
               expected: ["probe-blocked demo/p - 169.254.7.127"]),
    PolicyCase(name: "ipBlock containing the probe IP allows it", yaml: np("p", "podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 169.254.0.0/16"), expected: []),
    PolicyCase(name: "host-IP probe (HOST_PROBE_SNAT_IP): the node range must be allowed", yaml: istioDenyIngress + "---\n" + istioAllowHostProbes,
               probeIP: "10.0.0.5", expected: ["probe-blocked demo/default-deny-ingress - 10.0.0.5", "probe-blocked demo/allow-ambient-hostprobes - 10.0.0.5"]),
    PolicyCase(name: "host-IP probe allowed by a node CIDR", yaml: np("p", "podSelector: {}\ningress:\n- from:\n  - ipBlock: {cidr: 10.0.0.0/24}"), probeIP: "10.0.0.5", expected: []),
    PolicyCase(name: "IPv6 probe: an IPv4-only allow does not cover it", yaml: istioDenyIngress + "---\n" + istioAllowHostProbes,
               probeIPv6: "fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
               expected: ["probe-blocked demo/default-deny-ingress - fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
                          "probe-blocked demo/allow-ambient-hostprobes - fd16:9254:7127:1337:ffff:ffff:ffff:ffff"]),
    PolicyCase(name: "IPv6 probe allowed by an IPv6 block", yaml: np("p", "podSelector: {}\ningress:\n- from:\n  - ipBlock: {cidr: 169.254.7.127/32}\n  - ipBlock: {cidr: 'fd16::/16'}"),
               probeIPv6: "fd16:9254:7127:1337:ffff:ffff:ffff:ffff", expected: []),
    PolicyCase(name: "egress restricted to an app port blocks HBONE to meshed destinations", yaml: np("e", """
podSelector: {}
policyTypes: [Egress]
egress:
- to:
  - podSelector:
      matchLabels: {app: db}
  ports:
  - port: 5432
- ports:
  - port: 53
    protocol: UDP
"""), expected: ["hbone-egress demo/e spec.egress[0] -"]),
    PolicyCase(name: "egress rules without policyTypes isolate ingress too (the Kubernetes default)", yaml: np("e", "podSelector: {}\negress:\n- ports:\n  - port: 443"),
               expected: ["hbone-egress demo/e spec.egress[0] -", "probe-blocked demo/e - 169.254.7.127"]),
    PolicyCase(name: "egress to all ports is clean", yaml: np("e", "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to:\n  - podSelector: {}"), expected: []),
    PolicyCase(name: "namespace not in the mesh is not checked", yaml: istioAllow9090, ambient: ["elsewhere"], expected: []),
    PolicyCase(name: "pods that opt out are not checked", yaml: np("p", "podSelector:\n  matchLabels: {istio.io/dataplane-mode: none}\npolicyTypes: [Ingress]"), expected: []),
    PolicyCase(name: "with pod labels: a policy selecting no meshed pod is skipped", yaml: istioAllow9090, ambient: ["demo"],
               pods: [PodLabels(namespace: "demo", name: "x", labels: ["app.kubernetes.io/name": "my-app", "istio.io/dataplane-mode": "none"])], expected: []),
    PolicyCase(name: "with pod labels: exact union across differently written selectors", yaml: fromFrontend8080 + "---\n" + np("b", """
podSelector:
  matchExpressions:
  - {key: tier, operator: In, values: [web]}
ingress:
- ports:
  - port: 15008
- from:
  - ipBlock: {cidr: 169.254.7.127/32}
"""), ambient: ["demo"], pods: [PodLabels(namespace: "demo", name: "api-1", labels: ["app": "api", "tier": "web"])], expected: []),
    PolicyCase(name: "kubectl get -o yaml (kind: List) is read item by item", yaml: """
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: l1, namespace: demo, resourceVersion: "42"}
  spec:
    podSelector: {}
    policyTypes: [Ingress]
""", expected: ["probe-blocked demo/l1 - 169.254.7.127"]),
]

func options(_ c: PolicyCase) -> CheckOptions {
    var o = CheckOptions()
    o.probeIPv4 = IPAddress(c.probeIP)
    o.probeIPv6 = c.probeIPv6.flatMap(IPAddress.init)
    o.ambientNamespaces = Set(c.ambient)
    o.pods = c.pods
    return o
}

func summary(_ r: CheckReport) -> Set<String> {
    Set(r.findings.map { "\($0.kind.rawValue) \($0.policy) \($0.rule ?? "-") \($0.probeIP ?? "-")" })
}

@Suite("NetworkPolicy preflight")
struct NetworkPolicyCheckTests {
    @Test("verdicts", arguments: cases)
    func verdicts(_ c: PolicyCase) throws {
        let report = PolicyAnalyzer(options: options(c)).check(try PolicyParser.parse(c.yaml))
        #expect(summary(report) == c.expected)
        #expect(report.findings.allSatisfy { !$0.message.isEmpty })
    }

    @Test("--fix output checks clean and keeps every existing restriction", arguments: cases.filter { !$0.expected.isEmpty })
    func fixRoundTrip(_ c: PolicyCase) throws {
        let o = options(c)
        let policies = try PolicyParser.parse(c.yaml)
        let report = PolicyAnalyzer(options: o).check(policies)
        let fixedYAML = try PolicyFixer(options: o).yaml(policies, findings: report.findings)
        let fixed = try PolicyParser.parse(fixedYAML)
        // The corrected policies replace the originals with the same name; the rest stay.
        let merged = policies.filter { p in !fixed.contains { $0.id == p.id } } + fixed
        #expect(PolicyAnalyzer(options: o).check(merged).clean, "\(fixedYAML)")
        for f in fixed {
            let original = try #require(policies.first { $0.id == f.id })
            #expect(f.podSelector == original.podSelector && f.policyTypes == original.policyTypes)
            for (i, r) in (original.ingress ?? []).enumerated() {
                let n = try #require(f.ingress?[i])
                #expect(n.peers == r.peers, "peers of ingress[\(i)] unchanged")
                #expect(r.ports.allSatisfy { n.ports.contains($0) }, "ports of ingress[\(i)] kept")
            }
            for (i, r) in (original.egress ?? []).enumerated() {
                let n = try #require(f.egress?[i])
                #expect(n.peers == r.peers && r.ports.allSatisfy { n.ports.contains($0) })
            }
            #expect(f.raw["status"] == nil)
        }
    }

    @Test("the fix adds 15008 beside 9090, as Istio's documentation shows")
    func fixMatchesIstioDocs() throws {
        let policies = try PolicyParser.parse(istioAllow9090)
        let report = PolicyAnalyzer(options: CheckOptions()).check(policies)
        let fixed = try PolicyParser.parse(try PolicyFixer(options: CheckOptions()).yaml(policies, findings: report.findings))
        let expected = try PolicyParser.parse(istioAllow9090Fixed)
        #expect(fixed.first?.ingress == expected.first?.ingress)
    }

    @Test("input errors name the document and the field", arguments: [
        ("kind: Deployment\nmetadata: {name: x}", "document 1, kind: expected NetworkPolicy, got 'Deployment'"),
        (istioAllow9090 + "---\n" + np("bad", "podSelector: {}\ningress:\n- ports:\n  - port: [1]"), "document 2, spec.ingress[0].ports[0].port"),
        (np("bad", "podSelector: {}\ningress:\n- from:\n  - ipBlock: {cidr: 10.0.0.0/99}"), "spec.ingress[0].from[0].ipBlock.cidr"),
        (np("bad", "podSelector: {}\npolicyTypes: [Sideways]"), "spec.policyTypes"),
        ("apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: s}", "document 1, items[0].kind"),
        ("a: [unclosed", "not valid YAML"),
    ])
    func inputErrors(_ yaml: String, _ expected: String) {
        do {
            _ = try PolicyParser.parse(yaml)
            Issue.record("expected an error for \(yaml)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
    }
}

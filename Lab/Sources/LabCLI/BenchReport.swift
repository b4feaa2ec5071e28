import Dataplane
import Foundation

/// Turns a ``BenchResult`` into the Markdown report and SVG plots: medians with min-max, ratios
/// measured side by side in the same run, and the targets with how far the project is from each.
struct BenchReport {
    let result: BenchResult

    struct Stat { var median: Double; var min: Double; var max: Double }

    func stat(_ mode: String, _ placement: String, _ kind: String, _ value: (TrafficSample) -> Double) -> Stat? {
        let v = result.traffic.filter { $0.mode == mode && $0.placement == placement && $0.kind == kind }.map(value).filter(\.isFinite).sorted()
        guard !v.isEmpty else { return nil }
        let mid = v.count / 2
        return Stat(median: v.count % 2 == 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2, min: v.first!, max: v.last!)
    }

    func fmt(_ s: Stat?, _ f: String = "%.0f") -> String {
        guard let s else { return "-" }
        return String(format: f, s.median) + " (" + String(format: f, s.min) + "–" + String(format: f, s.max) + ")"
    }

    func ratio(_ a: Stat?, _ b: Stat?) -> Double? {
        guard let a, let b, b.median > 0 else { return nil }
        return a.median / b.median
    }

    func r(_ v: Double?) -> String { v.map { String(format: "%.2f", $0) } ?? "-" }

    func markdown() -> String {
        let m = result.machine
        var s = """
        # Benchmark: eBPF vs iptables and nftables vs no capture

        Produced by `make bench` (`redirect-lab bench`\(result.quick ? " --quick" : "")) on \(m.date), \(m.build) build: Linux \(m.kernel), \(m.cpus) CPUs (\(m.cpu)), \(m.memoryGiB) GiB.
        \(result.rounds) interleaved round(s) of every mode (A B C … A B C …), \(result.durationSeconds) s per client run, one client
        connection at a time; medians with min–max over rounds. Compare the ratios, which are measured side by side; the
        absolute numbers move with the machine. The whole run took \(Int(result.seconds)) s. Raw samples: `results.json`.

        Modes: **direct** (no capture, client to the app), **explicit** (no capture, the client talks to its node's proxy
        with CONNECT: the limit any capture can reach), **iptables** (Istio's in-pod rules), \(result.modes.contains("nftables") ? "**nftables** (the same in native nftables), " : "")**ebpf** (tc clsact)\(result.modes.contains("ebpf-tcx") ? ", **ebpf-tcx** (tcx links)" : "").
        Every proxied path goes client → proxy (15001) → peer proxy (15008) → app through the stand-in proxy.
        Capture is verified on every client run: the client's proxy recorded \(result.traffic.map(\.proxied).reduce(0, +)) connections
        in all, exactly the ones the client made in each proxied mode (found by capture, or by CONNECT in explicit mode) and none
        in direct mode; a run where that fails stops the benchmark.

        """
        for placement in ["same-node", "cross-node"] {
            s += "\n## Traffic, \(placement)\n\n| mode | connections/s | short p50 µs | short p99 µs | requests/s (long) | long p50 µs | long p99 µs | bulk Gbit/s |\n|---|---|---|---|---|---|---|---|\n"
            for mode in result.modes {
                s += "| \(mode) | \(fmt(stat(mode, placement, "short") { $0.rate })) | \(fmt(stat(mode, placement, "short") { $0.p50us })) | \(fmt(stat(mode, placement, "short") { $0.p99us })) | "
                s += "\(fmt(stat(mode, placement, "long") { $0.rate })) | \(fmt(stat(mode, placement, "long") { $0.p50us })) | \(fmt(stat(mode, placement, "long") { $0.p99us })) | "
                s += "\(fmt(stat(mode, placement, "bulk") { $0.gbps }, "%.2f")) |\n"
            }
            let failed = result.traffic.filter { $0.placement == placement }.reduce(0) { $0 + $1.failed }
            s += "\nFailed connections in these runs: \(failed).\n"
            s += "\n| ratio | connections/s | requests/s | bulk | short p99 |\n|---|---|---|---|---|\n"
            for (a, b) in [("ebpf", "iptables"), ("ebpf", "explicit"), ("iptables", "explicit")] + (result.modes.contains("nftables") ? [("ebpf", "nftables"), ("nftables", "iptables")] : []) + (result.modes.contains("ebpf-tcx") ? [("ebpf-tcx", "ebpf")] : []) {
                s += "| \(a) / \(b) | \(r(ratio(stat(a, placement, "short") { $0.rate }, stat(b, placement, "short") { $0.rate }))) | "
                s += "\(r(ratio(stat(a, placement, "long") { $0.rate }, stat(b, placement, "long") { $0.rate }))) | "
                s += "\(r(ratio(stat(a, placement, "bulk") { $0.gbps }, stat(b, placement, "bulk") { $0.gbps }))) | "
                s += "\(r(ratio(stat(a, placement, "short") { $0.p99us }, stat(b, placement, "short") { $0.p99us }))) |\n"
            }
        }
        s += "\n![throughput per mode](traffic.svg)\n\n![latency per mode](latency.svg)\n"
        s += costSection()

        s += "\n## Per-packet cost of the capture decision\n\nBPF run time from the kernel's statistics (kernel.bpf_stats_enabled during the run), ns per program run. The clsact and tcx modes attach the same loaded programs (reused from their pins), so they report one set of statistics.\n\n| mode | " + EBPFPrograms.all.joined(separator: " | ") + " |\n|---|" + EBPFPrograms.all.map { _ in "---" }.joined(separator: "|") + "|\n"
        for (mode, progs) in result.bpfNsPerRun.sorted(by: { $0.key < $1.key }) {
            s += "| \(mode) | " + EBPFPrograms.all.map { progs[$0].map { String(format: "%.0f", $0) } ?? "-" }.joined(separator: " | ") + " |\n"
        }
        if let ipt = stat("iptables", "same-node", "long", { $0.p50us }), let exp = stat("explicit", "same-node", "long", { $0.p50us }),
           let bpf = stat("ebpf", "same-node", "long", { $0.p50us }) {
            s += String(format: "\niptables has no per-rule timer; its cost shows as latency over the explicit path: long-connection p50 %+.1f µs for iptables, %+.1f µs for ebpf (same node).\n", ipt.median - exp.median, bpf.median - exp.median)
        }

        if let m = result.monitor {
            s += "\n## A listening monitor\n\n`redirect-agent monitor` draining every event (JSON to a file) while the ebpf mode's long connections run on one node (each packet of a captured flow is a counted decision, so an event), rounds interleaved with it off. Off, the programs read the lease, zero, at each run and each counted decision.\n\n| monitor | requests/s (long) | tc_pod_ingress ns/run | tc_pod_egress ns/run |\n|---|---|---|---|\n"
            s += String(format: "| off | %.0f | %.0f | %.0f |\n| on (%d events) | %.0f | %.0f | %.0f |\n", m.connPerSecondOff, m.ingressNsOff, m.egressNsOff,
                        m.events, m.connPerSecondOn, m.ingressNsOn, m.egressNsOn)
        }

        s += "\n## Enrollment\n\nBare pods (a namespace with a veth into the node), enrolled and removed one after another through each dataplane; modes interleaved per size. The probe-IP change is timed with the largest count enrolled.\n\n| mode | pods | enroll total ms | per pod ms | remove total ms | per pod ms | probe-IP change ms |\n|---|---|---|---|---|---|---|\n"
        for e in result.enrollment {
            s += String(format: "| %@ | %d | %.1f | %.3f | %.1f | %.3f | %@ |\n", e.mode, e.pods, e.enrollMs, e.enrollMs / Double(e.pods), e.removeMs,
                        e.removeMs / Double(e.pods), e.probeChangeMs.map { String(format: "%.2f", $0) } ?? "-")
        }
        if result.modes.contains("ebpf-tcx") { s += "\nebpf-tcx is measured up to 100 pods: each tcx attach waits for an RCU grace period under RTNL.\n" }
        s += "\n![enrollment time per pod count](enrollment.svg)\n"

        s += "\n## Agent memory and ADD latency (ebpf)\n\n| pods enrolled through the agent | RSS KiB | ADD through the agent, ms per pod | ADD p50 ms | ADD p99 ms |\n|---|---|---|---|---|\n"
        for x in result.agentRSS {
            s += "| \(x.pods) | \(x.rssKiB) | \(x.pods == 0 ? "-" : String(format: "%.2f", x.addMsPerPod)) | \(r(x.addP50Ms)) | \(r(x.addP99Ms)) |\n"
        }

        if let c = result.concurrentAdds {
            s += String(format: "\n%d ADDs sent at once (one thread each, as a kubelet starting pods in parallel) with %d pods on the node: p50 %.2f ms, p99 %.2f ms, all answered in %.1f ms.\n",
                        c.concurrency, c.pods, c.p50Ms, c.p99Ms, c.wallMs)
        }
        if let k = result.kube {
            func ms(_ v: [Double], _ q: Double) -> String { BenchSummary.percentile(v, q).map { String(format: "%.1f", $0) } ?? "-" }
            s += "\n## Enrolment from the Kubernetes API (ebpf)\n\nOne node, the stand-in API, \(k.watchedPods) pods on the node watched by the agent (\(k.labelToCapturedMs.count) of them running and labelled in turn). "
            s += "A label change is timed from the API's update to the pod's `ambient.istio.io/redirection` annotation, which the agent writes once capture is in place and the proxy has the pod (and removes once released).\n\n"
            s += "| label to captured p50 ms | p99 ms | label to released p50 ms | p99 ms | agent RSS KiB | agent CPU while watching, % of a CPU |\n|---|---|---|---|---|---|\n"
            s += "| \(ms(k.labelToCapturedMs, 0.5)) | \(ms(k.labelToCapturedMs, 0.99)) | \(ms(k.labelToReleasedMs, 0.5)) | \(ms(k.labelToReleasedMs, 0.99)) | \(k.agentRSSKiB) | \(String(format: "%.2f", k.agentCPUPercentWatching)) |\n"
        }
        s += "\n## Against the targets\n\n" + targets().map { "- \($0)" }.joined(separator: "\n") + "\n"
        return s
    }

    /// Latency at a fixed offered load, and what each connection costs the node.
    func costSection() -> String {
        var s = "\n## Fixed load and cost per connection\n\nShort connections paced at a fixed rate, half of what iptables sustained (its median; a connection that starts late moves the schedule on; latency counted from its start, since sleeps on this VM overshoot by milliseconds), "
        s += "then the node's cost from the saturated runs: CPU time of all CPUs (/proc/stat) per 1000 short connections and per GB of bulk, and, from the fixed-load runs, conntrack entries created (NEW events in the client's and server's namespaces and both nodes') per connection.\n"
        for placement in ["same-node", "cross-node"] {
            s += "\n### \(placement)\n\n| mode | offered conn/s | p50 µs | p99 µs | CPU ms per 1000 conn | CPU ms per GB | conntrack entries per conn |\n|---|---|---|---|---|---|---|\n"
            for mode in result.modes {
                let offered = result.traffic.first { $0.mode == mode && $0.placement == placement && $0.kind == "short-fixed" }?.offeredRate
                s += "| \(mode) | \(offered.map { String(format: "%.0f", $0) } ?? "-") | \(fmt(stat(mode, placement, "short-fixed") { $0.p50us })) | "
                s += "\(fmt(stat(mode, placement, "short-fixed") { $0.p99us })) | \(fmt(stat(mode, placement, "short", Self.cpuPer1000Connections))) | "
                s += "\(fmt(stat(mode, placement, "bulk", Self.cpuPerGB))) | \(fmt(stat(mode, placement, "short-fixed", Self.conntrackPerConnection), "%.2f")) |\n"
            }
        }
        return s
    }

    static func cpuPer1000Connections(_ s: TrafficSample) -> Double { (s.cpuMs ?? .nan) / Double(max(s.connections, 1)) * 1000 }
    static func cpuPerGB(_ s: TrafficSample) -> Double { (s.cpuMs ?? .nan) / max(s.gbps * (s.seconds ?? .nan) / 8, 1e-9) }
    static func conntrackPerConnection(_ s: TrafficSample) -> Double { s.conntrackNew.map { Double($0) / Double(max(s.connections, 1)) } ?? .nan }

    func targets() -> [String] {
        var out: [String] = []
        let p = "cross-node"
        func check(_ what: String, _ value: Double?, _ target: Double, higher: Bool, _ unit: String = "") {
            guard let value else { out.append("\(what): not measured"); return }
            let met = higher ? value >= target : value <= target
            let gap = higher ? (target - value) / target * 100 : (value - target) / target * 100
            out.append(String(format: "%@: %.2f%@ (target %@ %.2f%@) — %@", what, value, unit, higher ? "≥" : "≤", target, unit,
                              met ? "met" : String(format: "short by %.0f%%", gap)))
        }
        check("ebpf connections/s vs the explicit-proxy limit (\(p))", ratio(stat("ebpf", p, "short") { $0.rate }, stat("explicit", p, "short") { $0.rate }), 0.97, higher: true)
        check("ebpf connections/s vs iptables (\(p))", ratio(stat("ebpf", p, "short") { $0.rate }, stat("iptables", p, "short") { $0.rate }), 1.4, higher: true)
        check("ebpf short-connection p99 vs the limit (\(p))", ratio(stat("ebpf", p, "short") { $0.p99us }, stat("explicit", p, "short") { $0.p99us }), 1.10, higher: false)
        check("ebpf short-connection p99 at fixed load vs the limit (\(p))", ratio(stat("ebpf", p, "short-fixed") { $0.p99us }, stat("explicit", p, "short-fixed") { $0.p99us }), 1.10, higher: false)
        check("ebpf CPU per 1000 connections vs iptables (\(p))", ratio(stat("ebpf", p, "short", Self.cpuPer1000Connections), stat("iptables", p, "short", Self.cpuPer1000Connections)), 1.0, higher: false)
        if let e = stat("ebpf", p, "short-fixed", Self.conntrackPerConnection), let d = stat("direct", p, "short-fixed", Self.conntrackPerConnection) {
            check("ebpf conntrack entries per connection beyond no capture (\(p))", e.median - d.median, 0, higher: false)
        }
        let e = result.enrollment.filter { $0.mode == "ebpf" }
        if let worst = e.map({ $0.enrollMs / Double($0.pods) }).max() { check("ebpf enrollment per pod (worst size)", worst, 1.0, higher: false, " ms") }
        if let small = e.first, let big = e.last, big.pods > small.pods {
            check("ebpf per-pod enrollment at \(big.pods) vs \(small.pods) pods (flat = 1)", (big.enrollMs / Double(big.pods)) / (small.enrollMs / Double(small.pods)), 1.5, higher: false)
        }
        if let change = e.last?.probeChangeMs { check("ebpf probe-IP change with \(e.last!.pods) pods", change, 10, higher: false, " ms") }
        if let last = result.agentRSS.last(where: { $0.addP50Ms != nil }) {
            check("agent ADD p50 at \(last.pods) pods", last.addP50Ms, 1.0, higher: false, " ms")
            check("agent ADD p99 at \(last.pods) pods", last.addP99Ms, 3.0, higher: false, " ms")
        }
        let iptables = result.enrollment.filter { $0.mode == "iptables" }
        if let worst = iptables.map({ $0.enrollMs / Double($0.pods) }).max() { check("iptables enrollment per pod (worst size)", worst, 10, higher: false, " ms") }
        return out
    }

    // MARK: plots

    func plots() -> [(String, String)] {
        let modes = result.modes
        let thr = modes.map { m in (m, stat(m, "cross-node", "short") { $0.rate }?.median ?? 0, stat(m, "same-node", "short") { $0.rate }?.median ?? 0) }
        let lat = modes.map { m in (m, stat(m, "cross-node", "short") { $0.p99us }?.median ?? 0, stat(m, "cross-node", "short") { $0.p50us }?.median ?? 0) }
        return [
            ("traffic.svg", SVG.bars(title: "Short connections per second (median)", series: ("cross-node", "same-node"), rows: thr)),
            ("latency.svg", SVG.bars(title: "Short-connection latency, cross-node, µs (median)", series: ("p99", "p50"), rows: lat)),
            ("enrollment.svg", SVG.lines(title: "Enrollment time per pod (ms) vs pods enrolled",
                                         series: Dictionary(grouping: result.enrollment, by: \.mode).mapValues { $0.map { (Double($0.pods), $0.enrollMs / Double($0.pods)) } })),
        ]
    }
}

/// The program names in report order.
enum EBPFPrograms {
    static let all = EBPFDataplane.programNames
}

/// Minimal hand-written SVG charts (no plotting library on these machines).
enum SVG {
    static let colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"]

    static func bars(title: String, series: (String, String), rows: [(String, Double, Double)]) -> String {
        let w = 720.0, h = 360.0, left = 70.0, bottom = 40.0, top = 40.0
        let maxV = max(rows.map { max($0.1, $0.2) }.max() ?? 1, 1)
        let group = (w - left - 20) / Double(max(rows.count, 1)), bw = group * 0.35
        var s = header(w, h, title)
        s += axis(left, top, w, h, bottom, maxV)
        for (i, row) in rows.enumerated() {
            let x = left + Double(i) * group + group * 0.12
            for (j, v) in [row.1, row.2].enumerated() {
                let bh = (h - top - bottom) * v / maxV
                s += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\"/>", x + Double(j) * bw, h - bottom - bh, bw - 2, bh, colors[j])
                s += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%.0f</text>", x + Double(j) * bw + bw / 2, h - bottom - bh - 3, v)
            }
            s += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\">%@</text>", x + bw, h - bottom + 16, row.0)
        }
        s += legend([series.0, series.1], x: w - 160, y: top - 20)
        return s + "</svg>\n"
    }

    static func lines(title: String, series: [String: [(Double, Double)]]) -> String {
        let w = 720.0, h = 360.0, left = 70.0, bottom = 40.0, top = 40.0
        let xs = series.values.flatMap { $0.map(\.0) }, ys = series.values.flatMap { $0.map(\.1) }
        let maxY = max(ys.max() ?? 1, 0.001), lx = log10(max(xs.max() ?? 10, 10))
        func px(_ x: Double) -> Double { left + (w - left - 20) * (lx == 0 ? 0 : log10(max(x, 1)) / lx) }
        func py(_ y: Double) -> Double { h - bottom - (h - top - bottom) * y / maxY }
        var s = header(w, h, title) + axis(left, top, w, h, bottom, maxY)
        for x in Set(xs).sorted() { s += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%.0f</text>", px(x), h - bottom + 16, x) }
        for (i, (_, pts)) in series.sorted(by: { $0.key < $1.key }).enumerated() {
            let path = pts.sorted { $0.0 < $1.0 }.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(colors[i % colors.count])\" stroke-width=\"2\" points=\"\(path)\"/>"
            for p in pts { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>", px(p.0), py(p.1), colors[i % colors.count]) }
        }
        s += legend(series.keys.sorted(), x: w - 160, y: top - 20)
        return s + "</svg>\n"
    }

    static func header(_ w: Double, _ h: Double, _ title: String) -> String {
        String(format: "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\"><rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>", w, h)
            + "<text x=\"\(Int(w / 2))\" y=\"20\" font-size=\"14\" text-anchor=\"middle\">\(title)</text>"
    }

    static func axis(_ left: Double, _ top: Double, _ w: Double, _ h: Double, _ bottom: Double, _ maxV: Double) -> String {
        var s = String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>", left, top, left, h - bottom)
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>", left, h - bottom, w - 10, h - bottom)
        for i in 0...4 {
            let v = maxV * Double(i) / 4, y = h - bottom - (h - top - bottom) * Double(i) / 4
            s += String(format: "<text x=\"%.0f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%@</text>", left - 4, y + 3, v >= 10 ? String(format: "%.0f", v) : String(format: "%.2f", v))
        }
        return s
    }

    static func legend(_ names: [String], x: Double, y: Double) -> String {
        names.enumerated().map { i, n in
            String(format: "<rect x=\"%.0f\" y=\"%.0f\" width=\"10\" height=\"10\" fill=\"%@\"/><text x=\"%.0f\" y=\"%.0f\" font-size=\"11\">%@</text>", x, y + Double(i) * 14, colors[i % colors.count], x + 14, y + Double(i) * 14 + 9, n)
        }.joined()
    }
}

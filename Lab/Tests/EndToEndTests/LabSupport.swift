import Foundation
import NodeLab
import SystemCalls
import Testing

/// Builds a lab, runs `body`, and always tears it down, also when `body` throws.
func withLab<T>(_ configure: (inout LabOptions) -> Void = { _ in }, _ body: (Lab) throws -> T) throws -> T {
    var options = LabOptions()
    configure(&options)
    let lab = Lab(options: options)
    defer { lab.teardown() }
    try lab.up()
    return try body(lab)
}

/// Namespaces whose name starts with `prefix`.
func namespaces(prefix: String) throws -> [String] {
    let out = try Command.run("ip", ["netns", "list"])
    return out.split(separator: "\n").map { String($0.split(separator: " ")[0]) }.filter { $0.hasPrefix(prefix) }
}

/// Whether this process can do what the lab needs; the reason when it cannot.
func labUnavailableReason() -> String? {
    if getuid() != 0 { return "lab tests need root (network namespaces, CNI plugins)" }
    if !FileManager.default.isExecutableFile(atPath: "/usr/lib/cni/bridge") { return "containernetworking-plugins not installed (/usr/lib/cni/bridge missing): run `make deps`" }
    return nil
}

/// The pids of processes whose command line mentions `text`.
func processes(mentioning text: String) throws -> [String] {
    // pgrep exits 1 when nothing matches: that is an answer, anything else is a failure.
    let r = try Command.capture("pgrep", ["-f", text])
    guard r.status == 0 || r.status == 1 else { throw LabError("pgrep failed: \(r.stderr)") }
    return r.stdout.split(separator: "\n").map(String.init)
}

/// Whether a new connection from `pod` to `dst` (an HTTP GET that must succeed either way) reaches
/// the proxy of `node` (the source's node by default) on `listener`. The GET waits up to 15 s: a
/// loaded CI machine once took longer than 3 s to answer one with nothing captured.
func reachesProxy(_ lab: Lab, from pod: LabPod, to dst: SocketAddress, listener: UInt16 = 15001, node: LabNode? = nil) throws -> Bool {
    let proxyNode = node ?? pod.node
    let before = try lab.proxyRecords(proxyNode).filter { $0.listener == listener }.count
    let r: MiniHTTP.Response
    do { r = try lab.request(from: pod, to: dst, timeout: 15) } catch { throw LabError("GET \(dst) from \(pod.name): \(error)") }
    #expect(r.status == 200, "the connection works either way")
    return try lab.proxyRecords(proxyNode).filter { $0.listener == listener }.count > before
}

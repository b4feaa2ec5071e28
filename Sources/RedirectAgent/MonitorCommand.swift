import AgentAPI
import AgentCore
import ArgumentParser
import BPFLoader
import Foundation
import Glibc
import MapSync
import SystemCalls

/// `redirect-agent monitor`: capture decisions as the kernel makes them (the programs' ring
/// buffer), while this command holds the lease that turns events on.
struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream capture decisions live from the kernel: time, pod, hook, 5-tuple, decision (captured to which port, passed, dropped and why).")
    @OptionGroup var pins: PinnedMaps
    @Option(help: "Only this pod (namespace/name, or name); repeatable.") var pod: [String] = []
    @Option(help: "Only this decision (e.g. outbound_captured, drop_not_proxy); repeatable.") var decision: [String] = []
    @Option(help: "Stop after this many events.") var count: Int?
    @Option(help: "Stop after this many seconds.") var seconds: Double?
    @Flag(help: "One JSON object per event.") var json = false

    func validate() throws {
        let known = Set(Decision.allCases.map(\.description))
        for d in decision where !known.contains(d) { throw ValidationError("unknown decision '\(d)'; one of \(known.sorted().joined(separator: ", "))") }
    }

    func run() throws {
        let maps = try pins.open(for: "monitor")
        let ring = try RingBuffer(mapFD: maps.events.fd)
        let names = PodNames(maps: maps, controlSocket: pins.controlSocket)
        let config = try maps.readConfig()
        let end = seconds.map { Monotonic.now() + $0 }
        var seen = 0, renewed = 0.0
        // One monitor at a time: they would share the ring buffer, each seeing part of the stream.
        let held = try maps.monitorLease()
        if held > Monotonic.nanoseconds() {
            FileHandle.standardError.write(Data("redirect-agent monitor: another monitor is running on \(pins.pinRoot) (its lease is current)\n".utf8))
            throw ExitCode(2)
        }
        try maps.setMonitorLease(until: Monotonic.nanoseconds() + 3_000_000_000)
        defer { try? maps.setMonitorLease(until: 0) }
        FileHandle.standardError.write(Data("monitoring \(pins.pinRoot): events on while this runs\n".utf8))
        while count.map({ seen < $0 }) ?? true, end.map({ Monotonic.now() < $0 }) ?? true {
            if Monotonic.now() - renewed > 1 { // the lease outlives a missed renewal, not a dead monitor
                try maps.setMonitorLease(until: Monotonic.nanoseconds() + 3_000_000_000)
                renewed = Monotonic.now()
            }
            for record in try ring.poll(timeoutMilliseconds: 200) {
                guard var event = CaptureEvent(record: record, monotonicNow: Monotonic.nanoseconds(), wallNow: Date(), config: config) else { continue }
                event.pod = names.name(event.podIndex)
                guard wanted(event) else { continue }
                print(json ? try line(event) : event.text)
                flushOutput()
                seen += 1
                if let count, seen >= count { break }
            }
        }
    }

    private func wanted(_ e: CaptureEvent) -> Bool {
        if !decision.isEmpty, !decision.contains(e.decision) { return false }
        if !pod.isEmpty, !pod.contains(where: { $0 == e.pod || "default/\($0)" == e.pod || e.pod?.hasSuffix("/\($0)") == true }) { return false }
        return true
    }

    private func line(_ e: CaptureEvent) throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        enc.dateEncodingStrategy = .iso8601
        return String(decoding: try enc.encode(e), as: UTF8.self)
    }
}

/// Pod names by counter index: the pods' addresses from ra_pods, their names from the agent;
/// looked up again (at most every 2 s) when an index is not known yet.
final class PodNames {
    private let maps: MapSync
    private let controlSocket: String
    private var byIndex: [UInt32: String] = [:]
    private var refreshed = 0.0

    init(maps: MapSync, controlSocket: String) {
        self.maps = maps
        self.controlSocket = controlSocket
        refresh()
    }

    func name(_ index: UInt32) -> String? {
        if index != 0, byIndex[index] == nil, Monotonic.now() - refreshed > 2 { refresh() }
        return byIndex[index]
    }

    private func refresh() {
        refreshed = Monotonic.now()
        let byIP = agentPodNames(controlSocket)
        guard !byIP.isEmpty, let pods = try? maps.allPods() else { return }
        for (ip, info) in pods { if let n = byIP[ip] { byIndex[info.pod_index] = n } }
    }
}

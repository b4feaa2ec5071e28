import ArgumentParser
import Foundation
import Synchronization
import Glibc
import NodeLab
import SystemCalls

/// The load client: short connections, request/response on long connections, or bulk transfer,
/// against the echo port. Prints one JSON summary.
struct Client: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Open many short or long connections and measure them.")
    enum Mode: String, ExpressibleByArgument { case short, long, bulk }
    @Option(help: "Network namespace to run in.") var netns: String?
    @Option(help: "Target ip:port (an echo server).") var target: String
    @Option(help: "short: connect, one 64-byte echo, close. long: echoes on kept connections. bulk: stream.") var mode: Mode = .short
    @Option(help: "Seconds to run.") var duration: Double = 2
    @Option(help: "Parallel workers.") var concurrency = 1
    @Option(help: "Send `CONNECT <target>` first: talk to an explicit proxy at --via.") var via: String?
    @Option(help: "Maximum operations per worker (0: unlimited until --duration).") var limit = 0
    @Option(help: "Short mode: connections per second in all, each on its own schedule (0: as fast as they go).") var rate = 0.0

    func run() throws {
        try enter(netns)
        guard let target = SocketAddress(parsing: target) else { throw ValidationError("bad --target \(self.target)") }
        let viaAddr = try via.map { v -> SocketAddress in
            guard let a = SocketAddress(parsing: v) else { throw ValidationError("bad --via \(v)") }
            return a
        }
        let stats = LoadStats()
        let deadline = Date().addingTimeInterval(duration)
        let group = DispatchGroup()
        let start = Date()
        for _ in 0..<max(concurrency, 1) {
            group.enter()
            Thread {
                let interval = rate > 0 ? Double(max(concurrency, 1)) / rate : nil
                let w = Worker(target: target, via: viaAddr, deadline: deadline, limit: limit, stats: stats, interval: interval)
                switch mode {
                case .short: w.shortLoop()
                case .long: w.longLoop()
                case .bulk: w.bulk()
                }
                group.leave()
            }.start()
        }
        group.wait()
        print(stats.summary(mode: mode.rawValue, seconds: Date().timeIntervalSince(start)))
    }
}

/// Latencies and counts, shared by the workers.
final class LoadStats: Sendable {
    private struct Totals {
        var latencies: [Double] = []
        var ok = 0
        var failed = 0
        var bytes = 0
        var connections = 0
        var firstError: String?
    }
    private let totals = Mutex(Totals())

    func record(_ latency: Double?, bytes: Int = 0, error: (any Error)? = nil) {
        totals.withLock { t in
            if let latency { t.latencies.append(latency); t.ok += 1 } else {
                t.failed += 1
                if t.firstError == nil { t.firstError = error.map { "\($0)" } }
            }
            t.bytes += bytes
        }
    }

    /// Counts a connection that was established (what a capturing proxy must have recorded).
    func connected() { totals.withLock { $0.connections += 1 } }

    func summary(mode: String, seconds: Double) -> String {
        let t = totals.withLock { $0 }
        let (ok, failed, bytes, firstError) = (t.ok, t.failed, t.bytes, t.firstError)
        let sorted = t.latencies.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1e6 }
        var d: [String: Any] = [
            "mode": mode, "ok": ok, "failed": failed, "seconds": seconds, "connections": t.connections,
            "rate": Double(ok) / max(seconds, 1e-9),
            "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99),
            "gbps": Double(bytes) * 8 / max(seconds, 1e-9) / 1e9,
        ]
        if let firstError { d["error"] = firstError }
        let data = try! JSONSerialization.data(withJSONObject: d, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

struct Worker {
    let target: SocketAddress
    let via: SocketAddress?
    let deadline: Date
    let limit: Int
    let stats: LoadStats
    /// Seconds between this worker's connections at a fixed rate; nil: back to back.
    let interval: Double?
    let payload = [UInt8](repeating: 0x61, count: 64)

    func open() throws -> Socket {
        let s = try Socket.connected(to: via ?? target, timeout: 5)
        stats.connected()
        if via != nil { try s.writeAll("CONNECT \(target)\n") }
        return s
    }

    func echo(_ s: Socket) throws {
        try s.writeAll(payload)
        var got = 0
        while got < payload.count {
            let chunk = try s.read(max: payload.count - got)
            if chunk.isEmpty { throw LabError("connection closed after \(got) bytes") }
            got += chunk.count
        }
    }

    func shortLoop() {
        var n = 0
        var next = DispatchTime.now().uptimeNanoseconds
        while Date() < deadline && (limit == 0 || n < limit) {
            if let interval {
                // Paced: each connection waits for its slot. Latency counts from when it starts:
                // sleeps here overshoot by milliseconds (a VM's timers), and counting from the slot
                // would charge that to the dataplane. A late start moves the schedule on rather
                // than bursting to catch up, so the rate offered never exceeds the one asked for.
                while case let now = DispatchTime.now().uptimeNanoseconds, now < next, Date() < deadline {
                    usleep(UInt32(min((next - now) / 1000, 100_000)))
                }
                if Date() >= deadline { break }
                next = max(next, DispatchTime.now().uptimeNanoseconds - UInt64(interval * 1e9)) + UInt64(interval * 1e9)
            }
            let t0 = DispatchTime.now()
            n += 1
            do {
                let s = try open()
                try echo(s)
                s.close()
                stats.record(seconds(since: t0))
            } catch { stats.record(nil, error: error) }
        }
    }

    func longLoop() {
        guard let s = try? open() else { stats.record(nil, error: LabError("connect failed")); return }
        var n = 0
        while Date() < deadline && (limit == 0 || n < limit) {
            n += 1
            let t0 = DispatchTime.now()
            do { try echo(s); stats.record(seconds(since: t0)) } catch { stats.record(nil, error: error); return }
        }
    }

    func bulk() {
        do {
            let s = try open()
            let chunk = [UInt8](repeating: 0x62, count: 256 * 1024)
            let sender = Thread {
                while Date() < deadline { if (try? s.writeAll(chunk)) == nil { break } }
                s.shutdownWrite()
            }
            sender.start()
            var total = 0
            var buf = [UInt8](repeating: 0, count: 256 * 1024)
            while true {
                let n = try buf.withUnsafeMutableBytes { try s.read(into: $0) }
                if n == 0 { break }
                total += n
            }
            stats.record(0, bytes: total)
        } catch { stats.record(nil, error: error) }
    }

    func seconds(since t0: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e9
    }
}

import CShim
import Foundation
import Glibc
import Logging
import Synchronization
import SystemCalls

/// A pod as the agent hands it to the proxy.
public struct ZDSWorkload: Sendable {
    /// Pod UID.
    public var uid: String
    /// Pod name.
    public var name: String
    /// Kubernetes namespace.
    public var namespace: String
    /// The pod's network namespace path (opened and passed as a descriptor).
    public var netns: String
    /// Creates one.
    public init(uid: String, name: String, namespace: String, netns: String) { self.uid = uid; self.name = name; self.namespace = namespace; self.netns = netns }
}

/// The agent's side of ZDS: ztunnel (or the stand-in proxy) connects, says hello, receives a
/// snapshot of every enrolled pod (each acknowledged), SnapshotSent, then live adds and deletes.
/// One proxy at a time: a new connection replaces the old one and gets a fresh snapshot. A peer
/// that sends garbage or disconnects is dropped; the server keeps serving.
public final class ZDSServer: Sendable {
    private let listener: Socket
    private let logger: Logger
    private struct Peer {
        var channel: ZDSChannel?
        var workloads: [String: ZDSWorkload] = [:]
    }
    // One request in flight at a time, snapshot included. The server keeps its own list of
    // workloads so it never calls back into its owner while holding this lock.
    private let peer = Mutex(Peer())
    // Taken before `peer` (and before whatever `admit` locks), never the other way round.
    private let admission = Mutex(())
    private let ackTimeout: Double
    private let admit: @Sendable (Socket) throws -> (@Sendable () -> Void)
    private let connectionChanged: @Sendable () -> Void

    /// Listens on `path`; `initial` are the pods a new proxy receives in its snapshot. `admit` sees
    /// each proxy's connection after its hello and before its snapshot; a proxy it throws for is
    /// dropped with the reason in the log. What it returns undoes the admission, and runs when the
    /// proxy is lost before its snapshot is through (the previous proxy, if any, stays the proxy).
    /// `connectionChanged` runs once a proxy has its snapshot and when a proxy is lost; it must not
    /// block or call back into the server.
    public init(path: String, ackTimeout: Double = 5, logger: Logger = Logger(label: "zds"), initial: [ZDSWorkload],
                admit: @escaping @Sendable (Socket) throws -> (@Sendable () -> Void) = { _ in {} },
                connectionChanged: @escaping @Sendable () -> Void = {}) throws {
        // Whoever connects here receives pod network namespaces: root only (0600 in a 0700 directory).
        try PrivateDirectory.prepare((path as NSString).deletingLastPathComponent)
        self.listener = try UnixSocket.listen(path: path, type: cshim_sock_seqpacket(), mode: 0o600)
        self.logger = logger
        self.ackTimeout = ackTimeout
        self.admit = admit
        self.connectionChanged = connectionChanged
        peer.withLock { p in for w in initial { p.workloads[w.uid] = w } }
    }

    /// Whether a proxy is connected and has its snapshot.
    public var connected: Bool { peer.withLock { $0.channel != nil } }

    /// Accepts proxies on a background thread.
    public func start() {
        DedicatedThread.detach(name: "zds-accept") { [self] in
            while true {
                guard let s = try? listener.accept() else { usleep(10_000); continue }
                DedicatedThread.detach(name: "zds-peer") { self.serve(ZDSChannel(socket: s)) }
            }
        }
    }

    private func serve(_ ch: ZDSChannel) {
        do {
            try ch.socket.setTimeout(seconds: ackTimeout)
            guard let (hello, fd) = try ch.receive(Istio_Workload_Zds_ZdsHello.self) else { return }
            if fd >= 0 { close(fd) }
            logger.info("proxy connected", metadata: ["version": "\(hello.version)"])
        } catch {
            logger.warning("proxy dropped before its hello", metadata: ["error": "\(error)"])
            ch.socket.close()
            return
        }
        // One admission at a time, snapshot included: the proxy on the channel is always the one
        // `admit` saw last, and an undo never overwrites a later admission.
        admission.withLock { _ in admitAndSnapshot(ch) }
    }

    private func admitAndSnapshot(_ ch: ZDSChannel) {
        let undo: @Sendable () -> Void
        do { undo = try admit(ch.socket) } catch {
            logger.error("proxy refused", metadata: ["error": "\(error)"])
            ch.socket.close()
            return
        }
        do {
            try peer.withLock { p in
                for w in p.workloads.values.sorted(by: { $0.uid < $1.uid }) { try sendAdd(w, on: ch) }
                var req = Istio_Workload_Zds_WorkloadRequest()
                req.snapshotSent = Istio_Workload_Zds_SnapshotSent()
                try request(req, on: ch)
                p.channel = ch
            }
            logger.info("snapshot sent to proxy")
            connectionChanged()
        } catch {
            logger.warning("proxy dropped during its snapshot", metadata: ["error": "\(error)"])
            ch.socket.close()
            undo()
        }
    }

    /// Hands a new pod to the proxy and waits for its ack. No proxy connected: the pod goes out
    /// in the snapshot when one connects. A rejected pod throws and is forgotten.
    public func add(_ w: ZDSWorkload) throws {
        try peer.withLock { p in
            p.workloads[w.uid] = w
            guard let ch = p.channel else { return }
            do { try sendAdd(w, on: ch) } catch let e as ZDSRejected {
                p.workloads[w.uid] = nil
                throw e
            } catch { drop(ch, error, &p) }
        }
    }

    /// Tells the proxy a pod is gone.
    public func remove(uid: String) {
        peer.withLock { p in
            p.workloads[uid] = nil
            guard let ch = p.channel else { return }
            var req = Istio_Workload_Zds_WorkloadRequest()
            var del = Istio_Workload_Zds_DelWorkload()
            del.uid = uid
            req.del = del
            do { try request(req, on: ch) } catch { drop(ch, error, &p) }
        }
    }

    private func sendAdd(_ w: ZDSWorkload, on ch: ZDSChannel) throws {
        let fd = open(w.netns, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            logger.warning("pod namespace gone, not sent", metadata: ["uid": "\(w.uid)", "netns": "\(w.netns)"])
            return
        }
        defer { close(fd) }
        var add = Istio_Workload_Zds_AddWorkload()
        add.uid = w.uid
        add.workloadInfo.name = w.name
        add.workloadInfo.namespace = w.namespace
        var req = Istio_Workload_Zds_WorkloadRequest()
        req.add = add
        try request(req, on: ch, fd: fd)
    }

    private func request(_ req: Istio_Workload_Zds_WorkloadRequest, on ch: ZDSChannel, fd: Int32 = -1) throws {
        try ch.send(req, fd: fd)
        guard let (resp, rfd) = try ch.receive(Istio_Workload_Zds_WorkloadResponse.self) else { throw ZDSError("proxy closed the connection") }
        if rfd >= 0 { close(rfd) }
        guard case .ack(let ack)? = resp.payload else { throw ZDSError("expected an Ack") }
        if !ack.error.isEmpty { throw ZDSRejected(message: ack.error) }
    }

    private func drop(_ ch: ZDSChannel, _ error: any Error, _ p: inout Peer) {
        logger.warning("proxy connection lost", metadata: ["error": "\(error)"])
        ch.socket.close()
        if p.channel === ch {
            p.channel = nil
            connectionChanged()
        }
    }
}

/// The proxy answered a request with an error.
public struct ZDSRejected: Error, CustomStringConvertible {
    /// Its message.
    public var message: String
    /// One line.
    public var description: String { "proxy rejected the pod: \(message)" }
}

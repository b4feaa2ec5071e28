import Foundation
import Glibc
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization
import SystemCalls

/// The lab's Kubernetes API server: HTTPS with a bearer token, discovery, and pods and namespaces
/// (list, watch, get, create, merge and strategic merge patch, delete, pods/status), speaking the
/// wire format the real kubectl and the agent's client use. No kube-apiserver can run here; this
/// serves the subset they need, from an ``ObjectStore``.
public final class APIServer: Sendable {
    /// The objects.
    public let store: ObjectStore
    /// The token every request must carry.
    public let token: String
    /// How often a watch that asked for bookmarks gets one.
    public let bookmarkInterval: Duration
    private let tls: NIOSSLContext
    private let group: MultiThreadedEventLoopGroup
    private let listener = Mutex<(channel: Channel?, port: Int)>((nil, 0))
    private let connections = Mutex<[ObjectIdentifier: Channel]>([:])
    private let serving = Mutex(0)
    private let held = Mutex<(paths: Set<String>, seen: Int)>(([], 0))
    private let host: String
    private let netns: NetworkNamespace?

    /// Listens on `host:port` (0: a free one below the ephemeral range, kept across restarts) with the
    /// certificate and key (PEM files); with `netns`, on every IPv4 address of that network
    /// namespace (a lab node's: where the agents can reach it).
    /// With `clientCA` (a PEM file), a client may prove who it is with a certificate that CA signed
    /// instead of the token, as kube-apiserver's `--client-ca-file` allows.
    public init(store: ObjectStore, host: String = "127.0.0.1", port: Int = 0, netns: NetworkNamespace? = nil,
                certificate: String, key: String, token: String, clientCA: String? = nil, bookmarkInterval: Duration = .seconds(5)) throws {
        self.store = store
        self.netns = netns
        self.token = token
        self.bookmarkInterval = bookmarkInterval
        self.host = host
        let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
        var config = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        if let clientCA {
            config.certificateVerification = .optionalVerification // a certificate that is presented must verify
            config.trustRoots = .file(clientCA)
        }
        tls = try NIOSSLContext(configuration: config)
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        guard port == 0 else {
            listener.withLock { $0.port = port }
            try start()
            return
        }
        // A port below the kernel's ephemeral range: a restart binds it again, and a client socket
        // that took it meanwhile as its own source port (ephemeral ones come from 32768 up) cannot.
        var lastError: (any Error)?
        for _ in 0..<32 {
            listener.withLock { $0.port = Int.random(in: 20000..<32000) }
            do { try start(); return } catch { lastError = error }
        }
        throw lastError!
    }

    /// The port it listens on.
    public var port: Int { listener.withLock { $0.port } }

    /// Starts serving (again, after ``stop()``), on the same port.
    public func start() throws {
        let tls = self.tls
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] ch in
                let id = ObjectIdentifier(ch)
                connections.withLock { $0[id] = ch }
                ch.closeFuture.whenComplete { _ in self.connections.withLock { _ = $0.removeValue(forKey: id) } }
                return ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    let async = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: ch)
                    Task(executorPreference: QueueExecutor.shared) { await self.serve(async) }
                }
            }
        let ch: Channel
        if let netns {
            // The listening socket is made in the node's namespace; NIO serves it from its own threads.
            let port = self.port
            let fd = try netns.run { () -> Int32 in
                let s = try Socket.listening(on: SocketAddress(IPAddress("0.0.0.0")!, UInt16(port)))
                return dup(s.fd)
            }
            ch = try bootstrap.withBoundSocket(fd).wait()
        } else {
            ch = try bootstrap.bind(host: host, port: port).wait()
        }
        listener.withLock { $0 = (ch, ch.localAddress?.port ?? $0.port) }
    }

    /// Stops listening and ends every watch, as an API server restart does; ``start()`` resumes.
    public func stop() {
        let ch = listener.withLock { l in defer { l.channel = nil }; return l.channel }
        try? ch?.close().wait()
        store.dropWatches()
        for c in connections.withLock({ Array($0.values) }) { try? c.close().wait() }
    }

    /// Stops for good, once every connection's task has ended (none may write to a loop that is gone).
    public func shutdown() {
        stop()
        let end = Date().addingTimeInterval(2)
        while serving.withLock({ $0 }) > 0 && Date() < end { usleep(5_000) }
        try? group.syncShutdownGracefully()
    }

    /// The server's base URL.
    public var url: String { "https://\(host):\(port)" }

    // MARK: connections

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        serving.withLock { $0 += 1 }
        defer { serving.withLock { $0 -= 1 } }
        let channel = connection.channel
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body = ByteBuffer()
            var certified: Bool?
            for try await part in inbound {
                switch part {
                case .head(let h): head = h; body.clear()
                case .body(var b): body.writeBuffer(&b)
                case .end:
                    guard let h = head else { continue }
                    if certified == nil { certified = await Self.presentedCertificate(channel) } // the handshake is over by now
                    let keepOpen = try await respond(Request(head: h, body: Data(buffer: body)), outbound, certified: certified ?? false)
                    if !keepOpen { return }
                }
            }
        }
    }

    // MARK: a slow API, for tests

    /// Makes GETs of `path` (no query) wait until ``release(_:)``: an API server that is slow for
    /// one object while it answers everything else.
    public func hold(_ path: String) { held.withLock { _ = $0.paths.insert(path) } }

    /// Lets the held GETs of `path` be answered.
    public func release(_ path: String) { held.withLock { _ = $0.paths.remove(path) } }

    /// How many GETs have been held so far.
    public var heldRequests: Int { held.withLock { $0.seen } }

    private func waitWhileHeld(_ head: HTTPRequestHead) async throws {
        let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
        guard head.method == .GET else { return }
        let isHeld = held.withLock { h -> Bool in
            guard h.paths.contains(path) else { return false }
            h.seen += 1
            return true
        }
        guard isHeld else { return }
        while held.withLock({ $0.paths.contains(path) }) { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// Whether the client presented a certificate (TLS verified it against the client CA, or the
    /// handshake would have failed).
    private static func presentedCertificate(_ channel: Channel) async -> Bool {
        (try? await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate != nil
        }.get()) ?? false
    }

    /// Answers one request; false when the connection must close (after a watch). A request needs
    /// the token, or a connection that presented a client certificate.
    private func respond(_ req: Request, _ out: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, certified: Bool) async throws -> Bool {
        try await waitWhileHeld(req.head)
        guard certified || req.head.headers.first(name: "authorization") == "Bearer \(token)" else {
            try await send(out, StoreError(401, "Unauthorized", "Unauthorized").status, code: 401)
            return true
        }
        do {
            switch try route(req) {
            case .document(let doc, let code): try await send(out, doc, code: code)
            case .watch(let kind, let selection, let from, let table):
                try await streamWatch(out, kind: kind, selection: selection, from: from, table: table, bookmarks: req.query["allowWatchBookmarks"] == "true",
                                      timeout: Int(req.query["timeoutSeconds"] ?? "") ?? 1800)
                return false
            }
        } catch let e as StoreError {
            try await send(out, e.status, code: e.code)
        } catch {
            try await send(out, StoreError(400, "BadRequest", "\(error)").status, code: 400)
        }
        return true
    }

    private func send(_ out: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, _ doc: JSONValue, code: Int) async throws {
        let data = doc.data()
        var headers = HTTPHeaders([("content-type", "application/json"), ("content-length", "\(data.count)")])
        headers.add(name: "cache-control", value: "no-cache, private")
        try await out.write(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: code), headers: headers)))
        try await out.write(.body(.byteBuffer(ByteBuffer(data: data))))
        try await out.write(.end(nil))
    }

    /// A chunked stream of events, one JSON object per line, until the timeout, the client goes, or
    /// the server stops. Expired history is an ERROR event carrying a 410 Status, as a real server sends.
    private func streamWatch(_ out: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, kind: Kind, selection: Selection, from: Int?,
                             table: Bool, bookmarks: Bool, timeout: Int) async throws {
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([("content-type", "application/json"), ("transfer-encoding", "chunked")]))
        try await out.write(.head(head))
        func line(_ type: String, _ object: JSONValue) async throws {
            var d = JSONValue.object(["type": .string(type), "object": object]).data()
            d.append(0x0a)
            try await out.write(.body(.byteBuffer(ByteBuffer(data: d))))
        }
        let watch: (events: AsyncStream<WatchEvent>, cancel: @Sendable () -> Void)
        do { watch = try store.watch(kind, selection, from: from) } catch let e as StoreError {
            try await line("ERROR", e.status)
            try await out.write(.end(nil))
            return
        }
        defer { watch.cancel() }
        let interval = bookmarkInterval, store = self.store
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await e in watch.events where e.kind == kind && selection.matches(e.object) {
                    try await line(e.type, table ? Tables.table(kind, [e.object], resourceVersion: e.resourceVersion) : e.object)
                }
            }
            group.addTask {
                let end = ContinuousClock.now + .seconds(timeout)
                while ContinuousClock.now < end {
                    try await Task.sleep(for: min(interval, end - ContinuousClock.now))
                    guard bookmarks else { continue }
                    let mark = JSONValue.object(["kind": .string(kind.rawValue), "apiVersion": .string("v1"),
                                                 "metadata": .object(["resourceVersion": .string("\(store.resourceVersion)")])])
                    try await line("BOOKMARK", mark)
                }
            }
            try await group.next() // the first to end (events finished, timeout, or a failed write) ends the watch
            group.cancelAll()
        }
        try await out.write(.end(nil))
    }

    // MARK: routing

    struct Request {
        var head: HTTPRequestHead
        var body: Data
        var path: [String]
        var query: [String: String]
        init(head: HTTPRequestHead, body: Data) {
            self.head = head
            self.body = body
            let c = URLComponents(string: "http://x" + head.uri)
            path = (c?.path ?? "").split(separator: "/").map(String.init)
            var q: [String: String] = [:]
            for item in c?.queryItems ?? [] { q[item.name] = item.value ?? "" }
            query = q
        }
        var wantsTable: Bool { head.headers.first(name: "accept")?.contains("as=Table") == true }
    }

    enum Answer {
        case document(JSONValue, Int)
        case watch(Kind, Selection, Int?, Bool)
    }

    private func route(_ r: Request) throws -> Answer {
        let p = r.path, method = r.head.method
        switch (method, p) {
        case (.GET, ["version"]): return .document(Discovery.version, 200)
        case (.GET, ["api"]): return .document(Discovery.apiVersions(url), 200)
        case (.GET, ["apis"]): return .document(Discovery.groups, 200)
        case (.GET, ["api", "v1"]): return .document(Discovery.coreResources, 200)
        default: break
        }
        guard p.count >= 3, p[0] == "api", p[1] == "v1" else { throw StoreError(404, "NotFound", "the server could not find the requested resource") }
        var rest = Array(p.dropFirst(2))
        var namespace: String?
        if rest.count >= 3, rest[0] == "namespaces" { namespace = rest[1]; rest.removeFirst(2) }
        else if rest.count <= 2, rest[0] == "namespaces" { return try resource(.namespace, namespace: nil, name: rest.count == 2 ? rest[1] : nil, sub: nil, r) }
        guard let first = rest.first, let kind = Kind.allCases.first(where: { $0.resource == first }) else {
            throw StoreError(404, "NotFound", "the server could not find the requested resource")
        }
        return try resource(kind, namespace: namespace, name: rest.count > 1 ? rest[1] : nil, sub: rest.count > 2 ? rest[2] : nil, r)
    }

    private func resource(_ kind: Kind, namespace: String?, name: String?, sub: String?, _ r: Request) throws -> Answer {
        let table = r.wantsTable
        switch (r.head.method, name, sub) {
        case (.GET, nil, nil):
            let sel = try Selection(namespace: namespace, fieldSelector: r.query["fieldSelector"], labelSelector: r.query["labelSelector"])
            if r.query["watch"] == "true" || r.query["watch"] == "1" {
                return .watch(kind, sel, Int(r.query["resourceVersion"] ?? ""), table)
            }
            let (items, rv) = store.list(kind, sel)
            if table { return .document(Tables.table(kind, items, resourceVersion: rv), 200) }
            return .document(.object(["kind": .string("\(kind.rawValue)List"), "apiVersion": .string("v1"),
                                      "metadata": .object(["resourceVersion": .string("\(rv)")]), "items": .array(items)]), 200)
        case (.POST, nil, nil):
            return .document(try store.create(kind, namespace: namespace, try JSONValue.parse(r.body)), 201)
        case (.GET, let name?, nil), (.GET, let name?, "status"):
            let o = try store.get(kind, namespace: namespace, name: name)
            return .document(table ? Tables.table(kind, [o], resourceVersion: store.resourceVersion) : o, 200)
        case (.PATCH, let name?, let sub) where sub == nil || sub == "status":
            let type = r.head.headers.first(name: "content-type") ?? ""
            guard type.hasPrefix("application/merge-patch+json") || type.hasPrefix("application/strategic-merge-patch+json") else {
                throw StoreError(415, "UnsupportedMediaType", "the stand-in takes merge and strategic merge patches, not \(type)")
            }
            return .document(try store.patch(kind, namespace: namespace, name: name, try JSONValue.parse(r.body), statusOnly: sub == "status"), 200)
        case (.DELETE, let name?, nil):
            return .document(try store.delete(kind, namespace: namespace, name: name), 200)
        default:
            throw StoreError(405, "MethodNotAllowed", "\(r.head.method) is not supported here")
        }
    }
}

/// Where the server's connections run: a queue of its own, never Swift's shared pool, which the
/// lab's tests (in the same process) block with their synchronous waits. A blocked pool must not
/// starve the API the agents are waiting on, nor a test's own async work (its informers).
public final class QueueExecutor: TaskExecutor {
    /// The one instance.
    public static let shared = QueueExecutor()
    private let queue = DispatchQueue(label: "kube-standin", attributes: .concurrent)

    /// Runs the job on the queue.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

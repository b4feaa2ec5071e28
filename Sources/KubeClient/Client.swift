import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// A change a watch reports.
public enum WatchEvent<T: KubeObject>: Sendable {
    /// ADDED or MODIFIED: the object as it is now.
    case upserted(T)
    /// DELETED: the object as it was.
    case deleted(T)
    /// BOOKMARK: the watch is current up to this resourceVersion.
    case bookmark(String)
}

/// The Kubernetes API calls the agent makes: list, watch, get and merge-patch of pods/status.
/// JSON over HTTPS (async-http-client), a bearer token on every request.
public final class KubeClient: Sendable {
    /// Where and who.
    public let config: KubeConfig
    private let http: HTTPClient
    /// The exec plugin's last credential, used until it expires or the server refuses it.
    private let execCredential = Mutex<ExecPlugin.Credential?>(nil)

    /// A client for `config`.
    public init(_ config: KubeConfig) throws {
        self.config = config
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = config.certificateAuthority {
            do { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca)) } catch {
                throw KubeError(.config, "the CA bundle is not PEM: \(error)")
            }
        }
        if let cert = config.clientCertificate, let key = config.clientKey {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
            } catch { throw KubeError(.config, "the client certificate or key is not PEM: \(error)") }
        }
        if config.insecure { tls.certificateVerification = .none }
        var c = HTTPClient.Configuration(tlsConfiguration: tls)
        c.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(5))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    /// Closes its connections.
    public func shutdown() async { try? await http.shutdown() }

    private func request(_ path: String, query: [(String, String)] = [], method: HTTPMethod = .GET, body: Data? = nil,
                         contentType: String? = nil) throws -> HTTPClientRequest {
        var c = URLComponents(string: config.server + path)
        if !query.isEmpty { c?.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) } }
        guard let url = c?.string else { throw KubeError(.config, "bad server URL \(config.server)") }
        var r = HTTPClientRequest(url: url)
        r.method = method
        r.headers.add(name: "accept", value: "application/json")
        r.headers.add(name: "user-agent", value: "redirect-agent")
        if let token = try currentToken() { r.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let body {
            r.body = .bytes(ByteBuffer(data: body))
            r.headers.add(name: "content-type", value: contentType ?? "application/json")
        }
        return r
    }

    private func execute(_ r: HTTPClientRequest, timeout: TimeAmount = .seconds(15)) async throws -> HTTPClientResponse {
        do { return try await http.execute(r, timeout: timeout) } catch {
            throw KubeError(.transport, "\(r.method) \(r.url): \(error)")
        }
    }

    /// The token to send now: the exec plugin's (run again once its credential expires), else the
    /// config's.
    func currentToken() throws -> String? {
        guard let exec = config.exec else { return try config.currentToken() }
        if let c = execCredential.withLock({ $0 }), c.expires.map({ $0 > Date().addingTimeInterval(10) }) ?? true { return c.token }
        let fresh = try exec.run()
        execCredential.withLock { $0 = fresh }
        return fresh.token
    }

    /// The body of an answer that must be 2xx, else the server's Status as an error. A 401 forgets
    /// the exec plugin's credential, so the next request runs it again (as client-go does).
    private func ok(_ r: HTTPClientResponse, _ what: String) async throws -> Data {
        if r.status == .unauthorized { execCredential.withLock { $0 = nil } }
        let body = Data(buffer: try await r.body.collect(upTo: 64 << 20))
        guard (200..<300).contains(Int(r.status.code)) else { throw Self.statusError(body, Int(r.status.code), what) }
        return body
    }

    static func statusError(_ body: Data, _ code: Int, _ what: String) -> KubeError {
        let s = try? JSONDecoder().decode(StatusObject.self, from: body)
        let message = "\(what): \(code) \(s?.reason ?? "") \(s?.message ?? String(decoding: body.prefix(200), as: UTF8.self))"
        return KubeError(code == 410 ? .expired : .status, message, httpStatus: code)
    }

    private static func path<T: KubeObject>(_ type: T.Type, namespace: String? = nil, name: String? = nil) -> String {
        "/api/v1" + (namespace.map { "/namespaces/\($0)" } ?? "") + "/\(T.resource)" + (name.map { "/\($0)" } ?? "")
    }

    /// Every object (of the whole cluster, or those `fieldSelector` picks) and the list's resourceVersion.
    public func list<T: KubeObject>(_ type: T.Type, fieldSelector: String? = nil) async throws -> (items: [T], resourceVersion: String) {
        let r = try request(Self.path(type), query: fieldSelector.map { [("fieldSelector", $0)] } ?? [])
        let body = try await ok(try await execute(r), "list \(T.resource)")
        do {
            let list = try JSONDecoder().decode(ObjectList<T>.self, from: body)
            return (list.items, list.metadata?.resourceVersion ?? "")
        } catch { throw KubeError(.decode, "list \(T.resource): \(error)") }
    }

    /// One object, nil when it does not exist.
    public func get<T: KubeObject>(_ type: T.Type, namespace: String?, name: String) async throws -> T? {
        let response = try await execute(try request(Self.path(type, namespace: namespace, name: name)))
        if response.status == .notFound { return nil }
        let body = try await ok(response, "get \(T.resource) \(name)")
        do { return try JSONDecoder().decode(T.self, from: body) } catch { throw KubeError(.decode, "get \(name): \(error)") }
    }

    /// A JSON merge patch of a pod's status subresource (where Istio writes its annotation).
    public func patchPodStatus(namespace: String, name: String, _ patch: Data) async throws {
        let r = try request(Self.path(Pod.self, namespace: namespace, name: name) + "/status", method: .PATCH, body: patch,
                            contentType: "application/merge-patch+json")
        _ = try await ok(try await execute(r), "patch pods/status \(namespace)/\(name)")
    }

    /// The changes after `resourceVersion`, with bookmarks, until the server ends the watch (after
    /// about `timeoutSeconds`). A resourceVersion the server no longer has throws `.expired`.
    public func watch<T: KubeObject>(_ type: T.Type, fieldSelector: String? = nil, from resourceVersion: String,
                                     timeoutSeconds: Int = 300) -> AsyncThrowingStream<WatchEvent<T>, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    var query = [("watch", "1"), ("allowWatchBookmarks", "true"), ("resourceVersion", resourceVersion),
                                 ("timeoutSeconds", "\(timeoutSeconds)")]
                    if let fieldSelector { query.append(("fieldSelector", fieldSelector)) }
                    let response = try await execute(try request(Self.path(type), query: query), timeout: .seconds(Int64(timeoutSeconds) + 30))
                    guard response.status == .ok else { _ = try await ok(response, "watch \(T.resource)"); return continuation.finish() }
                    var pending = Data()
                    for try await chunk in response.body {
                        pending.append(contentsOf: chunk.readableBytesView)
                        while let nl = pending.firstIndex(of: 0x0a) {
                            let line = pending[pending.startIndex..<nl]
                            pending.removeSubrange(pending.startIndex...nl)
                            if let e = try Self.event(T.self, Data(line)) { continuation.yield(e) }
                        }
                    }
                    continuation.finish()
                } catch { continuation.finish(throwing: error) }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Decodes one watch line; nil for an empty one.
    static func event<T: KubeObject>(_ type: T.Type, _ line: Data) throws -> WatchEvent<T>? {
        guard line.contains(where: { $0 != 0x20 && $0 != 0x0d }) else { return nil }
        let d = JSONDecoder()
        do {
            switch try d.decode(WatchEventType.self, from: line).type {
            case "ADDED", "MODIFIED": return .upserted(try d.decode(TypedWatchEvent<T>.self, from: line).object)
            case "DELETED": return .deleted(try d.decode(TypedWatchEvent<T>.self, from: line).object)
            case "BOOKMARK": return .bookmark(try d.decode(TypedWatchEvent<Bookmark>.self, from: line).object.metadata.resourceVersion ?? "")
            case "ERROR":
                let s = try d.decode(TypedWatchEvent<StatusObject>.self, from: line).object
                throw KubeError(s.code == 410 ? .expired : .status, "watch \(T.resource): \(s.code ?? 0) \(s.reason ?? "") \(s.message ?? "")", httpStatus: s.code)
            case let other: throw KubeError(.decode, "watch \(T.resource): unknown event type \(other)")
            }
        } catch let e as KubeError { throw e } catch {
            throw KubeError(.decode, "watch \(T.resource): \(error)")
        }
    }
}

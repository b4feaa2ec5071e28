import Foundation
import SystemCalls
import Yams

/// Where the API server is and how to prove who we are: a bearer token (re-read from its file on
/// every request, since a projected service-account token rotates) and the CA that signed the
/// server's certificate.
public struct KubeConfig: Sendable, Equatable {
    /// Base URL, e.g. https://10.96.0.1:443.
    public var server: String
    /// The CA bundle (PEM); nil: the system's roots.
    public var certificateAuthority: [UInt8]?
    /// A fixed token.
    public var token: String?
    /// A file the token is read from on each request.
    public var tokenFile: String?
    /// Skip verifying the server's certificate (kubeconfig `insecure-skip-tls-verify`).
    public var insecure = false
    /// A client certificate (PEM) to present, with ``clientKey``.
    public var clientCertificate: [UInt8]?
    /// The client certificate's private key (PEM).
    public var clientKey: [UInt8]?
    /// A credential plugin that prints a token (kubeconfig `exec`, as cloud providers ship them).
    public var exec: ExecPlugin?

    /// Creates a config.
    public init(server: String, certificateAuthority: [UInt8]? = nil, token: String? = nil, tokenFile: String? = nil) {
        self.server = server; self.certificateAuthority = certificateAuthority; self.token = token; self.tokenFile = tokenFile
    }

    /// The token to send now.
    public func currentToken() throws -> String? {
        if let tokenFile { return try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
        return token
    }

    /// Inside a pod: KUBERNETES_SERVICE_HOST/PORT and the mounted service account.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = "/var/run/secrets/kubernetes.io/serviceaccount") throws -> KubeConfig {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"] else {
            throw KubeError(.config, "not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
        }
        let ca = FileManager.default.contents(atPath: "\(directory)/ca.crt").map { [UInt8]($0) }
        guard ca != nil else { throw KubeError(.config, "no CA bundle at \(directory)/ca.crt") }
        let h = host.contains(":") ? "[\(host)]" : host
        return KubeConfig(server: "https://\(h):\(port)", certificateAuthority: ca, tokenFile: "\(directory)/token")
    }

    /// The current context of a kubeconfig file: its cluster's server and CA, and its user's
    /// credentials: a token or token file, a client certificate and key (files or inline data), or
    /// an exec plugin (relative paths are relative to the kubeconfig's folder, as kubectl reads them).
    public static func file(_ path: String) throws -> KubeConfig {
        guard let data = FileManager.default.contents(atPath: path) else { throw KubeError(.config, "cannot read kubeconfig \(path)") }
        guard let doc = try Yams.load(yaml: String(decoding: data, as: UTF8.self)) as? [String: Any] else {
            throw KubeError(.config, "kubeconfig \(path) is not a YAML map")
        }
        func named(_ key: String, _ name: String?) -> [String: Any]? {
            (doc[key] as? [[String: Any]])?.first { $0["name"] as? String == name }
        }
        let contextName = doc["current-context"] as? String
        guard let context = named("contexts", contextName)?["context"] as? [String: Any] else {
            throw KubeError(.config, "kubeconfig \(path): no context '\(contextName ?? "")'")
        }
        guard let cluster = named("clusters", context["cluster"] as? String)?["cluster"] as? [String: Any],
              let server = cluster["server"] as? String else {
            throw KubeError(.config, "kubeconfig \(path): the context's cluster has no server")
        }
        let user = named("users", context["user"] as? String)?["user"] as? [String: Any] ?? [:]
        let folder = (path as NSString).deletingLastPathComponent
        func bytes(_ fileKey: String, _ dataKey: String, in map: [String: Any]) throws -> [UInt8]? {
            if let file = map[fileKey] as? String {
                let full = file.hasPrefix("/") ? file : "\(folder)/\(file)"
                guard let d = FileManager.default.contents(atPath: full) else { throw KubeError(.config, "kubeconfig \(path): cannot read \(fileKey) \(full)") }
                return [UInt8](d)
            }
            guard let text = map[dataKey] as? String else { return nil }
            guard let d = Data(base64Encoded: text) else { throw KubeError(.config, "kubeconfig \(path): \(dataKey) is not base64") }
            return [UInt8](d)
        }
        let tokenFile = (user["tokenFile"] as? String).map { $0.hasPrefix("/") ? $0 : "\(folder)/\($0)" }
        var c = KubeConfig(server: server, token: user["token"] as? String, tokenFile: tokenFile)
        c.certificateAuthority = try bytes("certificate-authority", "certificate-authority-data", in: cluster)
        c.insecure = cluster["insecure-skip-tls-verify"] as? Bool ?? false
        c.clientCertificate = try bytes("client-certificate", "client-certificate-data", in: user)
        c.clientKey = try bytes("client-key", "client-key-data", in: user)
        if (c.clientCertificate == nil) != (c.clientKey == nil) {
            throw KubeError(.config, "kubeconfig \(path): a client certificate needs its key, and a key its certificate")
        }
        if let exec = user["exec"] as? [String: Any] { c.exec = try ExecPlugin(exec, folder: folder, kubeconfig: path) }
        return c
    }
}

/// A kubeconfig credential plugin (`users[].user.exec`, client.authentication.k8s.io): a command
/// that prints an ExecCredential whose status carries a token and, optionally, when it expires.
public struct ExecPlugin: Sendable, Equatable {
    /// The ExecCredential API version it speaks.
    public var apiVersion: String
    /// The command (a bare name is looked up in PATH; a relative path is relative to the kubeconfig).
    public var command: String
    /// Its arguments.
    public var args: [String]
    /// Extra environment.
    public var env: [String: String]

    /// Reads the `exec` map of a kubeconfig user.
    init(_ map: [String: Any], folder: String, kubeconfig path: String) throws {
        guard let command = map["command"] as? String, !command.isEmpty else { throw KubeError(.config, "kubeconfig \(path): exec has no command") }
        self.apiVersion = map["apiVersion"] as? String ?? "client.authentication.k8s.io/v1"
        self.command = command.contains("/") && !command.hasPrefix("/") ? "\(folder)/\(command)" : command
        self.args = map["args"] as? [String] ?? []
        var env: [String: String] = [:]
        for e in map["env"] as? [[String: Any]] ?? [] {
            if let n = e["name"] as? String, let v = e["value"] as? String { env[n] = v }
        }
        self.env = env
    }

    /// A credential the plugin printed.
    public struct Credential: Sendable, Equatable {
        /// The bearer token.
        public var token: String
        /// When it expires (nil: until the server refuses it).
        public var expires: Date?
    }

    /// Runs the plugin, as kubectl does (KUBERNETES_EXEC_INFO says what is asked, not interactively);
    /// one that runs longer than `timeout` seconds is killed.
    public func run(timeout: Double = 30) throws -> Credential {
        let info = #"{"apiVersion":"\#(apiVersion)","kind":"ExecCredential","spec":{"interactive":false}}"#
        let environment = ProcessInfo.processInfo.environment.merging(env) { $1 }.merging(["KUBERNETES_EXEC_INFO": info]) { $1 }
        let r: CommandResult
        do { r = try Command.capture(command, args, environment: environment, timeout: timeout) } catch {
            throw KubeError(.config, "exec plugin \(command): \(error)")
        }
        guard r.status == 0 else { throw KubeError(.config, "exec plugin \(command) exited with \(r.status): \(r.stderr.prefix(300))") }
        return try Self.credential(from: Data(r.stdout.utf8), command: command)
    }

    /// The token and expiry of an ExecCredential document.
    static func credential(from data: Data, command: String) throws -> Credential {
        struct Doc: Decodable {
            struct Status: Decodable { var token: String?; var expirationTimestamp: String?; var clientCertificateData: String? }
            var kind: String?
            var status: Status?
        }
        guard let doc = try? JSONDecoder().decode(Doc.self, from: data), doc.kind == "ExecCredential", let status = doc.status else {
            throw KubeError(.decode, "exec plugin \(command) printed no ExecCredential")
        }
        guard let token = status.token, !token.isEmpty else {
            let why = status.clientCertificateData != nil ? "client certificates from exec plugins are not supported" : "no token in its status"
            throw KubeError(.config, "exec plugin \(command): \(why)")
        }
        let expires = try status.expirationTimestamp.map { text -> Date in
            guard let d = ISO8601DateFormatter().date(from: text) else { throw KubeError(.decode, "exec plugin \(command): bad expirationTimestamp \(text)") }
            return d
        }
        return Credential(token: token, expires: expires)
    }
}

/// A Kubernetes API failure.
public struct KubeError: Error, CustomStringConvertible, Sendable {
    /// Stable codes.
    public enum Code: String, Sendable { case config, transport, status, decode, expired }
    /// The code.
    public var code: Code
    /// The message.
    public var message: String
    /// The HTTP status, when the server answered.
    public var httpStatus: Int?
    /// Creates an error.
    public init(_ code: Code, _ message: String, httpStatus: Int? = nil) { self.code = code; self.message = message; self.httpStatus = httpStatus }
    /// One line.
    public var description: String { "\(code.rawValue): \(message)" }
}

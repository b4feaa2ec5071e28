import Foundation
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

    /// The current context of a kubeconfig file: its cluster's server and CA, its user's token.
    /// Client certificates and exec plugins are not supported (the error says so).
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
        if user["client-certificate"] != nil || user["client-certificate-data"] != nil || user["exec"] != nil {
            throw KubeError(.config, "kubeconfig \(path): only token users are supported (not client certificates or exec plugins)")
        }
        var c = KubeConfig(server: server, token: user["token"] as? String, tokenFile: user["tokenFile"] as? String)
        if let caFile = cluster["certificate-authority"] as? String {
            guard let ca = FileManager.default.contents(atPath: caFile) else { throw KubeError(.config, "cannot read CA \(caFile)") }
            c.certificateAuthority = [UInt8](ca)
        } else if let caData = cluster["certificate-authority-data"] as? String {
            guard let ca = Data(base64Encoded: caData) else { throw KubeError(.config, "kubeconfig \(path): certificate-authority-data is not base64") }
            c.certificateAuthority = [UInt8](ca)
        }
        c.insecure = cluster["insecure-skip-tls-verify"] as? Bool ?? false
        return c
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

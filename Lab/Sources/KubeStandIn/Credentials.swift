import Foundation
import SystemCalls

/// What a client needs to reach the stand-in: a CA, the server's certificate for 127.0.0.1 signed
/// by it, a bearer token, and a kubeconfig naming them, written into a private directory.
public struct Credentials: Sendable {
    /// The directory.
    public var directory: String
    /// The CA certificate (PEM).
    public var caFile: String { "\(directory)/ca.crt" }
    /// The server certificate (PEM).
    public var certificateFile: String { "\(directory)/server.crt" }
    /// Its key.
    public var keyFile: String { "\(directory)/server.key" }
    /// The token file (as a service account's is mounted).
    public var tokenFile: String { "\(directory)/token" }
    /// The kubeconfig.
    public var kubeconfig: String { "\(directory)/kubeconfig" }
    /// The token.
    public var token: String

    /// Makes a CA and a server certificate for `hosts` (IP addresses) with openssl, and a random token.
    public static func make(in directory: String, hosts: [String] = ["127.0.0.1"]) throws -> Credentials {
        try PrivateDirectory.prepare(directory)
        let c = Credentials(directory: directory, token: UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""))
        let days = ["-days", "2"]
        _ = try Command.run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(directory)/ca.key",
                                        "-out", c.caFile, "-subj", "/CN=redirect-lab-ca"] + days)
        _ = try Command.run("openssl", ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", c.keyFile,
                                        "-out", "\(directory)/server.csr", "-subj", "/CN=kube-apiserver"])
        let names = (hosts.map { "IP:\($0)" } + ["DNS:localhost"]).joined(separator: ",")
        try "subjectAltName=\(names)\nextendedKeyUsage=serverAuth\n".write(toFile: "\(directory)/ext", atomically: true, encoding: .utf8)
        _ = try Command.run("openssl", ["x509", "-req", "-in", "\(directory)/server.csr", "-CA", c.caFile, "-CAkey", "\(directory)/ca.key",
                                        "-CAcreateserial", "-out", c.certificateFile, "-extfile", "\(directory)/ext"] + days)
        try c.token.write(toFile: c.tokenFile, atomically: true, encoding: .utf8)
        return c
    }

    /// Writes the kubeconfig for the server at `url` (to ``kubeconfig`` unless another path is given).
    public func writeKubeconfig(server url: String, to path: String? = nil) throws {
        let text = """
        apiVersion: v1
        kind: Config
        clusters:
        - name: lab
          cluster:
            server: \(url)
            certificate-authority: \(caFile)
        users:
        - name: lab
          user:
            token: \(token)
        contexts:
        - name: lab
          context:
            cluster: lab
            user: lab
        current-context: lab

        """
        try text.write(toFile: path ?? kubeconfig, atomically: true, encoding: .utf8)
    }
}

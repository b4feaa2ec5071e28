import Foundation
import Glibc
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
        try c.sign(name: "client", subject: "/O=system:nodes/CN=system:node:lab", extensions: "extendedKeyUsage=clientAuth\n")
        return c
    }

    /// A client certificate the CA signed, as a node's kubelet credentials are.
    public var clientCertificateFile: String { "\(directory)/client.crt" }
    /// Its key.
    public var clientKeyFile: String { "\(directory)/client.key" }

    /// Makes `<name>.key` and `<name>.crt`, signed by the CA.
    private func sign(name: String, subject: String, extensions: String) throws {
        _ = try Command.run("openssl", ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(directory)/\(name).key",
                                        "-out", "\(directory)/\(name).csr", "-subj", subject])
        try extensions.write(toFile: "\(directory)/\(name).ext", atomically: true, encoding: .utf8)
        _ = try Command.run("openssl", ["x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", caFile, "-CAkey", "\(directory)/ca.key",
                                        "-CAcreateserial", "-out", "\(directory)/\(name).crt", "-extfile", "\(directory)/\(name).ext", "-days", "2"])
    }

    /// How a kubeconfig's user proves who it is.
    public enum User: Sendable {
        /// The bearer token, inline.
        case token
        /// The client certificate and key, by path.
        case clientCertificate
        /// The client certificate and key, inline (base64 data).
        case clientCertificateData
        /// An exec plugin: `command` prints an ExecCredential with the token.
        case exec(command: String)
    }

    /// Writes a credential plugin at `path` that prints an ExecCredential with the token, valid for an hour.
    public func writeExecPlugin(to path: String) throws {
        let script = """
        #!/bin/sh
        # A kubeconfig credential plugin, as cloud providers ship them: prints an ExecCredential.
        echo "$KUBERNETES_EXEC_INFO" | grep -q '"kind":"ExecCredential"' || { echo "no KUBERNETES_EXEC_INFO" >&2; exit 1; }
        expiry=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)
        printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s","expirationTimestamp":"%s"}}\\n' "$(cat \(tokenFile))" "$expiry"

        """
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        guard chmod(path, 0o700) == 0 else { throw SystemError("chmod \(path)", code: errno) }
    }

    /// Writes the kubeconfig for the server at `url` (to ``kubeconfig`` unless another path is given),
    /// with `user`'s kind of credentials.
    public func writeKubeconfig(server url: String, to path: String? = nil, user: User = .token) throws {
        func base64(_ file: String) throws -> String { try Data(contentsOf: URL(fileURLWithPath: file)).base64EncodedString() }
        let credentials: String
        switch user {
        case .token: credentials = "token: \(token)"
        case .clientCertificate: credentials = "client-certificate: \(clientCertificateFile)\n    client-key: \(clientKeyFile)"
        case .clientCertificateData:
            credentials = "client-certificate-data: \(try base64(clientCertificateFile))\n    client-key-data: \(try base64(clientKeyFile))"
        case .exec(let command):
            credentials = "exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: \(command)\n      interactiveMode: Never\n      provideClusterInfo: false"
        }
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
            \(credentials)
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

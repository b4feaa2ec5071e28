import CShim
import Glibc

/// A libbpf or bpf(2) operation failed: which one, on what, and the errno.
public struct BPFError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What was being done, e.g. `load redirect.bpf.o` or `tc attach tc_pod_egress on ifindex 2`.
    public var operation: String
    /// The errno (positive).
    public var code: Int32

    /// Creates an error.
    public init(_ operation: String, code: Int32) {
        self.operation = operation
        self.code = abs(code)
    }

    /// The operation, strerror and errno.
    public var description: String { "\(operation): \(String(cString: strerror(code))) (errno \(code))" }
}

/// libbpf returns negative errno (or a NULL pointer with errno set): one place turns that into ``BPFError``.
@discardableResult
func bpfCheck(_ operation: @autoclosure () -> String, _ result: Int32) throws -> Int32 {
    if result < 0 {
        let code = result == -1 ? cshim_errno() : -result
        throw BPFError(operation(), code: code)
    }
    return result
}

/// Like ``bpfCheck(_:_:)`` for calls where ENOENT means "not there": false then, true on success.
func bpfFound(_ operation: @autoclosure () -> String, _ result: Int32) throws -> Bool {
    if result < 0 {
        let code = result == -1 ? cshim_errno() : -result
        if code == ENOENT { return false }
        throw BPFError(operation(), code: code)
    }
    return true
}

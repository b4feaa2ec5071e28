import CShim
import Glibc

/// A failed system call: the operation that failed and the errno it returned.
///
/// This is the one place errno becomes a Swift error; every wrapper in this module goes through
/// ``retryingEINTR(_:_:)`` or ``check(_:_:)``.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What was being done, e.g. `connect 10.0.0.1:80`.
    public var operation: String
    /// The errno value.
    public var code: Int32

    /// Creates an error for `operation` with `code`.
    public init(_ operation: String, code: Int32) {
        self.operation = operation
        self.code = code
    }

    /// Human-readable: the operation, strerror and the errno number.
    public var description: String {
        "\(operation): \(String(cString: strerror(code))) (errno \(code))"
    }
}

/// Runs `body` until it returns something other than -1/EINTR; throws ``SystemError`` on -1.
@discardableResult
public func retryingEINTR<T: BinaryInteger>(_ operation: @autoclosure () -> String, _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = cshim_errno()
        if code == EINTR { continue }
        throw SystemError(operation(), code: code)
    }
}

/// Throws ``SystemError`` with the current errno if `result` is -1.
@discardableResult
public func check<T: BinaryInteger>(_ operation: @autoclosure () -> String, _ result: T) throws -> T {
    if result == -1 { throw SystemError(operation(), code: cshim_errno()) }
    return result
}

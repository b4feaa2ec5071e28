import Foundation
import Synchronization

/// Runs blocking work on a thread of its own, never on Swift concurrency's shared pool: namespace
/// switches (setns), blocking reads and waits belong there.
public enum DedicatedThread {
    /// Runs `body` on a new thread and waits for its result on the calling thread.
    public static func run<T: Sendable>(stackSize: Int = 1 << 20, _ body: @escaping @Sendable () throws -> T) throws -> T {
        let slot = ResultSlot<Result<T, any Error>>()
        let thread = Thread {
            slot.fill(Result { try body() })
        }
        thread.stackSize = stackSize
        thread.start()
        return try slot.wait().get()
    }

    /// Starts `body` on a new, detached thread and returns at once.
    public static func detach(name: String? = nil, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        if let name { thread.name = name }
        thread.start()
    }
}

/// A value handed from one thread to another exactly once.
public final class ResultSlot<T: Sendable>: Sendable {
    private let value = Mutex<T?>(nil)
    private let ready = DispatchSemaphore(value: 0)

    /// Creates an empty slot.
    public init() {}

    /// Stores the value and wakes the waiter.
    public func fill(_ v: T) {
        value.withLock { $0 = v }
        ready.signal()
    }

    /// Blocks until the value is there.
    public func wait() -> T {
        ready.wait()
        return value.withLock { $0! }
    }

    /// Blocks until the value is there or `timeout` seconds have passed (nil).
    public func wait(timeout: Double) -> T? {
        guard ready.wait(timeout: .now() + timeout) == .success else { return nil }
        return value.withLock { $0 }
    }
}

import CShim
import Foundation
import Glibc
import SystemCalls

/// Moves bytes both ways between two connected sockets with splice(2) (no copy through user
/// space), half-closing each side as its peer finishes.
public enum Relay {
    /// Relays until both directions are done, then closes both sockets. Blocks the caller.
    public static func run(_ a: Socket, _ b: Socket) {
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            pump(from: a, to: b)
            done.signal()
        }
        t.stackSize = 256 * 1024
        t.start()
        pump(from: b, to: a)
        done.wait()
        a.close()
        b.close()
    }

    /// One direction: socket -> pipe -> socket until EOF or error, then shutdown(SHUT_WR) of `to`.
    static func pump(from: Socket, to: Socket) {
        var fds: [Int32] = [-1, -1]
        guard cshim_pipe_cloexec(&fds) == 0 else { copyLoop(from: from, to: to); return }
        defer { close(fds[0]); close(fds[1]) }
        _ = cshim_set_pipe_size(fds[1], 1 << 20)
        outer: while true {
            let n = cshim_splice(from.fd, fds[1], 1 << 20)
            if n < 0 && cshim_errno() == EINTR { continue }
            if n <= 0 { break }
            var left = n
            while left > 0 {
                let m = cshim_splice(fds[0], to.fd, left)
                if m < 0 && cshim_errno() == EINTR { continue }
                if m <= 0 { break outer }
                left -= m
            }
        }
        to.shutdownWrite()
    }

    /// Fallback without a pipe: read/write loop.
    static func copyLoop(from: Socket, to: Socket) {
        while let chunk = try? from.read(max: 1 << 16), !chunk.isEmpty {
            if (try? to.writeAll(chunk)) == nil { break }
        }
        to.shutdownWrite()
    }
}

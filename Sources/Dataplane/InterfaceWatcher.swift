import CShim
import Foundation
import Glibc
import Synchronization
import SystemCalls

/// Watches the network namespaces of enrolled pods for interfaces and addresses that appear after
/// enrolment (a meta plugin's net1, a hot-plugged device) and reports each pod whose links or
/// addresses changed, so its capture can be attached there too. One netlink socket per pod, bound to the pod's namespace
/// when opened; one dedicated thread polls them all, and exits when no pod is watched.
final class InterfaceWatcher: Sendable {
    private struct Watched { var fd: Int32; var pod: PodSpec }
    private struct State {
        var watched: [String: Watched] = [:]
        var closing: [Int32] = []     // closed by the poll thread, so no fd is reused under its poll
        var wake: (read: Int32, write: Int32)?
    }
    private let state = Mutex(State())
    private let handler = Mutex<(@Sendable (PodSpec) -> Void)?>(nil)

    init() {}

    /// `body` runs on the watcher's thread for a pod whose namespace gained or changed a link.
    func onChange(_ body: @escaping @Sendable (PodSpec) -> Void) { handler.withLock { $0 = body } }

    /// Whether `uid` is watched.
    func isWatched(_ uid: String) -> Bool { state.withLock { $0.watched[uid] != nil } }

    /// Starts watching `pod`'s namespace (replacing an earlier watch of the same UID). Call
    /// before attaching, so no interface can appear unseen in between.
    func watch(_ pod: PodSpec) throws {
        let fd = try NetworkNamespace(path: pod.netns).run { try Netlink.eventSocket() }
        var fds: [Int32] = [0, 0]
        let start = try state.withLock { s -> Bool in
            if let old = s.watched[pod.uid] { s.closing.append(old.fd) }
            s.watched[pod.uid] = Watched(fd: fd, pod: pod)
            guard s.wake == nil else { return false }
            try check("pipe2", cshim_pipe_cloexec(&fds))
            // Pokes never block (they run under the lock); a full pipe already means "look again".
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
            s.wake = (fds[0], fds[1])
            return true
        }
        if start {
            let wakeRead = fds[0]
            let t = Thread { [self] in run(wakeRead: wakeRead) }
            t.name = "interface-watcher"
            t.start()
        } else {
            poke()
        }
    }

    /// Stops watching the pod (no-op for an unknown UID).
    func unwatch(uid: String) {
        state.withLock { s in
            if let old = s.watched.removeValue(forKey: uid) { s.closing.append(old.fd) }
        }
        poke()
    }

    /// Wakes the poll thread (under the lock: the thread closes the pipe under it when it exits).
    private func poke() {
        state.withLock { s in
            guard let w = s.wake?.write else { return }
            var one: UInt8 = 1
            _ = write(w, &one, 1)
        }
    }

    private func run(wakeRead: Int32) {
        while true {
            let snapshot = state.withLock { s -> [Watched]? in
                for fd in s.closing { close(fd) }
                s.closing = []
                if s.watched.isEmpty, let w = s.wake {
                    close(w.read); close(w.write)
                    s.wake = nil
                    return nil
                }
                return Array(s.watched.values)
            }
            guard let watched = snapshot else { return }
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
                + watched.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            _ = try? retryingEINTR("poll link events") { poll(&fds, nfds_t(fds.count), -1) }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(wakeRead, &drain, drain.count)
            }
            for (i, w) in watched.enumerated() where fds[i + 1].revents != 0 {
                if Netlink.drainEvents(w.fd), let body = handler.withLock({ $0 }) { body(w.pod) }
            }
        }
    }
}

import Foundation
import Glibc

/// Exits the process when its parent goes away, so a crashed lab or test leaves no helper behind.
/// (PR_SET_PDEATHSIG fires when the parent *thread* exits, which is too early for children
/// started from short-lived threads; polling getppid is reliable.)
public enum ParentWatch {
    /// Starts the watch on a background thread.
    public static func start() {
        let parent = getppid()
        Thread {
            while true {
                usleep(300_000)
                if getppid() != parent { exit(0) }
            }
        }.start()
    }
}

/// Restores default SIGTERM/SIGINT handling and an empty signal mask. A child inherits ignored
/// dispositions and blocked signals across exec (a test runner may have either), which would make
/// it deaf to a polite stop.
public func resetSignalHandling() {
    signal(SIGTERM, SIG_DFL)
    signal(SIGINT, SIG_DFL)
    var empty = sigset_t()
    sigemptyset(&empty)
    sigprocmask(SIG_SETMASK, &empty, nil)
}

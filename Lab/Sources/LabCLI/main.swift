import ArgumentParser
import Dispatch
import Foundation
import Glibc
import NodeLab
import SystemCalls

/// `redirect-lab`: the local node lab (real CNI pods, stand-in mesh proxy, kubelet probes).
struct RedirectLab: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redirect-lab",
        abstract: "A local node lab: nodes and pods as network namespaces wired by the real CNI plugins.",
        subcommands: [Demo.self, Up.self, LabStatus.self, Exec.self, Down.self, Bench.self, Cleanup.self, Keep.self])
}

/// Tears the lab down on SIGINT/SIGTERM, then exits.
func tearDownOnSignal(_ lab: Lab) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler {
            FileHandle.standardError.write(Data("\ninterrupted: tearing the lab down\n".utf8))
            lab.teardown()
            exit(130)
        }
        src.resume()
        return src
    }
}

struct Cleanup: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove whatever crashed labs left behind (namespaces named ra<hex>-*, /run/redirect-lab).")
    func run() throws {
        if let kept = KeptLab.read(), kept.isRunning { kill(kept.pid, SIGKILL) } // its command line names no run folder
        Lab.sweep()
    }
}

signal(SIGPIPE, SIG_IGN)
RedirectLab.main()

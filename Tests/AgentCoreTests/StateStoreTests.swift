import AgentCore
import Dataplane
import Foundation
import Glibc
import SystemCalls
import Testing

/// The state file and its journal, on a real file system: what a save writes, what a later
/// process reads back, and what a crash at any point leaves.
@Suite("state store: snapshot and journal")
struct StateStoreTests {
    func withDirectory(_ body: (String) throws -> Void) throws {
        let dir = NSTemporaryDirectory() + "ra-state-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try body("\(dir)/state.json")
    }

    func pod(_ n: Int) -> EnrolledPod {
        let spec = PodSpec(uid: "uid-\(n)", name: "pod-\(n)", namespace: "ns", netns: "/run/netns/p\(n)",
                           ips: [IPAddress("10.1.\(n / 250).\(n % 250 + 1)")!])
        return EnrolledPod(spec: spec, enrolledAt: Date(timeIntervalSince1970: Double(n)), netnsID: "id-\(n)")
    }

    /// A snapshot of the empty state, then one journal line per pod of `numbers` added; the state saved last.
    func enrolOneByOne(_ store: StateStore, _ numbers: [Int]) throws -> AgentState {
        var state = AgentState()
        try store.save(state)
        for n in numbers {
            state.pods["uid-\(n)"] = pod(n)
            try store.save(state)
        }
        return state
    }

    func lines(_ path: String) -> Int {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    @Test("each save after the first appends one line; another process reads the same state; its first save folds the journal in")
    func journalRoundTrip() throws {
        try withDirectory { path in
            let store = StateStore(path: path)
            var state = AgentState()
            state.dataplane = .ebpf
            try store.save(state) // the process's first save: a snapshot
            let snapshot = try Data(contentsOf: URL(fileURLWithPath: path))
            for n in 0..<50 {
                state.pending["uid-\(n)"] = PendingOperation(op: "add", spec: pod(n).spec)
                try store.save(state)
                state.pending["uid-\(n)"] = nil
                state.pods["uid-\(n)"] = pod(n)
                try store.save(state)
            }
            state.pods["uid-7"] = nil
            state.known["uid-99"] = pod(99).spec
            state.probeIPv4 = "169.254.7.1"
            try store.save(state)
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == snapshot, "the snapshot is not rewritten per save")
            #expect(lines(store.journalPath) == 101)
            #expect(try StateStore(path: path).load() == state)

            let next = StateStore(path: path)
            state.pods["uid-8"] = nil
            try next.save(state)
            #expect(lines(next.journalPath) == 0, "a new process starts from a new snapshot")
            #expect(try StateStore(path: path).load() == state)
            let mode = (try FileManager.default.attributesOfItem(atPath: next.journalPath))[.posixPermissions] as? Int
            #expect(mode == 0o600)
        }
    }

    @Test("a torn last line (a crash mid-append) is ignored: the state is the one before it")
    func tornLine() throws {
        try withDirectory { path in
            let store = StateStore(path: path)
            let before = try enrolOneByOne(store, [1])
            var state = before
            state.pods["uid-2"] = pod(2)
            try store.save(state)
            let text = try String(contentsOfFile: store.journalPath, encoding: .utf8)
            let torn = String(text.dropLast(40)) // the second line cut short, no newline
            try torn.write(toFile: store.journalPath, atomically: false, encoding: .utf8)
            #expect(try StateStore(path: path).load() == before)
        }
    }

    @Test("lines a newer snapshot already holds (a crash before the journal was emptied) are skipped")
    func staleLines() throws {
        try withDirectory { path in
            let store = StateStore(path: path, compactAfter: 2)
            var state = AgentState()
            try store.save(state)
            state.pods["uid-9"] = pod(9)
            try store.save(state) // line 1: uid-9 enrolled
            let oldJournal = try Data(contentsOf: URL(fileURLWithPath: store.journalPath))
            state.pods["uid-9"] = nil
            try store.save(state) // line 2: uid-9 removed
            state.pods["uid-1"] = pod(1)
            try store.save(state) // the third since the snapshot: a new snapshot, journal emptied
            #expect(lines(store.journalPath) == 0)
            // As if the process had died between the new snapshot and emptying the journal, with
            // only its first line on disk: replayed, it would bring the removed pod back.
            try oldJournal.write(to: URL(fileURLWithPath: store.journalPath))
            #expect(try StateStore(path: path).load() == state, "older lines must not undo the snapshot")
        }
    }

    @Test("a line cut short mid-journal (a failed write) is skipped, and the lines after it still apply")
    func tornMiddleLine() throws {
        try withDirectory { path in
            let store = StateStore(path: path)
            var state = try enrolOneByOne(store, [1, 2])
            // A write of the uid-2 line that failed part-way, the journal not cut back: the next
            // (successful) save diffs from the state before it, so it carries uid-2 again.
            var text = try String(contentsOfFile: store.journalPath, encoding: .utf8)
            let lines = text.split(separator: "\n")
            text = lines[0] + "\n" + lines[1].prefix(30) + lines[1] + "\n"
            try text.write(toFile: store.journalPath, atomically: false, encoding: .utf8)
            state.pods["uid-3"] = pod(3)
            try store.save(state) // a line after it: adds uid-3 only
            var expected = AgentState()
            expected.pods["uid-1"] = pod(1)
            expected.pods["uid-3"] = pod(3)
            #expect(try StateStore(path: path).load() == expected, "the glued line is skipped; the lines around it apply")
        }
    }

    @Test("any sequence of changes reads back as the last state saved, across compactions and restarts")
    func randomChanges() throws {
        try withDirectory { path in
            var rng = SystemRandomNumberGenerator()
            var store = StateStore(path: path, compactAfter: 7)
            var state = AgentState()
            for step in 0..<400 {
                let n = Int.random(in: 0..<30, using: &rng)
                switch Int.random(in: 0..<6, using: &rng) {
                case 0: state.pods["uid-\(n)"] = pod(n)
                case 1: state.pods["uid-\(n)"] = nil
                case 2: state.pending["uid-\(n)"] = PendingOperation(op: n % 2 == 0 ? "add" : "del", spec: pod(n).spec)
                case 3: state.pending["uid-\(n)"] = nil
                case 4: state.known["uid-\(n)"] = n % 3 == 0 ? nil : pod(n).spec
                default: state.probeIPv6 = "fd00::\(n)"
                }
                try store.save(state)
                if step % 53 == 0 { store = StateStore(path: path, compactAfter: 7) } // a restart
                #expect(try StateStore(path: path).load() == state, "after step \(step)")
            }
        }
    }

    @Test("remove deletes the snapshot and the journal; a store with neither loads an empty state")
    func removeAll() throws {
        try withDirectory { path in
            let store = StateStore(path: path)
            _ = try enrolOneByOne(store, [1])
            store.remove()
            #expect(!FileManager.default.fileExists(atPath: path) && !FileManager.default.fileExists(atPath: store.journalPath))
            #expect(try store.load() == AgentState())
        }
    }
}

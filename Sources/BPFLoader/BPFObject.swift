import CShim
import Foundation
import Glibc
import Logging
import Synchronization

/// A loaded BPF object: its programs and maps, with maps pinned by name under a directory so a
/// restarted agent reuses them (same contents, same attachments).
// @unchecked: a C handle. After load it is only read (program and map lookups, no libbpf state
// changes), and it is closed once, in deinit.
public final class BPFObject: @unchecked Sendable {
    private let object: OpaquePointer
    /// The file it came from.
    public let path: String
    /// Where its maps are pinned.
    public let mapPinDirectory: String

    /// Opens `path`, loads it into the kernel; maps pin to (or are reused from) `mapPinDirectory`.
    public init(path: String, mapPinDirectory: String) throws {
        BPFLog.install()
        try FileManager.default.createDirectory(atPath: mapPinDirectory, withIntermediateDirectories: true)
        guard let obj = cshim_bpf_object_open(path, mapPinDirectory) else {
            throw BPFError("open \(path)", code: cshim_errno() == 0 ? ENOENT : cshim_errno())
        }
        Self.prepareNetfilterPrograms(obj)
        Self.prepareLSMPrograms(obj)
        let err = bpf_object__load(obj)
        if err < 0 {
            bpf_object__close(obj)
            throw BPFError("load \(path) (maps in \(mapPinDirectory))", code: -err)
        }
        self.object = obj
        self.path = path
        self.mapPinDirectory = mapPinDirectory
    }

    /// Whether the kernel loads netfilter programs (Linux 6.4+), probed once.
    public static let netfilterProgramsSupported: Bool = cshim_probe_netfilter_program() == 0

    /// libbpf 1.1 cannot tell a "netfilter" section's type: set it, or leave the program out
    /// where the kernel has no such programs (the rest of the object still loads).
    private static func prepareNetfilterPrograms(_ obj: OpaquePointer) {
        for (p, section) in programs(of: obj) where section == "netfilter" {
            if !netfilterProgramsSupported || cshim_program_set_netfilter(p) != 0 { bpf_program__set_autoload(p, false) }
        }
    }

    /// The object's programs, each with its section name.
    private static func programs(of obj: OpaquePointer) -> [(OpaquePointer, String)] {
        var out: [(OpaquePointer, String)] = []
        var prog = bpf_object__next_program(obj, nil)
        while let p = prog {
            out.append((p, bpf_program__section_name(p).map { String(cString: $0) } ?? ""))
            prog = bpf_object__next_program(obj, p)
        }
        return out
    }

    /// Whether the kernel loads the "lsm/" programs (CONFIG_BPF_LSM, and nothing such as a lockdown
    /// policy refusing BPF tracing programs), probed once: 0, or why not. Whether the kernel then
    /// calls them (bpf in its lsm= list) shows only once they are attached.
    public static let lsmProbe: Int32 = cshim_probe_lsm_program()

    /// Whether the kernel loads the "lsm/" programs.
    public static var lsmProgramsSupported: Bool { lsmProbe == 0 }

    /// Leaves the "lsm/" programs out where the kernel cannot load them (the rest still loads).
    private static func prepareLSMPrograms(_ obj: OpaquePointer) {
        guard !lsmProgramsSupported else { return }
        for (p, section) in programs(of: obj) where section.hasPrefix("lsm/") { bpf_program__set_autoload(p, false) }
    }

    /// Whether the program named `name` was loaded (a netfilter program is left out on kernels
    /// before 6.4).
    public func isLoaded(_ name: String) -> Bool {
        guard let p = bpf_object__find_program_by_name(object, name) else { return false }
        return bpf_program__fd(p) >= 0
    }

    deinit {
        for fd in retained.withLock({ $0 }) { close(fd) }
        bpf_object__close(object)
    }

    /// The program named `name` (its function name in the C source).
    public func program(_ name: String) throws -> BPFProgram {
        guard let p = bpf_object__find_program_by_name(object, name) else { throw BPFError("find program \(name)", code: ENOENT) }
        return BPFProgram(name: name, fd: bpf_program__fd(p))
    }

    /// The map named `name`.
    public func map(_ name: String) throws -> BPFMap {
        guard let m = bpf_object__find_map_by_name(object, name) else { throw BPFError("find map \(name)", code: ENOENT) }
        return BPFMap(name: name, fd: bpf_map__fd(m), owned: false)
    }

    /// Pins the programs under `directory` and returns the ones to attach. A pinned program with
    /// the same tag (same instructions, same maps) is reused, so a restarted agent finds its
    /// attachments already current and changes nothing; a different one (an upgrade) is replaced.
    /// `removingOthers`: pins of programs not named (ones an older version had) are removed.
    public func pinnedPrograms(in directory: String, names: [String], removingOthers: Bool = false) throws -> [String: BPFProgram] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var out: [String: BPFProgram] = [:]
        for name in names {
            let fresh = try program(name)
            let pin = "\(directory)/\(name)"
            let old = FileManager.default.fileExists(atPath: pin) ? bpf_obj_get(pin) : -1
            if old >= 0, let a = try? BPFProgram(name: name, fd: old).tag(), a == (try fresh.tag()) {
                out[name] = BPFProgram(name: name, fd: old)
                retained.withLock { $0.append(old) } // kept open for the object's lifetime
                continue
            }
            if old >= 0 { close(old) }
            unlink(pin)
            try bpfCheck("pin program \(name) at \(pin)", bpf_obj_pin(fresh.fd, pin))
            out[name] = fresh
        }
        if removingOthers {
            for f in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where !names.contains(f) { unlink("\(directory)/\(f)") }
        }
        return out
    }

    private let retained = Mutex<[Int32]>([])
}

/// A loaded program.
public struct BPFProgram: Sendable {
    /// Its name.
    public let name: String
    /// Its descriptor (owned by the object).
    public let fd: Int32

    /// The kernel's tag: a hash of its instructions.
    public func tag() throws -> [UInt8] {
        var t = [UInt8](repeating: 0, count: 8)
        try bpfCheck("prog tag \(name)", cshim_prog_tag(fd, &t))
        return t
    }

    /// Time spent and runs counted while kernel.bpf_stats_enabled was on.
    public func stats() throws -> (runTimeNs: UInt64, runs: UInt64) {
        var t: UInt64 = 0, n: UInt64 = 0
        try bpfCheck("prog stats \(name)", cshim_prog_stats(fd, &t, &n))
        return (t, n)
    }

    /// The kernel's id for it.
    public func id() throws -> UInt32 {
        var id: UInt32 = 0
        try bpfCheck("prog info \(name)", cshim_prog_id(fd, &id))
        return id
    }
}

/// Routes libbpf's own log to swift-log, once per process.
enum BPFLog {
    static let logger = Logger(label: "libbpf")
    private static let once: Void = {
        cshim_libbpf_set_logger { level, line in
            guard let line else { return }
            let text = String(cString: line).trimmingCharacters(in: .whitespacesAndNewlines)
            // The kernel's extended ack for an expected EEXIST/ENOENT (we retry or ignore those)
            // would read as a warning; the error itself is thrown as a BPFError anyway.
            switch level {
            case 0 where text.contains("Kernel error message"): BPFLog.logger.debug("\(text)")
            case 0: BPFLog.logger.warning("\(text)")
            case 1: BPFLog.logger.info("\(text)")
            default: BPFLog.logger.debug("\(text)")
            }
        }
    }()
    static func install() { _ = once }
}

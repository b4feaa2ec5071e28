import CShim
import Foundation
import Glibc
import Logging

/// A loaded BPF object: its programs and maps, with maps pinned by name under a directory so a
/// restarted agent reuses them (same contents, same attachments).
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
        let err = bpf_object__load(obj)
        if err < 0 {
            bpf_object__close(obj)
            throw BPFError("load \(path) (maps in \(mapPinDirectory))", code: -err)
        }
        self.object = obj
        self.path = path
        self.mapPinDirectory = mapPinDirectory
    }

    deinit { bpf_object__close(object) }

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

    /// Pins every program under `directory` (replacing older pins), for bpftool and for restarts.
    public func pinPrograms(in directory: String, names: [String]) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for name in names {
            let p = "\(directory)/\(name)"
            unlink(p)
            try bpfCheck("pin program \(name) at \(p)", bpf_obj_pin(try program(name).fd, p))
        }
    }
}

/// A loaded program.
public struct BPFProgram: Sendable {
    /// Its name.
    public let name: String
    /// Its descriptor (owned by the object).
    public let fd: Int32

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

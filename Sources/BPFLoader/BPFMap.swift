import CShim
import Glibc

/// A BPF map accessed through bpf(2): typed keys and values are the C structs of redirect_abi.h.
public struct BPFMap: Sendable {
    /// The map's name.
    public let name: String
    /// Its descriptor.
    public let fd: Int32
    private let owned: Bool

    init(name: String, fd: Int32, owned: Bool) { self.name = name; self.fd = fd; self.owned = owned }

    /// Opens a pinned map (the caller closes it with ``close()``).
    public static func pinned(_ path: String) throws -> BPFMap {
        let fd = try bpfCheck("open pinned map \(path)", bpf_obj_get(path))
        return BPFMap(name: path, fd: fd, owned: true)
    }

    /// Closes a descriptor this value owns.
    public func close() { if owned { _ = Glibc.close(fd) } }

    /// Writes `value` at `key`.
    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ value: V, flags: UInt64 = UInt64(BPF_ANY)) throws {
        var k = key, v = value
        try bpfCheck("update \(name)", bpf_map_update_elem(fd, &k, &v, flags))
    }

    /// The value at `key`, nil when absent.
    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type) throws -> V? {
        var k = key
        let v = UnsafeMutablePointer<V>.allocate(capacity: 1)
        defer { v.deallocate() }
        guard try bpfFound("lookup \(name)", bpf_map_lookup_elem(fd, &k, v)) else { return nil }
        return v.pointee
    }

    /// Per-CPU values at `key`, summed; nil when absent.
    public func lookupPerCPUSum<K: BitwiseCopyable>(_ key: K) throws -> UInt64? {
        var k = key
        let n = Int(cshim_num_possible_cpus())
        var values = [UInt64](repeating: 0, count: max(n, 1))
        guard try bpfFound("lookup \(name)", bpf_map_lookup_elem(fd, &k, &values)) else { return nil }
        return values.reduce(0, &+)
    }

    /// Deletes `key`; true when it was there.
    @discardableResult
    public func delete<K: BitwiseCopyable>(_ key: K) throws -> Bool {
        var k = key
        return try bpfFound("delete from \(name)", bpf_map_delete_elem(fd, &k))
    }

    /// Every key, by bpf_map_get_next_key.
    public func keys<K: BitwiseCopyable>(_ type: K.Type) throws -> [K] {
        var out: [K] = []
        let cur = UnsafeMutablePointer<K>.allocate(capacity: 1)
        let next = UnsafeMutablePointer<K>.allocate(capacity: 1)
        defer { cur.deallocate(); next.deallocate() }
        var first = true
        while true {
            guard try bpfFound("iterate \(name)", bpf_map_get_next_key(fd, first ? nil : UnsafeRawPointer(cur), next)) else { return out }
            out.append(next.pointee)
            cur.pointee = next.pointee
            first = false
        }
    }
}

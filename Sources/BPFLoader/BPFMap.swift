import CShim
import Glibc

/// A BPF map accessed through bpf(2): typed keys and values are the C structs of redirect_abi.h.
public struct BPFMap: @unchecked Sendable {
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
    public func update<K, V>(_ key: K, _ value: V, flags: UInt64 = UInt64(BPF_ANY)) throws {
        var k = key, v = value
        try bpfCheck("update \(name)", bpf_map_update_elem(fd, &k, &v, flags))
    }

    /// The value at `key`, nil when absent.
    public func lookup<K, V>(_ key: K, as: V.Type) throws -> V? {
        var k = key
        let v = UnsafeMutablePointer<V>.allocate(capacity: 1)
        defer { v.deallocate() }
        let rc = bpf_map_lookup_elem(fd, &k, v)
        if rc < 0 {
            let code = rc == -1 ? cshim_errno() : -rc
            if code == ENOENT { return nil }
            throw BPFError("lookup \(name)", code: code)
        }
        return v.pointee
    }

    /// Per-CPU values at `key`, summed; nil when absent.
    public func lookupPerCPUSum<K>(_ key: K) throws -> UInt64? {
        var k = key
        let n = Int(cshim_num_possible_cpus())
        var values = [UInt64](repeating: 0, count: max(n, 1))
        let rc = bpf_map_lookup_elem(fd, &k, &values)
        if rc < 0 {
            let code = rc == -1 ? cshim_errno() : -rc
            if code == ENOENT { return nil }
            throw BPFError("lookup \(name)", code: code)
        }
        return values.reduce(0, &+)
    }

    /// Deletes `key`; true when it was there.
    @discardableResult
    public func delete<K>(_ key: K) throws -> Bool {
        var k = key
        let rc = bpf_map_delete_elem(fd, &k)
        if rc < 0 {
            let code = rc == -1 ? cshim_errno() : -rc
            if code == ENOENT { return false }
            throw BPFError("delete from \(name)", code: code)
        }
        return true
    }

    /// Every key, by bpf_map_get_next_key.
    public func keys<K>(_ type: K.Type) throws -> [K] {
        var out: [K] = []
        let cur = UnsafeMutablePointer<K>.allocate(capacity: 1)
        let next = UnsafeMutablePointer<K>.allocate(capacity: 1)
        defer { cur.deallocate(); next.deallocate() }
        var first = true
        while true {
            let rc = bpf_map_get_next_key(fd, first ? nil : UnsafeRawPointer(cur), next)
            if rc < 0 {
                let code = rc == -1 ? cshim_errno() : -rc
                if code == ENOENT { return out }
                throw BPFError("iterate \(name)", code: code)
            }
            out.append(next.pointee)
            cur.pointee = next.pointee
            first = false
        }
    }
}

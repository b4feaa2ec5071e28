import CShim
import Glibc

/// A BPF ring buffer map read through libbpf (ring_buffer__new, ring_buffer__poll): each record the
/// programs submitted, as bytes. For one reader on one thread (it is not Sendable).
public final class RingBuffer {
    private final class Sink { var records: [[UInt8]] = [] }
    private let sink = Sink()
    private var ring: OpaquePointer?

    /// Opens the ring buffer map with descriptor `mapFD` (the caller keeps it open).
    public init(mapFD: Int32) throws {
        let context = Unmanaged.passUnretained(sink).toOpaque()
        ring = ring_buffer__new(mapFD, { context, data, size in
            guard let context, let data else { return 0 }
            let sink = Unmanaged<Sink>.fromOpaque(context).takeUnretainedValue()
            sink.records.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            return 0
        }, context, nil)
        if ring == nil { throw BPFError("open ring buffer", code: cshim_errno()) }
    }

    deinit { ring_buffer__free(ring) }

    /// Waits up to `timeoutMilliseconds` for records and returns those that came (none on a timeout
    /// or an interrupted wait).
    public func poll(timeoutMilliseconds: Int32) throws -> [[UInt8]] {
        let n = ring_buffer__poll(ring, timeoutMilliseconds)
        if n < 0 && -n != EINTR { throw BPFError("poll ring buffer", code: n) }
        defer { sink.records.removeAll(keepingCapacity: true) }
        return sink.records
    }
}

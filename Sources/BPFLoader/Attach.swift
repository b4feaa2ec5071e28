import CShim
import Foundation
import Glibc
import SystemCalls

/// How programs are attached to interfaces.
public enum AttachMode: String, Sendable, Codable, CaseIterable {
    /// tc clsact direct-action filters (netlink): about 0.25 ms per pod here; visible to `tc filter show`.
    case clsact
    /// tcx links (bpf_link, kernel 6.6+): coexist with other programs by design, but each attach
    /// waits for an RCU grace period under RTNL (tens of ms per pod here); must be pinned.
    case tcx
}

/// tc attachment of our programs. Every call acts in the calling thread's network namespace, so
/// callers run them inside ``NetworkNamespace/run(_:)``.
public enum TCAttach {
    /// Our filter's handle and priority on every hook (fixed, so restarts find and replace them).
    public static let handle: UInt32 = 0x5241  // "RA"
    /// Priority.
    public static let priority: UInt32 = 1

    /// The interface index of `name` in the current namespace.
    public static func ifindex(_ name: String) throws -> Int32 {
        let i = if_nametoindex(name)
        if i == 0 { throw BPFError("if_nametoindex \(name)", code: cshim_errno()) }
        return Int32(i)
    }

    /// Creates the clsact qdisc; returns true when this call created it (false when it existed).
    @discardableResult
    public static func ensureClsact(ifindex: Int32) throws -> Bool {
        let rc = cshim_tc_hook_create(ifindex)
        if rc == -EEXIST { return false }
        try bpfCheck("create clsact on ifindex \(ifindex)", rc)
        return true
    }

    /// Attaches (or atomically replaces) `program` at ingress or egress.
    public static func attach(_ program: BPFProgram, ifindex: Int32, ingress: Bool) throws {
        var rc = cshim_tc_attach(ifindex, ingress ? 1 : 0, program.fd, handle, priority, 0)
        if rc == -EEXIST { rc = cshim_tc_attach(ifindex, ingress ? 1 : 0, program.fd, handle, priority, 1) }
        try bpfCheck("tc attach \(program.name) on ifindex \(ifindex) \(ingress ? "ingress" : "egress")", rc)
    }

    /// Removes our filter; no error when it is not there.
    public static func detach(ifindex: Int32, ingress: Bool) throws {
        let rc = cshim_tc_detach(ifindex, ingress ? 1 : 0, handle, priority)
        if rc == -ENOENT || rc == -EINVAL || rc == -ENODEV { return }
        try bpfCheck("tc detach on ifindex \(ifindex)", rc)
    }

    /// Removes the clsact qdisc (and every filter on it).
    public static func destroyClsact(ifindex: Int32) throws {
        let rc = cshim_tc_hook_destroy(ifindex)
        if rc == -ENOENT || rc == -EINVAL || rc == -ENODEV { return }
        try bpfCheck("destroy clsact on ifindex \(ifindex)", rc)
    }

    /// The id of the program attached at our handle, nil when none.
    public static func attachedProgramID(ifindex: Int32, ingress: Bool) -> UInt32? {
        var id: UInt32 = 0
        return cshim_tc_query(ifindex, ingress ? 1 : 0, handle, priority, &id) == 0 ? id : nil
    }
}

/// bpf_link attachments, pinned so they outlive the agent process.
public enum LinkAttach {
    /// Attaches an sk_lookup program to the namespace at `netnsPath` and pins the link at
    /// `pinPath`; an existing pin is updated to `program` atomically instead.
    public static func skLookup(_ program: BPFProgram, netnsPath: String, pinPath: String) throws {
        if FileManager.default.fileExists(atPath: pinPath) {
            let link = try bpfCheck("open link \(pinPath)", bpf_obj_get(pinPath))
            defer { close(link) }
            try bpfCheck("update link \(pinPath)", bpf_link_update(link, program.fd, nil))
            return
        }
        let ns = open(netnsPath, O_RDONLY | O_CLOEXEC)
        if ns < 0 { throw BPFError("open \(netnsPath)", code: cshim_errno()) }
        defer { close(ns) }
        let link = try bpfCheck("attach \(program.name) to \(netnsPath)", cshim_link_create_sk_lookup(program.fd, ns))
        defer { close(link) }
        try FileManager.default.createDirectory(atPath: (pinPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try bpfCheck("pin link \(pinPath)", bpf_obj_pin(link, pinPath))
    }

    /// Attaches a tc program with a tcx link on `ifindex` (current namespace) and pins it. A pinned
    /// link on that device is updated in place; a pin whose device is gone is replaced (see
    /// ``tcxAttached(_:ifindex:)``).
    public static func tcx(_ program: BPFProgram, ifindex: Int32, ingress: Bool, pinPath: String) throws {
        if tcxAttached(pinPath, ifindex: ifindex) {
            let link = try bpfCheck("open link \(pinPath)", bpf_obj_get(pinPath))
            defer { close(link) }
            try bpfCheck("update link \(pinPath)", bpf_link_update(link, program.fd, nil))
            return
        }
        // The new link goes in before the old pin goes: if the old one was live after all (its
        // check failed for another reason), the device is never without the program.
        let link = try bpfCheck("tcx attach \(program.name) on ifindex \(ifindex)", cshim_link_create_tcx(program.fd, ifindex, ingress ? 1 : 0))
        defer { close(link) }
        try FileManager.default.createDirectory(atPath: (pinPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        unlink(pinPath)
        try bpfCheck("pin link \(pinPath)", bpf_obj_pin(link, pinPath))
    }

    /// The netfilter hook the egress guard uses: after routing, so the output device is known.
    public static let netfilterPostRouting: UInt32 = 4 // NF_INET_POST_ROUTING
    /// Its priority among the namespace's netfilter hooks; the guard depends on nothing they do.
    public static let netfilterPriority: Int32 = 0

    /// Attaches a netfilter program at POST_ROUTING of `family` (NFPROTO_IPV4 2, NFPROTO_IPV6 10) in
    /// the calling thread's network namespace and pins the link. A pinned link that already runs
    /// `program` is kept; one that runs another (an upgrade) is replaced with no gap: netfilter
    /// links cannot change their program, so the new link goes in before the old pin goes.
    public static func netfilter(_ program: BPFProgram, family: UInt32, pinPath: String) throws {
        try replacingPin(program, pinPath) {
            try bpfCheck("netfilter attach \(program.name) (family \(family))",
                         cshim_link_create_netfilter(program.fd, family, netfilterPostRouting, netfilterPriority))
        }
    }

    /// Attaches an LSM program to its security hook (node-wide) and pins the link, as
    /// ``netfilter(_:family:pinPath:)`` does: tracing links cannot change their program either.
    public static func lsm(_ program: BPFProgram, pinPath: String) throws {
        try replacingPin(program, pinPath) { try bpfCheck("LSM attach \(program.name)", cshim_link_create_lsm(program.fd)) }
    }

    /// Keeps a pinned link that runs `program`; otherwise makes one with `create` and pins it
    /// where the old one was, the new link in place before the old pin goes (no gap).
    private static func replacingPin(_ program: BPFProgram, _ pinPath: String, _ create: () throws -> Int32) throws {
        if FileManager.default.fileExists(atPath: pinPath), let current = try? pinnedLinkProgramID(pinPath), current == (try program.id()) { return }
        let link = try create()
        defer { close(link) }
        try FileManager.default.createDirectory(atPath: (pinPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        unlink(pinPath)
        try bpfCheck("pin link \(pinPath)", bpf_obj_pin(link, pinPath))
    }

    /// Whether the node's LSM programs run: a socket() only lsm_pod_socket_create answers with
    /// RA_LSM_PROBE_ERRNO (AF_XDP itself refuses the protocol differently). False where the
    /// kernel loads LSM programs but does not call them (bpf missing from its lsm= list).
    public static func lsmHooksRun() -> Bool {
        let fd = socket(afXDP, Int32(SOCK_RAW.rawValue), RA_LSM_PROBE_PROTOCOL)
        if fd >= 0 { close(fd); return false }
        return cshim_errno() == RA_LSM_PROBE_ERRNO
    }
    private static let afXDP: Int32 = 44

    /// Whether the tcx link pinned at `pinPath` is attached to the device that now has `ifindex`.
    /// A link outlives its device in the pin, attached to nothing (the kernel reports ifindex 0):
    /// a device created later with the same index (a meta plugin's net1 made again) carries no
    /// program, so a pin alone proves nothing.
    public static func tcxAttached(_ pinPath: String, ifindex: Int32) -> Bool {
        let link = bpf_obj_get(pinPath)
        guard link >= 0 else { return false }
        defer { close(link) }
        var attached: UInt32 = 0
        return cshim_link_tcx_ifindex(link, &attached) == 0 && attached != 0 && Int32(bitPattern: attached) == ifindex
    }

    /// Where a cgroup program hooks in.
    public enum CgroupHook: Sendable, CaseIterable {
        /// connect() of IPv4 sockets.
        case connect4
        /// connect() of IPv6 sockets.
        case connect6
        /// TCP socket events (sockops).
        case sockOps
        /// sendmsg() of unconnected IPv4 UDP sockets.
        case sendmsg4
        /// sendmsg() of unconnected IPv6 UDP sockets.
        case sendmsg6
        /// recvmsg() of IPv4 UDP sockets (the source address it reports).
        case recvmsg4
        /// recvmsg() of IPv6 UDP sockets.
        case recvmsg6
        /// getpeername() of IPv4 sockets.
        case getpeername4
        /// getpeername() of IPv6 sockets.
        case getpeername6
        /// bind() of IPv4 sockets.
        case bind4
        /// bind() of IPv6 sockets.
        case bind6

        var attachType: bpf_attach_type {
            switch self {
            case .connect4: BPF_CGROUP_INET4_CONNECT
            case .connect6: BPF_CGROUP_INET6_CONNECT
            case .sockOps: BPF_CGROUP_SOCK_OPS
            case .sendmsg4: BPF_CGROUP_UDP4_SENDMSG
            case .sendmsg6: BPF_CGROUP_UDP6_SENDMSG
            case .recvmsg4: BPF_CGROUP_UDP4_RECVMSG
            case .recvmsg6: BPF_CGROUP_UDP6_RECVMSG
            case .getpeername4: BPF_CGROUP_INET4_GETPEERNAME
            case .getpeername6: BPF_CGROUP_INET6_GETPEERNAME
            case .bind4: BPF_CGROUP_INET4_BIND
            case .bind6: BPF_CGROUP_INET6_BIND
            }
        }
    }

    /// Links `program` to the cgroup v2 directory `cgroupDirectory` at `hook` (beside any other
    /// programs there) and pins the link. A pinned link is updated to `program` in place, so an
    /// upgrade leaves no moment without the hook.
    public static func cgroup(_ program: BPFProgram, hook: CgroupHook, cgroupDirectory: String, pinPath: String) throws {
        if FileManager.default.fileExists(atPath: pinPath) {
            let link = try bpfCheck("open link \(pinPath)", bpf_obj_get(pinPath))
            defer { close(link) }
            if (try? pinnedLinkProgramID(pinPath)) == (try program.id()) { return }
            try bpfCheck("update link \(pinPath)", bpf_link_update(link, program.fd, nil))
            return
        }
        let dir = open(cgroupDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir < 0 { throw BPFError("open cgroup \(cgroupDirectory)", code: cshim_errno()) }
        defer { close(dir) }
        let link = try bpfCheck("attach \(program.name) to cgroup \(cgroupDirectory)", bpf_link_create(program.fd, dir, hook.attachType, nil))
        defer { close(link) }
        try FileManager.default.createDirectory(atPath: (pinPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try bpfCheck("pin link \(pinPath)", bpf_obj_pin(link, pinPath))
    }

    /// The id of the program a pinned link runs.
    public static func pinnedLinkProgramID(_ pinPath: String) throws -> UInt32 {
        let link = try bpfCheck("open link \(pinPath)", bpf_obj_get(pinPath))
        defer { close(link) }
        var id: UInt32 = 0
        try bpfCheck("link info \(pinPath)", cshim_link_prog_id(link, &id))
        return id
    }

    /// Removes a pinned link: the attachment goes when the last reference does.
    public static func unpin(_ pinPath: String) { unlink(pinPath) }
}

/// bpffs mounts.
public enum BPFFS {
    /// Mounts bpffs at `path` unless one is already there; returns true when it mounted.
    ///
    /// Refuses when the mount holding `path` only receives propagation (a slave, as a container
    /// sees a hostPath volume with `mountPropagation: HostToContainer`): a bpffs mounted there
    /// never reaches the node, so the pins would go with the container and a restarted agent
    /// would find none of its maps while the old programs stay attached to the old ones.
    @discardableResult
    public static func ensureMounted(_ path: String) throws -> Bool {
        if cshim_is_bpffs(path) != 0 { return false }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        if let holder = MountInfo.mount(containing: path, in: try MountInfo.current()), let why = refusal(path, holder: holder) {
            throw BPFError(why, code: EPERM)
        }
        if cshim_mount_bpffs(path) != 0 { throw BPFError("mount bpffs at \(path)", code: cshim_errno()) }
        return true
    }

    /// Why mounting bpffs at `path` below `holder` would lose pins, or nil when it is safe: a
    /// shared mount propagates to the node, a private one is taken as the node's own namespace.
    public static func refusal(_ path: String, holder: MountEntry) -> String? {
        let slave = holder.optionalFields.contains { $0.hasPrefix("master:") }
        guard slave && !holder.isShared else { return nil }
        return "refusing to mount bpffs at \(path): the mount holding it (\(holder.mountPoint)) only receives propagation "
            + "from the node, so the pins would stay in this mount namespace and be lost when the agent restarts; "
            + "mount bpffs at /sys/fs/bpf on the node (systemd's sys-fs-bpf.mount does), or give the agent the node's "
            + "bpffs with mountPropagation: Bidirectional"
    }

    /// Whether `path` is on a bpffs.
    public static func isMounted(_ path: String) -> Bool { cshim_is_bpffs(path) != 0 }

    /// Unmounts `path` (lazily).
    public static func unmount(_ path: String) { _ = cshim_umount(path) }
}

/// BPF_PROG_TEST_RUN on a crafted packet.
public enum TestRun {
    /// What a program did with a packet.
    public struct Result: Sendable {
        /// The verdict (TC_ACT_*).
        public var verdict: UInt32
        /// The packet after the program.
        public var packet: [UInt8]
        /// skb->mark after the program.
        public var mark: UInt32
    }

    /// Runs `program` once on `packet` with `mark` and `ifindex` in its context.
    public static func run(_ program: BPFProgram, packet: [UInt8], mark: UInt32 = 0, ifindex: UInt32 = 1) throws -> Result {
        var out = [UInt8](repeating: 0, count: packet.count + 256)
        var outSize = UInt32(out.count)
        var verdict: UInt32 = 0, markOut: UInt32 = 0
        let rc = packet.withUnsafeBytes { p in
            cshim_prog_test_run_skb(program.fd, p.baseAddress, UInt32(packet.count), &out, &outSize, mark, ifindex, &verdict, &markOut)
        }
        try bpfCheck("test run \(program.name)", rc)
        return Result(verdict: verdict, packet: Array(out[0..<Int(outSize)]), mark: markOut)
    }
}

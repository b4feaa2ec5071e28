import BPFLoader
import CShim
import Foundation
import Glibc
import SystemCalls

/// What the kernel offers the eBPF dataplane, probed for real (bpf(2) calls), with the reason
/// when something is missing.
public struct KernelFeatures: Sendable, Codable, Equatable {
    /// The bpf() syscall answers.
    public var bpfSyscall: Bool
    /// tc (SCHED_CLS) programs load.
    public var tcPrograms: Bool
    /// sk_lookup programs load.
    public var skLookupPrograms: Bool
    /// bpf_sk_assign is available to tc programs.
    public var skAssignHelper: Bool
    /// bpf_skc_lookup_tcp is available to tc programs.
    public var skcLookupHelper: Bool
    /// A bpffs is (or can be) mounted at the pin root's parent.
    public var bpffs: Bool
    /// tcx attachment (BPF_TCX_INGRESS/EGRESS links) exists: Linux 6.6 or later.
    public var tcx: Bool = false
    /// Netfilter BPF programs load (Linux 6.4+): pods get the egress guard that closes the window
    /// before a new interface carries the tc programs. Without it ebpf still runs, with that window.
    public var netfilterPrograms: Bool = false
    /// The node's socket programs load and have somewhere to attach: cgroup socket hooks with
    /// bpf_bind, bpf_get_netns_cookie and socket storage (the probe programs and DNS capture), sockops
    /// with socket storage (Linux 5.7+), and a cgroup v2 hierarchy.
    public var nodeSocketPrograms: Bool = false
    /// BPF LSM programs load: the node's security hooks refuse sockets that send past tc in meshed
    /// pods (whether the kernel also calls them shows once attached; see `status`). Without them
    /// ebpf still runs, with that bypass open.
    public var lsmPrograms: Bool = false
    /// Why ebpf cannot be used; nil when it can.
    public var missing: String?

    /// Whether the eBPF dataplane can run.
    public var ebpfUsable: Bool { missing == nil }

    /// Probes the running kernel; `bpffsPath` is where pins go.
    public static func probe(bpffsPath: String) -> KernelFeatures {
        // The syscall itself first: libbpf's probes report a denied bpf() as merely "unsupported".
        let map = bpf_map_create(BPF_MAP_TYPE_ARRAY, nil, 4, 4, 1, nil)
        let sysErr = map < 0 ? (map == -1 ? errno : -map) : 0
        if map >= 0 { close(map) }
        let sysOK = map >= 0
        let tc = sysOK ? libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SCHED_CLS, nil) : -sysErr
        let skl = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_LOOKUP, nil)
        let assign = libbpf_probe_bpf_helper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_sk_assign, nil)
        let skc = libbpf_probe_bpf_helper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_skc_lookup_tcp, nil)
        var fsProblem: String?
        do { try BPFFS.ensureMounted(bpffsPath) } catch { fsProblem = "\(error)" }
        var f = KernelFeatures(bpfSyscall: sysOK, tcPrograms: tc == 1, skLookupPrograms: skl == 1,
                               skAssignHelper: assign == 1, skcLookupHelper: skc == 1,
                               bpffs: fsProblem == nil && BPFFS.isMounted(bpffsPath), missing: nil)
        f.tcx = sysOK && KernelRelease.atLeast(6, 6)
        f.netfilterPrograms = sysOK && BPFObject.netfilterProgramsSupported
        f.nodeSocketPrograms = sysOK && nodeSocketProgramsLoad() && (try? Cgroup.mountPoint()) != nil
        f.lsmPrograms = sysOK && BPFObject.lsmProgramsSupported
        f.missing = f.reason(tcResult: tc, bpffsProblem: fsProblem)
        return f
    }

    private func reason(tcResult: Int32, bpffsProblem: String?) -> String? {
        if !bpfSyscall { return "the bpf() syscall is denied (\(String(cString: strerror(abs(tcResult)))))" }
        if !tcPrograms { return "tc (sched_cls) BPF programs cannot be loaded" }
        if !skLookupPrograms { return "sk_lookup BPF programs are not supported (kernel 5.9+ needed)" }
        if !skAssignHelper { return "the bpf_sk_assign helper is not available to tc programs (kernel 5.7+ needed)" }
        if !skcLookupHelper { return "the bpf_skc_lookup_tcp helper is not available to tc programs" }
        if !bpffs { return bpffsProblem ?? "no bpffs can be mounted at the pin directory" }
        if !nodeSocketPrograms {
            return "the node's socket programs (kubelet probes, DNS capture) cannot run: cgroup socket hooks with bpf_bind, bpf_get_netns_cookie and socket storage, sockops with socket storage (kernel 5.7+), and a cgroup v2 hierarchy are needed"
        }
        return nil
    }

    private static func nodeSocketProgramsLoad() -> Bool {
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_bind, nil) == 1
            && libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_netns_cookie, nil) == 1
            && libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sk_storage_get, nil) == 1
            && libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_sk_storage_get, nil) == 1 // DNS capture's hooks
    }
}

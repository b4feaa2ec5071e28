import AgentCore
import Foundation
import Glibc
import SystemCalls
import Testing

/// The feature probe against the kernel it runs on: the same test runs on this machine's kernel and
/// in the kernel matrix's VM (Linux 6.1), so what `auto` and `status` report is checked per kernel.
@Suite("Kernel feature probe")
struct KernelFeaturesTests {
    @Test("the probe reports what this kernel offers: tcx from 6.6, the egress guard from 6.4, the rest everywhere we run")
    func matchesKernel() throws {
        if getuid() != 0 { Issue.record("cannot run: needs root (bpf() probes)"); return }
        let dir = NSTemporaryDirectory() + "ra-features-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { umount2(dir, Int32(MNT_DETACH)); try? FileManager.default.removeItem(atPath: dir) }
        let f = KernelFeatures.probe(bpffsPath: dir)
        let release = KernelRelease.string
        #expect(f.tcx == KernelRelease.atLeast(6, 6), "tcx on \(release)")
        #expect(f.netfilterPrograms == KernelRelease.atLeast(6, 4), "netfilter BPF on \(release)")
        #expect(f.nodeSocketPrograms, "cgroup connect hooks, sockops and socket storage (5.7+)")
        #expect(f.skLookupPrograms && f.skAssignHelper && f.skcLookupHelper && f.tcPrograms && f.bpffs)
        #expect(f.ebpfUsable, "\(f.missing ?? "")")
        // bpftool's own probe is the second opinion: this host refuses LSM programs (lockdown), Debian's 6.1 loads them.
        let bpftool = try Command.capture(try Command.resolve("bpftool"), ["feature", "probe", "kernel"])
        #expect(bpftool.stdout.contains("eBPF program_type lsm is available") || bpftool.stdout.contains("eBPF program_type lsm is NOT available"))
        #expect(f.lsmPrograms == bpftool.stdout.contains("eBPF program_type lsm is available"), "BPF LSM on \(release)")
    }
}

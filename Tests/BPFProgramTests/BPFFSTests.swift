import BPFLoader
import SystemCalls
import Testing

/// When the agent may mount bpffs itself: only where the mount reaches the node.
@Suite("bpffs mount policy")
struct BPFFSTests {
    static func holder(_ fields: [String]) -> MountEntry {
        MountEntry(id: 40, parentID: 23, mountPoint: "/sys/fs/bpf", optionalFields: fields, fsType: "sysfs")
    }

    @Test("below a mount that only receives propagation (HostToContainer) the agent refuses, and says what to do")
    func slave() throws {
        let why = try #require(BPFFS.refusal("/sys/fs/bpf", holder: Self.holder(["master:7"])))
        #expect(why.contains("/sys/fs/bpf") && why.contains("Bidirectional") && why.contains("lost when the agent restarts"))
    }

    @Test("shared mounts (Bidirectional, or a systemd host) and private ones (the node's own namespace) are fine",
          arguments: [["shared:3"], ["shared:9", "master:3"], [], ["unbindable"]])
    func allowed(_ fields: [String]) {
        #expect(BPFFS.refusal("/sys/fs/bpf", holder: Self.holder(fields)) == nil)
    }
}

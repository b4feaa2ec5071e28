import Foundation
import SystemCalls
import Testing

/// /proc/self/mountinfo: which mount holds a path, and how it propagates.
@Suite("mount table")
struct MountInfoTests {
    // As a container sees a hostPath volume with HostToContainer propagation over a node whose
    // /sys/fs/bpf has no bpffs, beside the node's own shared and private mounts.
    static let sample = """
        21 1 0:20 / / rw,relatime shared:1 - ext4 /dev/vda rw
        23 21 0:22 / /sys rw,nosuid - sysfs sysfs rw
        40 23 0:22 /fs/bpf /sys/fs/bpf rw,relatime master:7 - sysfs sysfs rw
        41 21 0:30 / /run/with\\040space rw shared:9 master:3 - tmpfs tmpfs rw
        42 21 0:31 / /run rw - tmpfs tmpfs rw
        43 42 0:32 / /run rw shared:12 - tmpfs tmpfs rw
        garbage line
        """

    @Test("fields, optional propagation fields and octal escapes are read; malformed lines skipped")
    func parse() {
        let m = MountInfo.parse(Self.sample)
        #expect(m.count == 6)
        #expect(m[2] == MountEntry(id: 40, parentID: 23, mountPoint: "/sys/fs/bpf", optionalFields: ["master:7"], fsType: "sysfs"))
        #expect(m[3].mountPoint == "/run/with space" && m[3].isShared && m[3].optionalFields == ["shared:9", "master:3"])
        #expect(m[1].optionalFields.isEmpty && !m[1].isShared)
    }

    @Test("the holder of a path is the longest mount point by whole components, the top of a stack")
    func holder() {
        let m = MountInfo.parse(Self.sample)
        #expect(MountInfo.mount(containing: "/sys/fs/bpf/redirect-agent", in: m)?.id == 40)
        #expect(MountInfo.mount(containing: "/sys/fs/bpf", in: m)?.id == 40)
        #expect(MountInfo.mount(containing: "/sys/fs/bpfx", in: m)?.id == 23, "a name that only starts like a mount point")
        #expect(MountInfo.mount(containing: "/run/x", in: m)?.id == 43, "the later of two mounts on one point is on top")
        #expect(MountInfo.mount(containing: "/etc", in: m)?.id == 21)
    }

    @Test("this process's own table holds / and /proc")
    func current() throws {
        let m = try MountInfo.current()
        #expect(MountInfo.mount(containing: "/proc/self", in: m)?.fsType == "proc")
        #expect(m.contains { $0.mountPoint == "/" })
    }
}

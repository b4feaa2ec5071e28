#!/usr/bin/env bash
# Runs the BPF program tests, the eBPF lab suites, the adversarial and coexistence suites on Debian's Linux 6.1 (the LTS kernel of
# Debian 12, Amazon Linux 2023 and GKE's COS) in a VM, with the debug build of this tree.
# virtme-ng boots the kernel with the host's filesystem visible (9p), so the built test bundle runs in
# place. This host cannot nest KVM, so qemu emulates (TCG): several times slower than the host.
# Usage: scripts/kernel-matrix.sh [SUITE-REGEX]   (needs root and a `swift build --build-tests` first)
set -euo pipefail
cd "$(dirname "$0")/.."
SUITES=${1:-${KERNEL_MATRIX_SUITES:-BPFProgramTests|EBPFCaptureTests|InterfaceCaptureTests|AdversarialTests|CoexistenceTests|KernelFeaturesTests}}
BUNDLE=.build/debug/redirect-agentPackageTests.xctest
VENV=.venv-tools
[ -x "$BUNDLE" ] || { echo "kernel-matrix: $BUNDLE missing: run swift build --build-tests first" >&2; exit 2; }

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
kernel=$(ls /boot/vmlinuz-6.1.0-*-amd64 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$kernel" ]; then
  # The generic image, unsigned: the cloud image lacks the 9p module virtme needs.
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1)
  [ -n "$pkg" ] || { echo "kernel-matrix: no Linux 6.1 image in the package sources" >&2; exit 2; }
  echo "kernel-matrix: installing $pkg"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$pkg" qemu-system-x86 busybox-static >/dev/null
  kernel=$(ls /boot/vmlinuz-6.1.0-*-amd64 | sort -V | tail -1)
fi
for p in qemu-system-x86 busybox-static; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$p" >/dev/null
done
[ -x "$VENV/bin/vng" ] || { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; "$VENV/bin/pip" install -q virtme-ng; }

result=$(mktemp -d /tmp/ra-kernel-matrix.XXXXXX)
trap 'rm -rf "$result"' EXIT
# Inside the VM: what a node gives the agent (bpffs, /run/netns, br_netfilter), then the test bundle itself
# (`swift test` cannot use its build database there).
cat >"$result/run.sh" <<EOF
mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
mkdir -p /run/netns
modprobe br_netfilter  # as on every Kubernetes node with a bridge CNI (kube-proxy needs it)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$(dirname "$(command -v swift)")
export REDIRECT_BPF_OBJECT=$PWD/bpf/redirect.bpf.o
export REDIRECT_TEST_DATAPLANES=ebpf  # the coexistence suite's iptables cases do not depend on the kernel's BPF
cd $PWD
echo "kernel: \$(uname -r)" > $result/log
$BUNDLE --testing-library swift-testing --filter '$SUITES' >> $result/log 2>&1
echo \$? > $result/status
EOF
echo "kernel-matrix: $kernel, suites $SUITES"
start=$(date +%s)
# The guest sees the host's files read-only (writes go to an overlay), so results come back
# through a directory shared read-write.
PATH="$PWD/$VENV/bin:$PATH" timeout 1800 "$VENV/bin/vng" --run "$kernel" --user root --disable-kvm --disable-microvm \
  --memory 6G --cpus 2 --rwdir "$result" -- "bash $result/run.sh" >"$result/console" 2>&1 </dev/null || true
[ -s "$result/status" ] || tr -d '\000' <"$result/console" | tail -40
grep -aE "kernel:|✘|Test run with" "$result/log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' || true
status=$(cat "$result/status" 2>/dev/null || echo "none (the VM did not finish)")
echo "kernel-matrix: $(basename "$kernel") exit status $status after $(( $(date +%s) - start )) s"
[ "$status" = 0 ]

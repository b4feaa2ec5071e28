#!/usr/bin/env bash
# Runs our suites on the LTS kernels users run, each in a VM, with the debug build of this tree:
# - Debian's Linux 6.1 (Debian 12, Amazon Linux 2023, GKE's COS 6.1): the BPF program tests, the eBPF lab
#   suites, the adversarial and coexistence suites, the feature probe, the cgroup lookups the proxy's
#   identity rests on (cgroup namespaces; iptables resolving --path in the loader's namespace), and the
#   connections kept from before enrolment (sock_diag cookies, ra_kept), DNS capture (the socket hooks),
#   and the nftables rulesets loaded by that kernel (socket cgroupv2 in input and output);
# - Debian 12's Linux 6.12 (the backports kernel; tcx and the egress guard are there): the BPF program
#   tests, the feature probe and the cgroup lookups (within the matrix's 15 minutes).
# virtme-ng boots each kernel with the host's filesystem visible (9p), so the built test bundle runs in
# place. This host cannot nest KVM, so qemu emulates (TCG): several times slower than the host.
# Usage: scripts/kernel-matrix.sh [SUITE-REGEX]   (needs root and a `swift build --build-tests` first;
# a regex runs those suites on 6.1 only; KERNEL_MATRIX_KERNELS="6.1 6.12" picks the kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
FULL=${1:-${KERNEL_MATRIX_SUITES:-BPFProgramTests|NftablesGoldenTests|IstioNftEquivalenceTests|EBPFCaptureTests|InterfaceCaptureTests|AdversarialTests|CoexistenceTests|KernelFeaturesTests|CgroupLookupTests|CgroupNamespaceRunnerTests|KeptConnectionsTests|SocketDiagTests|PodAnnotationTests|DNSCaptureTests}}
KERNELS=${KERNEL_MATRIX_KERNELS:-$([ $# -gt 0 ] && echo 6.1 || echo "6.1 6.12")}
BUNDLE=.build/debug/redirect-agentPackageTests.xctest
VENV=.venv-tools
[ -x "$BUNDLE" ] || { echo "kernel-matrix: $BUNDLE missing: run swift build --build-tests first" >&2; exit 2; }

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null; }

# The kernel image of a series (/boot/vmlinuz-...), installed from Debian's sources when missing: the
# generic image, unsigned (the cloud image lacks the 9p module virtme needs).
kernel_image() {
  local glob pattern
  case "$1" in
    6.1) glob='/boot/vmlinuz-6.1.0-*-amd64'; pattern='^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' ;;
    6.12) glob='/boot/vmlinuz-6.12.*+deb12-amd64'; pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' ;;
    *) echo "kernel-matrix: unknown kernel series $1" >&2; return 2 ;;
  esac
  if ! ls $glob >/dev/null 2>&1; then
    local pkg
    pkg=$(apt-cache search --names-only "$pattern" | awk '{print $1}' | sort -V | tail -1)
    [ -n "$pkg" ] || { echo "kernel-matrix: no Linux $1 image in the package sources" >&2; return 2; }
    echo "kernel-matrix: installing $pkg" >&2
    apt_install "$pkg"
  fi
  ls $glob | sort -V | tail -1
}

for p in qemu-system-x86 busybox-static; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || apt_install "$p"
done
[ -x "$VENV/bin/vng" ] || { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; "$VENV/bin/pip" install -q virtme-ng; }

result=""
trap 'rm -rf "$result"' EXIT
# Runs suites matching $2 on kernel image $1; prints the results, returns the bundle's status.
run_on() {
local kernel=$1 SUITES=$2
local status start
result=$(mktemp -d /tmp/ra-kernel-matrix.XXXXXX)
# Inside the VM: what a node gives the agent (bpffs, /run/netns, br_netfilter), then the test bundle itself
# (`swift test` cannot use its build database there).
cat >"$result/run.sh" <<EOF
mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
mkdir -p /run/netns
modprobe br_netfilter  # as on every Kubernetes node with a bridge CNI (kube-proxy needs it)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$(dirname "$(command -v swift)")
export REDIRECT_BPF_OBJECT=$PWD/bpf/redirect.bpf.o
export REDIRECT_TEST_DATAPLANES=ebpf  # the multi-mode suites in ebpf mode only: iptables mode uses no BPF of ours
export REDIRECT_EXPECT_BPF_LSM=1  # Debian's kernels run BPF LSM (bpf is in their lsm= list): the refusal must be tested
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
rm -rf "$result"
[ "$status" = 0 ]
}

failed=0
for series in $KERNELS; do
  kernel=$(kernel_image "$series")
  case "$series" in
    6.1) suites=$FULL ;;
    *) suites='BPFProgramTests|NftablesGoldenTests|IstioNftEquivalenceTests|KernelFeaturesTests|CgroupLookupTests|CgroupNamespaceRunnerTests' ;;
  esac
  run_on "$kernel" "$suites" || failed=1
done
exit $failed

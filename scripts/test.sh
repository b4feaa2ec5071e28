#!/usr/bin/env bash
# Runs the whole test suite, then checks that the tests left the machine as they found it
# (namespaces, lab processes, bpffs mounts, cgroups); whatever is left is reported, swept, and fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export REDIRECT_BPF_OBJECT="$PWD/bpf/redirect.bpf.o"
bash scripts/validate-manifests.sh
manifests=$?
# The CRI client the containerd suite drives the runtime with (grpcio, and grpcio-tools for its messages).
.venv-tools/bin/python -c 'import grpc, grpc_tools' 2>/dev/null || .venv-tools/bin/pip install -q grpcio grpcio-tools
swift test 2>&1 | tee /tmp/redirect-agent-test.log
status=${PIPESTATUS[0]}
[ "$manifests" -eq 0 ] || status=1
leftover=$(ip netns list 2>/dev/null | grep -E '^ra[0-9a-f]{6}-' || true)
procs=$(pgrep -af /run/redirect-lab/ra || true)
mounts=$(grep ' /run/redirect-lab/' /proc/self/mounts || true)
cg2=$(awk '{for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break }}' /proc/self/mountinfo)
cgroups=$( { [ -n "$cg2" ] && find "$cg2" -maxdepth 1 \( -name redirect-lab -o -name 'ra-test-*' -o -name 'ra-kubelet-*' \) ; } 2>/dev/null || true)
if [ -n "$leftover$procs$mounts$cgroups" ]; then
  echo "tests left state behind:"
  [ -n "$leftover" ] && echo "namespaces: $leftover"
  [ -n "$procs" ] && echo "processes: $procs"
  [ -n "$mounts" ] && echo "mounts: $mounts"
  [ -n "$cgroups" ] && echo "cgroups: $cgroups"
  .build/debug/redirect-lab cleanup || true
  status=1
fi
exit "$status"

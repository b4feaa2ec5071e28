#!/usr/bin/env bash
# Runs the whole test suite, then checks that the tests left the machine as they found it.
set -uo pipefail
cd "$(dirname "$0")/.."
export REDIRECT_BPF_OBJECT="$PWD/bpf/redirect.bpf.o"
swift test 2>&1 | tee /tmp/redirect-agent-test.log
status=${PIPESTATUS[0]}
leftover=$(ip netns list 2>/dev/null | grep -E '^ra[0-9a-f]{6}-' || true)
if [ -n "$leftover" ]; then
  echo "tests left network namespaces behind:"; echo "$leftover"
  status=1
fi
exit "$status"

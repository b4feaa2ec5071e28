#!/usr/bin/env bash
# Validates deploy/*.yaml against Kubernetes' own schemas (kubernetes-validate from PyPI, which
# carries the schemas: no cluster and no network beyond PyPI). Strict: unknown fields fail.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.33.0}
VENV=.venv-tools
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'kubernetes-validate>=1.33'
fi
"$VENV/bin/kubernetes-validate" --kubernetes-version "$KUBERNETES_VERSION" --strict --quiet deploy/*.yaml
echo "manifests: deploy/*.yaml valid for Kubernetes $KUBERNETES_VERSION (strict)"

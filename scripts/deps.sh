#!/usr/bin/env bash
# Installs every system package the project needs. Idempotent: when all are present it only says so.
set -euo pipefail
PACKAGES=(
  libbpf-dev libelf-dev zlib1g-dev linux-libc-dev bpftool
  iptables ipset nftables iproute2 util-linux procps kmod
  containernetworking-plugins python3-seccomp python3-venv openssl
  containerd runc libc6-dev bind9-dnsutils conntrack
)
# kubectl for the stand-in API server's tests: whichever is there, else Debian's.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} system packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"

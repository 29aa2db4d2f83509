#!/usr/bin/env bash
# Installs the Debian packages the tests need, once. Idempotent and quiet.
set -euo pipefail
pkgs=(qemu-system-x86 busybox-static cpio xz-utils zstd acpica-tools binutils bc shellcheck iproute2
      ovmf systemd-boot-efi dosfstools mtools fdisk)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "prerequisites present: ${pkgs[*]}"

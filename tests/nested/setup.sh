#!/usr/bin/env bash
# Sets up the nested-KVM lab on a fresh Debian 12 machine, idempotently:
#   - Debian packages (QEMU for the simulated host L0, busybox, cpio, xz)
#   - the newest Debian amd64 kernel apt offers, unpacked (bzImage + modules)
#   - an uncompressed vmlinux for L0 (QEMU boots it through its PVH note: much faster)
#   - L0's initramfs
# Usage: tests/nested/setup.sh            (work dir: $NESTED_WORKDIR or tests/nested/work)
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
here="$NESTED_DIR"
work="$NESTED_WORKDIR"

log() { printf 'nested-setup: %s\n' "$*"; }

"$REPO_ROOT/scripts/install-deps.sh" >/dev/null

if [ ! -s "$work/env.sh" ]; then
    pkg=$(apt-cache search --names-only '^linux-image-[0-9].*-amd64-unsigned$' \
        | awk '{print $1}' | grep -v -e cloud -e '-rt-' | sort -V | tail -n1)
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache search --names-only '^linux-image-[0-9].*-amd64-unsigned$' \
            | awk '{print $1}' | grep -v -e cloud -e '-rt-' | sort -V | tail -n1)
    fi
    [ -n "$pkg" ] || { echo "nested-setup: no linux-image-*-amd64-unsigned package in apt" >&2; exit 1; }
    log "kernel package: $pkg"
    rm -rf "$work/kernel" && mkdir -p "$work/kernel"
    rm -f "$work"/*.deb
    (cd "$work" && { apt-get download -qq "$pkg" 2>&1 | grep -v unsandboxed || true; })
    dpkg -x "$work"/"$pkg"_*.deb "$work/kernel"
    rm -f "$work"/*.deb
    kdirs=("$work/kernel/lib/modules"/*)
    kver=$(basename "${kdirs[0]}")
    bzimage="$work/kernel/boot/vmlinuz-$kver"
    [ -f "$bzimage" ] || { echo "nested-setup: $bzimage missing" >&2; exit 1; }
    # The vmlinux inside the bzImage is compressed (zstd on current Debian kernels, xz or gzip
    # on older ones): try each format at each of its magic numbers until an ELF comes out.
    extract() { # MAGIC DECOMPRESSOR...
        local magic="$1"; shift
        for off in $(LC_ALL=C grep -obUaP "$magic" "$bzimage" | cut -d: -f1 | head -n 5); do
            tail -c +"$((off + 1))" "$bzimage" | "$@" > "$work/vmlinux" 2>/dev/null || true
            [ "$(head -c4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
        done
        return 1
    }
    extract '\x28\xb5\x2f\xfd' zstd -dcq || extract '\xfd7zXZ\x00' xz -dcq \
        || extract '\x1f\x8b\x08' gzip -dcq \
        || { echo "nested-setup: could not extract vmlinux from $bzimage" >&2; exit 1; }
    cat > "$work/env.sh" <<ENV
KVER=$kver
BZIMAGE=$bzimage
VMLINUX=$work/vmlinux
MODDIR=$work/kernel/lib/modules/$kver/kernel
ENV
    log "kernel $kver unpacked"
fi
lab_env

# L0's initramfs: busybox, the modules L0 needs, and its init.
if [ ! -s "$work/l0-initrd.img" ] || [ "$here/l0-init" -nt "$work/l0-initrd.img" ] \
    || [ "$here/mk-initramfs.sh" -nt "$work/l0-initrd.img" ] || [ "$0" -nt "$work/l0-initrd.img" ]; then
    mods=(irqbypass kvm ccp kvm-amd vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci
          virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
          netfs 9pnet 9pnet_virtio 9p
          tun)
    args=()
    for m in "${mods[@]}"; do args+=(--module "$m"); done
    "$here/mk-initramfs.sh" "$work/l0-initrd.img" "$here/l0-init" "${args[@]}"
    log "L0 initramfs built"
fi
# shellcheck disable=SC2153 # KVER comes from env.sh
log "ready: kernel $KVER, work dir $work"

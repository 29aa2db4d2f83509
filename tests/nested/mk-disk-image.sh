#!/usr/bin/env bash
# Builds the lab's UEFI disk image from Debian packages and the lab kernel, without root or loop
# devices: GPT, an EFI system partition (FAT32: systemd-boot as \EFI\BOOT\BOOTX64.EFI, a loader
# entry, the kernel and a small initrd that mounts the root partition), and an ext4 root file
# system (what mk-initramfs.sh would put in an initramfs: busybox, ROOT_INIT as /init, modules,
# extra files). Rebuilt only when an input is newer.
# Usage: mk-disk-image.sh OUT ROOT_INIT [--module NAME]... [--file SRC:DST]...
# The loader entry's options are "console=ttyS0 intel_iommu=on panic=-1"; set_boot_options
# (lib.sh) rewrites them in a copy of the image.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
out="$1"; root_init="$2"; shift 2
lab_env
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
for t in mkfs.vfat mcopy sfdisk mkfs.ext4; do
    command -v "$t" >/dev/null || { echo "mk-disk-image: $t missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -f "$sdboot" ] || { echo "mk-disk-image: $sdboot missing (apt-get install systemd-boot-efi)" >&2; exit 1; }

inputs=("$root_init" "$0" "$NESTED_DIR/mk-initramfs.sh" "$NESTED_DIR/guest/init-disk-stage1" "$BZIMAGE" "$sdboot")
args=("$@")
while [ $# -gt 0 ]; do
    [ "$1" = --file ] && inputs+=("${2%%:*}")
    shift 2
done
if [ -s "$out" ]; then
    fresh=1
    for i in "${inputs[@]}"; do [ "$i" -nt "$out" ] && fresh=0; done
    [ "$fresh" = 1 ] && exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/disk.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Stage 1: the initrd finds the root partition on the virtio disk and switches to it.
"$NESTED_DIR/mk-initramfs.sh" "$tmp/initrd.img" "$NESTED_DIR/guest/init-disk-stage1" \
    --module virtio_blk --module crc16 --module crc32c_generic --module mbcache --module jbd2 \
    --module ext4 2>/dev/null
# The root file system: the same tree an initramfs of ROOT_INIT would hold.
"$NESTED_DIR/mk-initramfs.sh" "$tmp/root.cpio.gz" "$root_init" "${args[@]}" 2>/dev/null
mkdir "$tmp/root"
(cd "$tmp/root" && gzip -dc ../root.cpio.gz | cpio -id --quiet)
mkfs.ext4 -q -F -L minivmm-root -O ^metadata_csum -d "$tmp/root" "$tmp/root.img" 96M >/dev/null

# The EFI system partition.
esp="$tmp/esp.img"
mkfs.vfat -F 32 -n ESP -C "$esp" $((80 * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$sdboot" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$BZIMAGE" ::/vmlinuz
mcopy -i "$esp" "$tmp/initrd.img" ::/initrd.img
printf 'default minivmm.conf\ntimeout 0\nconsole-mode keep\n' > "$tmp/loader.conf"
mcopy -i "$esp" "$tmp/loader.conf" ::/loader/loader.conf
printf 'title minivmm lab\nlinux /vmlinuz\ninitrd /initrd.img\noptions console=ttyS0 intel_iommu=on panic=-1\n' \
    > "$tmp/entry.conf"
mcopy -i "$esp" "$tmp/entry.conf" ::/loader/entries/minivmm.conf

# GPT: the ESP at 1 MiB, the root partition after it.
esp_start=2048 esp_sectors=$((80 * 2048))
root_start=$((esp_start + esp_sectors)) root_sectors=$((96 * 2048))
total=$(( (root_start + root_sectors + 2048) * 512 ))
rm -f "$tmp/disk.img"
truncate -s "$total" "$tmp/disk.img"
sfdisk -q "$tmp/disk.img" <<PART
label: gpt
start=$esp_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP
start=$root_start, size=$root_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
PART
dd if="$esp" of="$tmp/disk.img" bs=512 seek="$esp_start" conv=notrunc status=none
dd if="$tmp/root.img" of="$tmp/disk.img" bs=512 seek="$root_start" conv=notrunc status=none
mv "$tmp/disk.img" "$out"

#!/usr/bin/env bash
# Builds a gzip'd newc initramfs: busybox (static) with its applets, INIT as /init, kernel
# modules from the unpacked Debian kernel (loaded by init in the order given, from /modules,
# listed in /modules/order), and extra files.
# Usage: mk-initramfs.sh OUT INIT [--module NAME]... [--file SRC:DST]...
# Works on the host and inside L0 (needs only busybox, cpio, gzip, find).
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
out="$1"; init="$2"; shift 2
lab_env
root=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,modules,etc,root,mnt}
cp /bin/busybox "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
cp "$init" "$root/init"
chmod +x "$root/init"
: > "$root/modules/order"
while [ $# -gt 0 ]; do
    case "$1" in
    --module)
        name="$2"; shift 2
        # Module files use either - or _ in their names.
        alt="${name//-/_}"; alt2="${name//_/-}"
        f=$(find "$MODDIR" \( -name "$name.ko*" -o -name "$alt.ko*" -o -name "$alt2.ko*" \) | head -n1)
        if [ -z "$f" ]; then
            echo "mk-initramfs: module $name not in $KVER (built in?), skipped" >&2
            continue
        fi
        base=$(basename "$f")
        case "$f" in
        *.ko.xz) xz -dc "$f" > "$root/modules/${base%.xz}"; base="${base%.xz}" ;;
        *.ko.zst) zstd -qdc "$f" > "$root/modules/${base%.zst}"; base="${base%.zst}" ;;
        *) cp "$f" "$root/modules/$base" ;;
        esac
        echo "$base" >> "$root/modules/order"
        ;;
    --file)
        src="${2%%:*}"; dst="${2#*:}"; shift 2
        mkdir -p "$root/$(dirname "$dst")"
        cp -L "$src" "$root/$dst"
        ;;
    *) echo "mk-initramfs: unknown argument $1" >&2; exit 2 ;;
    esac
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"

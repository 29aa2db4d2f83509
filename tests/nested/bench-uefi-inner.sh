#!/usr/bin/env bash
# Runs inside L0 (see scripts/bench-uefi.sh): boots the lab's UEFI disk image through Debian's
# stock OVMF.fd under minivmm and under QEMU, alternately, after one unmeasured warm-up, each
# with a vIOMMU and the disk on virtio-blk behind it; prints per-run figures and the medians side
# by side: time from the VMM's start to L1's init, and the VMM's peak resident memory.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
# shellcheck source=tests/nested/bench-lib.sh
. "$NESTED_DIR/bench-lib.sh"
: "${MINIVMM:?}"
runs="${BENCH_RUNS:-5}"
ovmf=/usr/share/ovmf/OVMF.fd
# In the work dir, so the logs outlive L0.
tmp="$NESTED_WORKDIR/logs/bench-uefi"; mkdir -p "$tmp"
disk="$NESTED_WORKDIR/uefi-disk.img"
"$NESTED_DIR/mk-disk-image.sh" "$disk" "$NESTED_DIR/guest/init-uefi"
# The disk copy stays in L0's RAM (tmpfs), not on the 9p-shared work dir.
copy="${TMPDIR:-/tmp}/bench-uefi-run.img"
# QEMU's option syntax has commas (SC2054); the *_cmd arrays are used through `declare -n`
# (SC2034).
# shellcheck disable=SC2034
minivmm_cmd=("$MINIVMM" --bios "$ovmf" --disk "path=$copy" --iommu --cpus 2 --memory 1G)
# shellcheck disable=SC2054,SC2034
qemu_cmd=(qemu-system-x86_64 -machine q35,accel=kvm,kernel_irqchip=split -cpu host -smp 2 -m 1G
    -bios "$ovmf" -device intel-iommu,intremap=on,caching-mode=on
    -drive "file=$copy,if=none,id=d0,format=raw"
    -device virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on
    -display none -serial stdio -no-reboot -nodefaults)

start_idle_vm
echo "bench-uefi: warm-up L1 under minivmm (not measured)"
cp "$disk" "$copy"
timed_run "$tmp/warmup.log" "${minivmm_cmd[@]}"
names=(minivmm qemu)
for n in "${names[@]}"; do : > "$tmp/$n.txt"; : > "$tmp/$n.failed"; done
for i in $(seq "$runs"); do
    for n in "${names[@]}"; do
        declare -n cmd="${n}_cmd"
        for attempt in 1 2; do
            cp "$disk" "$copy"
            timed_run "$tmp/$n-$i.log" "${cmd[@]}"
            if [ "$T_INIT" != 0.0 ] && grep -q "^MINIVMM-POWEROFF" "$tmp/$n-$i.log"; then
                echo "$T_INIT $PEAK_MIB" >> "$tmp/$n.txt"
                printf 'bench-uefi: run %s %-8s init %ss, %s MiB\n' "$i" "$n:" "$T_INIT" "$PEAK_MIB"
                break
            fi
            mv "$tmp/$n-$i.log" "$tmp/$n-$i-failed$attempt.log"
            echo x >> "$tmp/$n.failed"
            printf 'bench-uefi: run %s %-8s failed (log %s), not counted\n' "$i" "$n:" "$n-$i-failed$attempt.log"
        done
    done
done
for n in "${names[@]}"; do
    for col in 1 2; do cut -d' ' -f$col "$tmp/$n.txt" | median > "$tmp/$n.$col"; done
done
row() { printf '%-40s %10s %10s\n' "$@"; }
echo
row "median of the runs (same L0)" minivmm qemu
row "OVMF boot to L1 init (s)" "$(cat "$tmp/minivmm.1")" "$(cat "$tmp/qemu.1")"
row "VMM peak RSS (MiB)" "$(cat "$tmp/minivmm.2")" "$(cat "$tmp/qemu.2")"
row "runs counted / failed (lab)" "$(wc -l < "$tmp/minivmm.txt") / $(wc -l < "$tmp/minivmm.failed")" \
    "$(wc -l < "$tmp/qemu.txt") / $(wc -l < "$tmp/qemu.failed")"
ratio=$(echo "scale=2; $(cat "$tmp/minivmm.1") / $(cat "$tmp/qemu.1")" | bc 2>/dev/null || echo "-")
echo "minivmm / QEMU boot time: $ratio (goal <= 0.5)"
stop_idle_vm
cp "$tmp"/*.log "$NESTED_WORKDIR/logs/" 2>/dev/null || true

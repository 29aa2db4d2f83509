#!/usr/bin/env bash
# Runs inside L0 (see scripts/bench-virtio.sh): L1 reads a raw image through virtio-blk under
# minivmm and under QEMU, each with the vIOMMU on (intel_iommu=on in L1, the device behind the
# VT-d translation with ACCESS_PLATFORM) and off, in turn, after one unmeasured warm-up; prints
# per-run figures and the medians side by side, and minivmm's invalidations per I/O. minivmm's
# vIOMMU runs come twice: with caching-mode=on (as QEMU's, which needs it for nothing here but
# is how its vIOMMU is usually run) and with the default caching-mode=auto (off without
# --vfio: L1 invalidates on unmap only). BENCH_CONFIGS picks the configurations (default all:
# minivmm_on minivmm_auto qemu_on minivmm_off qemu_off).
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${MINIVMM:?}" "${BLK_BENCH:?}"
runs="${BENCH_RUNS:-3}"
secs="${BENCH_SECONDS:-5}"
tmp="${TMPDIR:-/tmp}/bench-virtio"; mkdir -p "$tmp"
img="$tmp/l1.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-bench-virtio" --module virtio_blk \
    --file "$BLK_BENCH:/blk-bench" 2>/dev/null
# The image lives in L0's RAM (a tmpfs), so both VMMs read the same bytes at memory speed and
# the figures are the VMMs' and the vIOMMU's costs, not a disk's.
disk=/run/nested-tmp/bench-disk.raw
head -c 128M /dev/urandom > "$disk"
on="console=ttyS0 panic=-1 intel_iommu=on bench_secs=$secs"
off="console=ttyS0 panic=-1 bench_secs=$secs"
k=(--kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M)
# QEMU's option syntax has commas (SC2054); the *_cmd arrays are used through `declare -n`
# (SC2034). minivmm prints its state at exit (RUST_LOG=info): the invalidation count.
# shellcheck disable=SC2034
minivmm_on_cmd=(env RUST_LOG=info "$MINIVMM" "${k[@]}" --iommu caching-mode=on --disk "path=$disk" --cmdline "$on")
# shellcheck disable=SC2034
minivmm_auto_cmd=(env RUST_LOG=info "$MINIVMM" "${k[@]}" --iommu --disk "path=$disk" --cmdline "$on")
# shellcheck disable=SC2034
minivmm_off_cmd=("$MINIVMM" "${k[@]}" --disk "path=$disk" --cmdline "$off")
q=(qemu-system-x86_64 -cpu host -smp 2 -m 512M -kernel "$BZIMAGE" -initrd "$img" -display none
    -serial stdio -no-reboot -nodefaults -drive "file=$disk,if=none,id=d0,format=raw,aio=threads,cache=writeback")
# shellcheck disable=SC2054,SC2034
qemu_on_cmd=("${q[@]}" -machine q35,accel=kvm,kernel_irqchip=split
    -device intel-iommu,intremap=on,caching-mode=on
    -device virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on -append "$on")
# shellcheck disable=SC2054,SC2034
qemu_off_cmd=("${q[@]}" -machine q35,accel=kvm,kernel_irqchip=split
    -device virtio-blk-pci,drive=d0,disable-legacy=on -append "$off")

# one LOG CMD...: runs CMD; prints "MB/s IOPS" (0 0 when L1 printed no figures).
one() {
    local log="$1"; shift
    timeout 600 "$@" > "$log" 2>&1 < /dev/null || true
    local mb iops
    mb=$(sed -n 's/.*MINIVMM-BENCH blk-bench seq-read-1m MB\/s: \([0-9.]*\).*/\1/p' "$log" | head -n1)
    iops=$(sed -n 's/.*MINIVMM-BENCH blk-bench rand-read-4k IOPS: \([0-9]*\).*/\1/p' "$log" | head -n1)
    echo "${mb:-0} ${iops:-0}"
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

start_idle_vm
echo "bench-virtio: warm-up L1 under minivmm (not measured)"
one "$tmp/warmup.log" "${minivmm_on_cmd[@]}" > /dev/null
read -r -a names <<< "${BENCH_CONFIGS:-minivmm_on minivmm_auto qemu_on minivmm_off qemu_off}"
for n in "${names[@]}"; do : > "$tmp/$n.txt"; done
for i in $(seq "$runs"); do
    for n in "${names[@]}"; do
        declare -n cmd="${n}_cmd"
        # A run the lab broke (no figures: an L1 oops or triple fault) is reported, not counted,
        # and run once more.
        for attempt in 1 2; do
            r=$(one "$tmp/$n-$i.log" "${cmd[@]}")
            if [ "$r" != "0 0" ]; then
                echo "$r" >> "$tmp/$n.txt"
                read -r mb iops <<< "$r"
                printf 'bench-virtio: run %s %-12s %8s MB/s %8s IOPS\n' "$i" "$n:" "$mb" "$iops"
                if [ "$n" = minivmm_on ] || [ "$n" = minivmm_auto ]; then
                    inv=$(grep -m1 "tail writes handled" "$tmp/$n-$i.log" | grep -oE "[0-9]+ invalidation queue" | cut -d' ' -f1 || true)
                    echo "bench-virtio: run $i $n: ${inv:-?} queued invalidations in the whole run"
                fi
                break
            fi
            mv "$tmp/$n-$i.log" "$tmp/$n-$i-failed$attempt.log"
            echo "bench-virtio: run $i $n failed (log $tmp/$n-$i-failed$attempt.log), not counted"
        done
    done
done
for n in "${names[@]}"; do
    for col in 1 2; do cut -d' ' -f$col "$tmp/$n.txt" | median > "$tmp/$n.$col"; done
done
row() { printf '%-44s %10s %10s\n' "$@"; }
ratio() { # A / B, or - when a configuration was not run
    case "$1 $2" in *-*) echo - ;; *) echo "scale=2; $1 / $2" | bc 2>/dev/null || echo "?" ;; esac
}
for n in minivmm_on minivmm_auto qemu_on minivmm_off qemu_off; do
    for col in 1 2; do [ -s "$tmp/$n.$col" ] || echo - > "$tmp/$n.$col"; done
    [ -e "$tmp/$n.txt" ] || : > "$tmp/$n.txt"
done
echo
row "median of the runs (same L0)" minivmm qemu
row "seq read 1 MiB O_DIRECT, vIOMMU on (MB/s)" "$(cat "$tmp/minivmm_on.1")" "$(cat "$tmp/qemu_on.1")"
row "  minivmm caching-mode=auto (off) (MB/s)" "$(cat "$tmp/minivmm_auto.1")" -
row "seq read 1 MiB O_DIRECT, vIOMMU off (MB/s)" "$(cat "$tmp/minivmm_off.1")" "$(cat "$tmp/qemu_off.1")"
row "rand read 4 KiB, 4 jobs, vIOMMU on (IOPS)" "$(cat "$tmp/minivmm_on.2")" "$(cat "$tmp/qemu_on.2")"
row "  minivmm caching-mode=auto (off) (IOPS)" "$(cat "$tmp/minivmm_auto.2")" -
row "rand read 4 KiB, 4 jobs, vIOMMU off (IOPS)" "$(cat "$tmp/minivmm_off.2")" "$(cat "$tmp/qemu_off.2")"
row "vIOMMU on / off, seq read" "$(ratio "$(cat "$tmp/minivmm_on.1")" "$(cat "$tmp/minivmm_off.1")")" \
    "$(ratio "$(cat "$tmp/qemu_on.1")" "$(cat "$tmp/qemu_off.1")")"
row "vIOMMU on / off, rand read" "$(ratio "$(cat "$tmp/minivmm_on.2")" "$(cat "$tmp/minivmm_off.2")")" \
    "$(ratio "$(cat "$tmp/qemu_on.2")" "$(cat "$tmp/qemu_off.2")")"
row "minivmm / qemu, vIOMMU on (seq, rand)" "$(ratio "$(cat "$tmp/minivmm_on.1")" "$(cat "$tmp/qemu_on.1")")" \
    "$(ratio "$(cat "$tmp/minivmm_on.2")" "$(cat "$tmp/qemu_on.2")")"
row "runs counted (on/auto/off)" "$(wc -l < "$tmp/minivmm_on.txt")/$(wc -l < "$tmp/minivmm_auto.txt")/$(wc -l < "$tmp/minivmm_off.txt")" \
    "$(wc -l < "$tmp/qemu_on.txt")/$(wc -l < "$tmp/qemu_off.txt")"
stop_idle_vm
rm -f "$disk"

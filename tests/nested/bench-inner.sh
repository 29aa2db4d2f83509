#!/usr/bin/env bash
# Runs inside L0 (see scripts/bench.sh): boots L1 with the passed-through edu behind a vIOMMU,
# under minivmm and under QEMU, alternately, after one unmeasured warm-up; prints per-run
# figures and the medians side by side: time to L1's init, L1's VFIO map+unmap rate of 4 KiB
# pages through the vIOMMU, and the VMM's peak resident memory.
set -euo pipefail
: "${MINIVMM:?}" "${EDU_BDF:?}" "${EDU_VFIO_TEST:?}"
runs="${BENCH_RUNS:-3}"
tmp="${TMPDIR:-/tmp}/bench"; mkdir -p "$tmp"
img="$tmp/l1-bench.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-bench" \
    --module irqbypass --module vfio --module vfio_iommu_type1 --module vfio-pci-core \
    --module vfio-pci --file "$EDU_VFIO_TEST:/edu-vfio-test" 2>/dev/null
cmdline="console=ttyS0 intel_iommu=on panic=-1"
minivmm_cmd=("$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M
    --iommu --vfio "$EDU_BDF" --cmdline "$cmdline")
qemu_cmd=(qemu-system-x86_64 -machine q35,accel=kvm,kernel_irqchip=split -cpu host -smp 2 -m 512M
    -device intel-iommu,intremap=on,caching-mode=on -device "vfio-pci,host=$EDU_BDF"
    -kernel "$BZIMAGE" -initrd "$img" -append "$cmdline" -display none -serial stdio
    -no-reboot -nodefaults)

# one NAME LOG CMD...: runs CMD; prints "seconds-to-init pairs-per-second peak-rss-MiB".
one() {
    local log="$2"; shift 2
    local start t_init="" peak=0 rss pid
    start=$(date +%s.%N)
    timeout 600 "$@" > "$log" 2>&1 < /dev/null &
    pid=$!
    while kill -0 $pid 2>/dev/null; do
        if [ -z "$t_init" ] && grep -q "^MINIVMM-L1-UP" "$log"; then
            t_init=$(echo "$(date +%s.%N) - $start" | bc)
        fi
        for p in $(pgrep -P $pid) $pid; do
            rss=$(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0)
            [ "${rss:-0}" -gt "$peak" ] && peak=$rss
        done
        sleep 0.1
    done
    wait $pid || true
    local rate
    rate=$(sed -n 's/.*map+unmap pairs per second: \([0-9]*\).*/\1/p' "$log" | head -n1)
    printf '%.1f %s %d\n' "${t_init:-0}" "${rate:-0}" $((peak / 1024))
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "bench: warm-up L1 under minivmm (not measured)"
one minivmm "$tmp/warmup.log" "${minivmm_cmd[@]}" > /dev/null
: > "$tmp/minivmm.txt"; : > "$tmp/qemu.txt"
for i in $(seq "$runs"); do
    r=$(one minivmm "$tmp/minivmm-$i.log" "${minivmm_cmd[@]}"); echo "$r" >> "$tmp/minivmm.txt"
    echo "bench: run $i minivmm: init ${r%% *}s, $(cut -d' ' -f2 <<< "$r") map+unmap/s, $(cut -d' ' -f3 <<< "$r") MiB"
    r=$(one qemu "$tmp/qemu-$i.log" "${qemu_cmd[@]}"); echo "$r" >> "$tmp/qemu.txt"
    echo "bench: run $i qemu:    init ${r%% *}s, $(cut -d' ' -f2 <<< "$r") map+unmap/s, $(cut -d' ' -f3 <<< "$r") MiB"
done
for f in minivmm qemu; do
    for col in 1 2 3; do cut -d' ' -f$col "$tmp/$f.txt" | median > "$tmp/$f.$col"; done
done
printf '\n%-34s %12s %12s\n' "median of $runs runs (same L0)" minivmm qemu
printf '%-34s %12s %12s\n' "L1 boot to init (s)" "$(cat "$tmp/minivmm.1")" "$(cat "$tmp/qemu.1")"
printf '%-34s %12s %12s\n' "L1 VFIO map+unmap 4 KiB (pairs/s)" "$(cat "$tmp/minivmm.2")" "$(cat "$tmp/qemu.2")"
printf '%-34s %12s %12s\n' "VMM peak RSS (MiB)" "$(cat "$tmp/minivmm.3")" "$(cat "$tmp/qemu.3")"
cp "$tmp"/*.log "$NESTED_WORKDIR/logs/" 2>/dev/null || true

#!/usr/bin/env bash
# Runs inside L0 (see scripts/bench.sh): boots L1 with the passed-through edu behind a vIOMMU,
# under minivmm and under QEMU, alternately, after one unmeasured warm-up; prints per-run
# figures and the medians side by side: time to L1's init, L1's VFIO map+unmap rate of 4 KiB
# pages through the vIOMMU, and the VMM's peak resident memory. Two more columns, for reference:
# minivmm with its emulated edu instead of the physical one, whose map+unmap rate is what L1
# reaches when no host VFIO call is made at all (the floor the guest side sets), with the
# default caching-mode=auto (off without --vfio: L1 invalidates on unmap only) and with
# caching-mode=on (an invalidation on map too, as with VFIO). Then where minivmm's time per
# invalidation goes (its state dump at exit: the IQT write's phases and the vCPU exits on the
# VT-d registers).
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${MINIVMM:?}" "${EDU_BDF:?}" "${EDU_VFIO_TEST:?}"
runs="${BENCH_RUNS:-3}"
tmp="${TMPDIR:-/tmp}/bench"; mkdir -p "$tmp"
img="$tmp/l1-bench.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-bench" \
    --module irqbypass "${L1_VFIO_MODULES[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test" 2>/dev/null
cmdline="console=ttyS0 intel_iommu=on panic=-1"
# minivmm prints its state at exit (the cost of its VFIO calls and register writes).
# QEMU's option syntax has commas (SC2054); the *_cmd arrays are used through `declare -n`
# (SC2034).
# BENCH_MINIVMM_ARGS: extra minivmm flags for both minivmm columns (e.g. --seccomp=off, to
# measure what the sandbox costs).
read -r -a extra <<< "${BENCH_MINIVMM_ARGS:-}"
# shellcheck disable=SC2054,SC2034
minivmm_cmd=(env RUST_LOG=info,vfio_ioctls=error "$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M
    --iommu --vfio "$EDU_BDF" --cmdline "$cmdline" "${extra[@]}")
# shellcheck disable=SC2054,SC2034
qemu_cmd=(qemu-system-x86_64 -machine q35,accel=kvm,kernel_irqchip=split -cpu host -smp 2 -m 512M
    -device intel-iommu,intremap=on,caching-mode=on -device "vfio-pci,host=$EDU_BDF"
    -kernel "$BZIMAGE" -initrd "$img" -append "$cmdline" -display none -serial stdio
    -no-reboot -nodefaults)
# shellcheck disable=SC2034
emulated_cmd=(env RUST_LOG=info "$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M
    --iommu --device edu --cmdline "$cmdline" "${extra[@]}")
# shellcheck disable=SC2034
emulatedcm_cmd=(env RUST_LOG=info "$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M
    --iommu caching-mode=on --device edu --cmdline "$cmdline" "${extra[@]}")

# one NAME LOG CMD...: runs CMD; prints "seconds-to-init pairs-per-second peak-rss-MiB".
# Measuring must not load the lab (L0 emulates every instruction): the console is read by a
# bash loop that only uses builtins ($EPOCHREALTIME, read), and the VMM's memory is sampled
# twice a second from /proc with builtins too; nothing is forked while the VM runs.
children() { # PID: the first child of PID (from /proc, no fork)
    local c=""
    read -r c _ < "/proc/$1/task/$1/children" 2>/dev/null || true
    printf -v REPLY '%s' "$c"
}
one() {
    local log="$2"; shift 2
    local start=$EPOCHREALTIME t_init="" peak=0 line k v vmm="" rc out sub
    exec {out}< <(exec timeout 600 "$@" 2>&1 < /dev/null)
    sub=$!
    : > "$log"
    while :; do
        rc=0
        IFS= read -r -t 0.5 line <&"$out" || rc=$?
        if [ $rc -eq 0 ]; then
            printf '%s\n' "$line" >> "$log"
            if [ -z "$t_init" ] && [[ $line == MINIVMM-L1-UP* ]]; then t_init=$EPOCHREALTIME; fi
        elif [ $rc -le 128 ]; then
            [ -n "$line" ] && printf '%s\n' "$line" >> "$log"
            break
        fi
        if [ -z "$vmm" ]; then children "$sub"; vmm=$REPLY; fi
        if [ -n "$vmm" ] && [ -r "/proc/$vmm/status" ]; then
            while read -r k v _; do
                if [ "$k" = VmRSS: ] && [ "$v" -gt "$peak" ]; then peak=$v; fi
            done < "/proc/$vmm/status"
        fi
    done
    exec {out}<&-
    wait "$sub" 2>/dev/null || true
    local rate secs=0
    rate=$(sed -n 's/.*map+unmap pairs per second: \([0-9]*\).*/\1/p' "$log" | head -n1)
    [ -n "$t_init" ] && secs=$(echo "$t_init - $start" | bc)
    printf '%.1f %s %d\n' "$secs" "${rate:-0}" $((peak / 1024))
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# An idle VM held for the whole run keeps L0's KVM static keys from toggling with every L1
# (tests/payloads/idle.S says why; without it L0 itself sometimes dies mid-benchmark).
start_idle_vm
echo "bench: warm-up L1 under minivmm (not measured)"
one minivmm "$tmp/warmup.log" "${minivmm_cmd[@]}" > /dev/null
names=(minivmm qemu emulated emulatedcm)
for n in "${names[@]}"; do : > "$tmp/$n.txt"; : > "$tmp/$n.failed"; done
for i in $(seq "$runs"); do
    for n in "${names[@]}"; do
        declare -n cmd="${n}_cmd"
        # A run that never reached init or printed no rate (the lab's own L1 failures: an
        # "Oops: int3" or a triple fault, see the README) is reported, kept as -failed.log,
        # left out of the medians and run once more.
        for attempt in 1 2; do
            r=$(one "$n" "$tmp/$n-$i.log" "${cmd[@]}")
            read -r t p m <<< "$r"
            if [ "$t" != 0.0 ] && [ "$p" != 0 ]; then
                echo "$r" >> "$tmp/$n.txt"
                printf 'bench: run %s %-8s init %ss, %s map+unmap/s, %s MiB\n' "$i" "$n:" "$t" "$p" "$m"
                break
            fi
            mv "$tmp/$n-$i.log" "$tmp/$n-$i-failed$attempt.log"
            echo x >> "$tmp/$n.failed"
            why=$(grep -m1 -oE "Oops: int3|triple-faulted|Kernel panic[^]]*" "$tmp/$n-$i-failed$attempt.log" || true)
            printf 'bench: run %s %-8s failed (%s; log %s), not counted\n' "$i" "$n:" \
                "${why:-no init marker or rate}" "$n-$i-failed$attempt.log"
        done
    done
done
for n in "${names[@]}"; do
    for col in 1 2 3; do cut -d' ' -f$col "$tmp/$n.txt" | median > "$tmp/$n.$col"; done
done
row() { printf '%-36s %10s %10s %16s %16s\n' "$@"; }
cell() { # COL: the medians of every column
    local n out=()
    for n in "${names[@]}"; do out+=("$(cat "$tmp/$n.$1")"); done
    printf '%s\n' "${out[@]}"
}
counted() {
    local n
    for n in "${names[@]}"; do echo "$(wc -l < "$tmp/$n.txt") / $(wc -l < "$tmp/$n.failed")"; done
}
echo
row "median of the runs (same L0)" minivmm qemu "(emulated edu)" "(edu, CM on)"
mapfile -t c < <(cell 1); row "L1 boot to init (s)" "${c[@]}"
mapfile -t c < <(cell 2); row "L1 VFIO map+unmap 4 KiB (pairs/s)" "${c[@]}"
mapfile -t c < <(cell 3); row "VMM peak RSS (MiB)" "${c[@]}"
mapfile -t c < <(counted); row "runs counted / failed (lab)" "${c[@]}"
# Where one invalidation's time goes: the IQT write's phases in minivmm, the host ioctls, and
# the exits on the VT-d registers (time in KVM_RUN before each, in minivmm after each).
for n in minivmm emulated emulatedcm; do
    for i in $(seq "$runs"); do
        for what in "tail writes handled" "invalidation breakdown" VFIO_IOMMU_MAP_DMA; do
            grep -h -m1 "$what" "$tmp/$n-$i.log" 2>/dev/null | sed "s/^ */$n cost (run $i): /" || true
        done
        grep -h "^ *vCPU exits vtd-" "$tmp/$n-$i.log" 2>/dev/null | sed "s/^ */$n cost (run $i): /" || true
    done
done
cp "$tmp"/*.log "$NESTED_WORKDIR/logs/" 2>/dev/null || true

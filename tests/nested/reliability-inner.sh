#!/usr/bin/env bash
# Runs inside L0 (see scripts/lab-reliability.sh): boots the same L1 (Debian kernel, 2 vCPUs,
# 512 MiB, an init that prints a marker and its CPUID flags and powers off) RELIABILITY_RUNS
# times under minivmm and as many times under QEMU-KVM, alternately (the order flips each
# round) after one unmeasured warm-up, and counts per VMM: clean boots, triple faults, the
# lab's "Oops: int3", timeouts and other failures. Boot times (start to exit) go into medians.
#
# How a triple fault shows:
#   minivmm: "minivmm: the guest triple-faulted" on stderr.
#   QEMU:    with -no-reboot, KVM's SHUTDOWN exit becomes a reset request, which QEMU turns into
#            a shutdown without calling qemu_system_shutdown_request (only a guest poweroff,
#            a signal or QMP call that), so the trace shows "runstate_set ... new_state 11
#            (shutdown)" with no "qemu_system_shutdown_request" line before it, and L1's console
#            has neither a poweroff nor a panic/restart line.
#   Both are checked first, with tests/payloads/triple-fault.S (lidt of an empty IDT, int3).
#
# Results go to $NESTED_WORKDIR/reliability/results (one line per boot) and logs to
# $NESTED_WORKDIR/reliability/logs; if L0 dies and run-l0.sh boots it again, the check resumes
# where it stopped. RELIABILITY_UNTIL (epoch seconds) stops starting rounds after that time.
set -uo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${MINIVMM:?}" "${BZIMAGE:?}" "${NESTED_WORKDIR:?}" "${NESTED_DIR:?}"
runs="${RELIABILITY_RUNS:-30}"
until_s="${RELIABILITY_UNTIL:-0}"
boot_timeout=300
out="$NESTED_WORKDIR/reliability"
logs="$out/logs"
results="$out/results"
mkdir -p "$logs"
touch "$results"
echo "l0-boot $(date -u +%T)" >> "$out/l0-boots"
l0_boots=$(wc -l < "$out/l0-boots")
[ "$l0_boots" -gt 1 ] && echo "reliability: L0 boot $l0_boots: resuming after $(wc -l < "$results") recorded boots"

tmp="${TMPDIR:-/tmp}/reliability"; mkdir -p "$tmp"
img="$tmp/l1-reliability.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-reliability" 2>/dev/null
cmdline="console=ttyS0 panic=-1"
minivmm_cmd=("$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M
    --cmdline "$cmdline")
# As in bench-inner.sh, minus the vIOMMU and the passed-through device (this L1 has neither):
# a split irqchip, as minivmm uses.
# QEMU's option syntax has commas.
# shellcheck disable=SC2054
qemu_base=(qemu-system-x86_64 -machine q35,accel=kvm,kernel_irqchip=split -cpu host -smp 2
    -m 512M -display none -serial stdio -no-reboot -nodefaults
    -trace qemu_system_shutdown_request -trace runstate_set)
# shellcheck disable=SC2034 # used through `declare -n`
qemu_cmd=("${qemu_base[@]}" -kernel "$BZIMAGE" -initrd "$img" -append "$cmdline")

# boot LOG CMD...: runs CMD with console and stderr in LOG (on L0's tmpfs, copied to the work
# dir after); prints "exit-status seconds".
boot() {
    local log="$1" start rc
    shift
    start=$EPOCHREALTIME
    timeout -k 5 "$boot_timeout" "$@" > "$tmp/run.log" 2>&1 < /dev/null
    rc=$?
    echo "--- exited $rc" >> "$tmp/run.log"
    cp "$tmp/run.log" "$log"
    printf '%s %.1f\n' "$rc" "$(echo "$EPOCHREALTIME - $start" | bc)"
}

# classify VMM LOG RC: clean | triple-fault | int3 | timeout | other
classify() {
    local vmm="$1" log="$2" rc="$3"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo timeout; return; fi
    if grep -q "Oops: int3" "$log"; then echo int3; return; fi
    if [ "$vmm" = minivmm ]; then
        if grep -q "minivmm: the guest triple-faulted" "$log"; then echo triple-fault; return; fi
    else
        if [ "$rc" = 0 ] && grep -q "new_state 11 (shutdown)" "$log" \
            && ! grep -q "qemu_system_shutdown_request" "$log" \
            && ! grep -qE "reboot: (Power down|Restarting)|Kernel panic" "$log"; then
            echo triple-fault; return
        fi
    fi
    if [ "$rc" = 0 ] && grep -q "^MINIVMM-L1-UP" "$log" && grep -q "reboot: Power down" "$log"; then
        echo clean; return
    fi
    echo other
}

# An idle VM held for the whole run keeps L0's KVM static keys from toggling (idle.S says why).
start_idle_vm

if [ ! -s "$out/detection" ]; then
    # The detection itself, on a payload that triple-faults at once.
    tf="$NESTED_WORKDIR/triple-fault.elf"
    read -r rc _ < <(boot "$logs/detect-minivmm.log" "$MINIVMM" --kernel "$tf" --memory 32M)
    echo "detection: minivmm on triple-fault.elf: exit $rc, $(classify minivmm "$logs/detect-minivmm.log" "$rc")" | tee -a "$out/detection"
    read -r rc _ < <(boot "$logs/detect-qemu.log" "${qemu_base[@]}" -m 32M -kernel "$tf")
    echo "detection: qemu on triple-fault.elf: exit $rc, $(classify qemu "$logs/detect-qemu.log" "$rc")" | tee -a "$out/detection"
else
    cat "$out/detection"
fi

echo "reliability: warm-up L1 under minivmm (not counted)"
read -r rc secs < <(boot "$logs/warmup-l0boot$l0_boots.log" "${minivmm_cmd[@]}")
echo "reliability: warm-up: exit $rc, $(classify minivmm "$logs/warmup-l0boot$l0_boots.log" "$rc"), ${secs}s"

for i in $(seq "$runs"); do
    if [ "$until_s" != 0 ] && [ "$(date +%s)" -ge "$until_s" ]; then
        echo "reliability: time budget reached before round $i; stopping"
        echo "budget $i" >> "$out/stopped"
        break
    fi
    order=(minivmm qemu)
    [ $((i % 2)) = 0 ] && order=(qemu minivmm)
    for vmm in "${order[@]}"; do
        # Resuming in a new L0: boots already recorded are not run again.
        grep -q "^$vmm $i " "$results" && continue
        declare -n cmd="${vmm}_cmd"
        log="$logs/$vmm-$i.log"
        read -r rc secs < <(boot "$log" "${cmd[@]}")
        class=$(classify "$vmm" "$log" "$rc")
        echo "$vmm $i $class $secs $rc l0boot=$l0_boots" >> "$results"
        line=""
        if [ "$class" != clean ]; then
            # Where L1 was: its last console line before the end.
            line=$(grep -vE "^(--- exited|runstate_set|qemu_system_shutdown_request|minivmm:|qemu-system)" "$log" | tail -n1 | cut -c1-100)
            line=" (last L1 line: $line)"
        fi
        printf 'reliability: round %s %-8s %-12s %6ss exit %s%s\n' "$i" "$vmm:" "$class" "$secs" "$rc" "$line"
    done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
count() { awk -v v="$1" -v c="$2" '$1==v && $3==c' "$results" | wc -l; }
row() { printf '%-32s %10s %10s\n' "$@"; }
echo
row "L1 boots (same L0)" minivmm qemu
row "boots" "$(awk '$1=="minivmm"' "$results" | wc -l)" "$(awk '$1=="qemu"' "$results" | wc -l)"
for c in clean triple-fault int3 timeout other; do
    row "  $c" "$(count minivmm $c)" "$(count qemu $c)"
done
row "median start-to-exit, clean (s)" \
    "$(awk '$1=="minivmm" && $3=="clean" {print $4}' "$results" | median)" \
    "$(awk '$1=="qemu" && $3=="clean" {print $4}' "$results" | median)"
echo "L0 boots: $l0_boots; logs in $logs"
# CPUID as L1 saw it under each VMM (first clean boot of each): flags one VMM gives and the other not.
for vmm in minivmm qemu; do
    f=$(awk -v v=$vmm '$1==v && $3=="clean" {print $2; exit}' "$results")
    [ -n "$f" ] && grep -m1 "^MINIVMM-L1-CPUINFO flags" "$logs/$vmm-$f.log" | cut -d: -f2 | tr ' ' '\n' | sed '/^$/d' | sort > "$out/flags-$vmm"
done
if [ -s "$out/flags-minivmm" ] && [ -s "$out/flags-qemu" ]; then
    echo "CPUID flags only under minivmm: $(comm -23 "$out/flags-minivmm" "$out/flags-qemu" | tr '\n' ' ')"
    echo "CPUID flags only under qemu:    $(comm -13 "$out/flags-minivmm" "$out/flags-qemu" | tr '\n' ' ')"
fi
exit 0

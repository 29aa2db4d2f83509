# shellcheck shell=bash
# Helpers for nested scenarios (sourced inside L0 by inner-all.sh).
# Each scenario is tests/nested/scenarios/NN-name.sh, run with bash; exit 0 means pass.
# Available: $MINIVMM, $MINIVMM_STATIC, $EDU_VFIO_TEST, $BZIMAGE, $MODDIR, $EDU_BDF, $NESTED_DIR, $NESTED_WORKDIR, $LOGDIR,
# and what common.sh defines (L1_VFIO_MODULES, ...).
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"

# l1_initramfs OUT INIT [mk-initramfs args...]
l1_initramfs() {
    "$NESTED_DIR/mk-initramfs.sh" "$@" 2>/dev/null
}

# run_l1 LOG TIMEOUT [minivmm args...]: runs minivmm with the guest console in LOG and its own
# stderr appended after it (kept apart while it runs, so log lines cannot split console lines);
# returns its exit status (124 on timeout). A run the lab broke is run once more
# (retry_on_flake).
run_l1() {
    retry_on_flake "$1" run_l1_once "$@"
}

# run_l1_once LOG TIMEOUT [minivmm args...]: run_l1 without the retry.
run_l1_once() {
    local log="$1" t="$2" rc
    shift 2
    set +e
    timeout -k 5 "$t" "$MINIVMM" "$@" > "$log" 2> "$log.stderr" < /dev/null
    rc=$?
    set -e
    { echo "--- minivmm stderr"; cat "$log.stderr"; echo "minivmm exited $rc"; } >> "$log"
    rm -f "$log.stderr"
    return $rc
}

# retry_on_flake LOG CMD...: runs CMD, which writes LOG. If LOG then shows a lab flake
# (lab_flake), LOG is kept as *-flake.log, a note goes to stderr and CMD runs once more: at
# most two runs in all. Returns CMD's last status. Sets RETRY_NOTE to " (retried once after a
# lab flake: SIGNATURE)" after a retry, to "" otherwise. This is the lab's only L1 retry.
RETRY_NOTE=""
retry_on_flake() {
    local log="$1" flake sig rc=0
    shift
    RETRY_NOTE=""
    "$@" || rc=$?
    lab_flake "$log" || return $rc
    flake="${log%.log}-flake.log"
    mv "$log" "$flake"
    sig=$(grep -m1 -oE "Oops: int3|triple-faulted|timer wakeup didn.t happen" "$flake")
    RETRY_NOTE=" (retried once after a lab flake: $sig)"
    echo "note: $(basename "$log"): retried once after a lab flake ($sig)" >&2
    rc=0
    "$@" || rc=$?
    return $rc
}

# expect LOG PATTERN [what]: fails with a message unless LOG matches PATTERN (grep -E).
expect() {
    if ! grep -qE "$2" "$1"; then
        echo "expected ${3:-$2} in $1"
        return 1
    fi
}

# reject LOG PATTERN [what]: fails if LOG matches PATTERN.
reject() {
    if grep -qE "$2" "$1"; then
        echo "unexpected ${3:-$2} in $1: $(grep -m1 -E "$2" "$1")"
        return 1
    fi
}

# lab_flake LOG: whether LOG shows the lab's known TCG failure: a kernel oops on an int3 left
# behind by cross-CPU code patching (text_poke_bp), seen in L0 and L1 alike under multi-threaded
# TCG with nested SVM. Scenarios retry a run once when it shows this, and say so.
lab_flake() {
    grep -q "Oops: int3" "$1" && return 0
    # An L1 that triple-faults at a random point of its boot: a few times in dozens of runs,
    # in any scenario, never twice in a row; L1s under QEMU-KVM in the same L0 do it too (the
    # README's "Lab reliability"). A genuine fault would fail the retry too.
    grep -q "minivmm: the guest triple-faulted" "$1" && return 0
    # An L1 whose CPU stops taking its (in-kernel LAPIC) timer interrupt while the other CPU
    # waits in text_poke_bp: the lab's reliability check saw the same stall under QEMU-KVM
    # (scripts/lab-reliability.sh), so it is the lab's nested SVM, not the VMM.
    grep -q "rcu_preempt kthread timer wakeup didn't happen" "$1"
}

# check_vtd_l1 AW MODE [emulated] LOG: the checks every VT-d L1 run shares (init-iommu's output).
# With "emulated" the blocked DMA must also show as a DMAR fault in L1's log (an emulated
# device's DMA goes through minivmm's unit; a physical device's is stopped by the host IOMMU).
check_vtd_l1() {
    # Every check ends in "|| return 1": callers run this where errexit does not apply.
    local aw="$1" mode="$2" emulated="" log
    [ "$3" = emulated ] && { emulated=1; shift; }
    log="$3"
    expect "$log" "^MINIVMM-L1-UP" "the init marker" || return 1
    expect "$log" "DMAR: IOMMU enabled" "'DMAR: IOMMU enabled'" || return 1
    expect "$log" "DMAR: Host address width $aw" "host address width $aw" || return 1
    expect "$log" "DMAR: DRHD base: 0x000000fed90000 flags: 0x1" "the DRHD line" || return 1
    expect "$log" "DMAR-IR: IOAPIC id 0 under DRHD base +0xfed90000 IOMMU 0" "the IOAPIC scope line" || return 1
    expect "$log" "DMAR-IR: Enabled IRQ remapping in $mode mode" "IR in $mode mode" || return 1
    expect "$log" "DMAR: dmar0: Using Queued invalidation" "queued invalidation" || return 1
    expect "$log" "DMAR: Intel\(R\) Virtualization Technology for Directed I/O" "the VT-d banner" || return 1
    reject "$log" "MINIVMM-INSMOD-FAILED" "a module load failure" || return 1
    # One group per device, every device in one.
    reject "$log" "^MINIVMM-GROUP .* group=none" "a device without an IOMMU group" || return 1
    local groups devices
    devices=$(grep -c "^MINIVMM-GROUP " "$log")
    groups=$(grep "^MINIVMM-GROUP " "$log" | sed 's/.*group=//' | sort -u | wc -l)
    if [ "$devices" -lt 2 ] || [ "$devices" != "$groups" ]; then echo "$devices devices in $groups groups"; return 1; fi
    expect "$log" "^MINIVMM-EDU .* driver=vfio-pci" "edu bound to vfio-pci" || return 1
    expect "$log" "^MINIVMM-TEST PASS dma" "the DMA round trip" || return 1
    expect "$log" "^MINIVMM-TEST PASS unmapped-dma-blocked" "unmapped DMA blocked" || return 1
    expect "$log" "^MINIVMM-TEST PASS dma-2m" "DMA through a 2 MiB superpage mapping" || return 1
    expect "$log" "^MINIVMM-TEST PASS intx" "INTx through the IOAPIC and interrupt remapping" || return 1
    expect "$log" "^MINIVMM-TEST PASS msi" "MSI through interrupt remapping" || return 1
    expect "$log" "^MINIVMM-TEST PASS map-unmap-bench" "the map/unmap run" || return 1
    expect "$log" "^MINIVMM-TEST edu-vfio-test: [0-9]+ passed, 0 failed" "no test failure" || return 1
    if [ -n "$emulated" ]; then
        # The unmapped DMA was a device write to a page without W: fault reason 5, in L1's log.
        expect "$log" "DMAR: \[DMA Write NO_PASID\] Request device \[00:01.0\] fault addr 0x[0-9a-f]+ \[fault reason 0x05\]" "the DMAR fault for the blocked DMA" || return 1
        expect "$log" "MINIVMM-IRQ .*DMAR-MSI" "the DMAR fault interrupt" || return 1
    fi
    reject "$log" "vt-d: interrupt .* blocked" "a blocked interrupt" || return 1
    expect "$log" "reboot: Power down" "an ACPI poweroff" || return 1
    grep -m1 "^MINIVMM-TEST map+unmap pairs per second" "$log" | sed 's/^MINIVMM-TEST //'
}

# check_nvme LOG: the passed-through NVMe controller worked in L1 (check_nvme_l1 prints
# MINIVMM-NVME lines): namespace found, first sector read, a sector written and read back,
# its interrupts on MSI-X vectors that fired.
check_nvme() {
    local log="$1"
    expect "$log" "^MINIVMM-NVME .* driver=nvme .*disk=present" "the NVMe namespace" || return 1
    expect "$log" "^MINIVMM-NVME-READ MINIVMM-NVME-DISK sector 0" "the disk's first sector" || return 1
    expect "$log" "^MINIVMM-NVME-WRITE ok" "a written sector read back" || return 1
    # At least one MSI-X vector of the controller took interrupts.
    grep "^MINIVMM-NVME-IRQ" "$log" | grep "PCI-MSIX" | awk '{s=0; for (i=3; i<=NF && $i ~ /^[0-9]+$/; i++) s+=$i; if (s>0) ok=1} END {exit !ok}' \
        || { echo "no NVMe MSI-X interrupt in $log"; return 1; }
    echo "nvme: $(grep -c '^MINIVMM-NVME-IRQ.*PCI-MSIX' "$log") MSI-X vectors"
}

# l1_variant LOG NAME "CHECK ARGS" MINIVMM-ARGS...: runs one L1 with minivmm (run_l1, so a run
# the lab broke is run once more), then CHECK ARGS LOG; prints "NAME: ok, <check's last line>"
# or "NAME: <why>" and returns non-zero. After a retry the line says so.
l1_variant() {
    local log="$1" name="$2" check="$3" out="" rc=0
    shift 3
    run_l1 "$log" 480 "$@" || rc=$?
    # $check is a command and its first arguments, split on purpose.
    if [ $rc -eq 0 ] && out=$($check "$log"); then
        echo "$name: ok${out:+, $(tail -n1 <<< "$out")}$RETRY_NOTE"
        return 0
    fi
    [ $rc -eq 0 ] || out="minivmm exited $rc"
    echo "$name: $out$RETRY_NOTE"
    return 1
}

# set_boot_options IMAGE OPTIONS: the kernel command line of the loader entry in a disk image
# made by mk-disk-image.sh (its ESP starts at sector 2048).
set_boot_options() {
    local entry
    entry=$(mktemp "${TMPDIR:-/tmp}/entry.XXXXXX")
    printf 'title minivmm lab\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$2" > "$entry"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$1@@$((2048 * 512))" "$entry" ::/loader/entries/minivmm.conf
    rm -f "$entry"
}

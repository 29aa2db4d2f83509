#!/usr/bin/env bash
# Boots the simulated host L0 (QEMU TCG, -cpu max with nested SVM, intel-iommu, edu) and runs
# SCRIPT inside it, with this machine's root as its root, with the work dir mounted read-write at
# the same path. Streams all output; exits with SCRIPT's status. SCRIPT is copied into the
# work dir first (L0's /tmp is private), so it may live anywhere.
# Usage: run-l0.sh [--timeout SECS] SCRIPT [ARGS...]
# L0's QEMU is the lab's own build (build-l0-qemu.sh: Debian's 10.0.2 with the CR8 lock fix that
# UEFI in L1 needs), or $L0_QEMU when set (L0_QEMU=qemu-system-x86_64: Debian's package).
# Inside, SCRIPT sees: EDU_BDF (the edu device) and NVME_BDF (an NVMe controller with a 1 MiB
# disk, MSI-X), both bound to vfio-pci, NESTED_WORKDIR, and the
# variables of $NESTED_WORKDIR/env.sh (KVER, BZIMAGE, VMLINUX, MODDIR), plus MINIVMM,
# EDU_VFIO_TEST, LAB_PASST, SCENARIOS and RUST_LOG when set.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
here="$NESTED_DIR"
work="$NESTED_WORKDIR"
timeout=1200
if [ "${1:-}" = --timeout ]; then timeout="$2"; shift 2; fi
[ $# -ge 1 ] || { echo "usage: run-l0.sh [--timeout SECS] SCRIPT [ARGS...]" >&2; exit 2; }
script="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; shift
"$here/setup.sh" >&2
lab_env
l0_qemu="${L0_QEMU:-$("$here/build-l0-qemu.sh")}"

mkdir -p "$work/job"
cp "$script" "$work/job/script.sh"
{
    echo "set -e"
    echo ". '$work/env.sh'"
    echo "export KVER BZIMAGE VMLINUX MODDIR NESTED_WORKDIR='$work' NESTED_DIR='$here'"
    for v in MINIVMM MINIVMM_STATIC EDU_VFIO_TEST LAB_PASST SCENARIOS RUST_LOG BENCH_RUNS BENCH_MB BENCH_MINIVMM_ARGS L2_TIMEOUT L2_DEVICE BLK_BENCH BENCH_SECONDS BENCH_CONFIGS RELIABILITY_RUNS RELIABILITY_UNTIL; do
        [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
    done
    printf 'cd %q\n' "$PWD"
    printf 'exec bash %q' "$work/job/script.sh"
    for a in "$@"; do printf ' %q' "$a"; done
    echo
} > "$work/job/run.sh"
rm -f "$work/status"
# The NVMe controller's disk, fresh each boot: a known first sector, zeros after it.
{ printf 'MINIVMM-NVME-DISK sector 0\n'; head -c 1048549 /dev/zero; } > "$work/nvme.img"

# Multi-threaded TCG (the default) is needed: with thread=single, timers in L1 stall. It has a
# rare failure of its own (L0's kernel dies on an int3 left by cross-CPU code patching), so an
# L0 that ends without a status is booted once more.
boot_l0() {
timeout -k 10 "$((timeout + 60))" "$l0_qemu" \
    -machine q35,accel=tcg -cpu max -m 3072 -smp 2 \
    -display none -nodefaults -serial stdio -no-reboot \
    -kernel "$VMLINUX" -initrd "$work/l0-initrd.img" \
    -append "console=ttyS0 quiet intel_iommu=on panic=-1 nested.work=$work nested.timeout=$timeout" \
    -device intel-iommu,intremap=on \
    -device edu \
    -drive "file=$work/nvme.img,if=none,format=raw,id=nvm" -device nvme,serial=minivmm0,drive=nvm \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$work,mount_tag=w,security_model=none,multidevs=remap" < /dev/null
}
start=$(date +%s)
set +e
boot_l0
qemu_rc=$?
if [ ! -s "$work/status" ] && [ "${NESTED_RETRY:-1}" = 1 ]; then
    echo "run-l0: L0 died without a status (QEMU exit $qemu_rc); booting it once more" >&2
    boot_l0
    qemu_rc=$?
fi
set -e
elapsed=$(( $(date +%s) - start ))
if [ ! -s "$work/status" ]; then
    echo "run-l0: L0 ended without a status after ${elapsed}s (QEMU exit $qemu_rc; timeout ${timeout}s)" >&2
    exit 124
fi
rc=$(cat "$work/status")
echo "run-l0: inner script exited $rc after ${elapsed}s" >&2
exit "$rc"

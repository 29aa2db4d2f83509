#!/usr/bin/env bash
# Host side of the nested suite: sets up the lab if needed, boots L0 once and runs every
# scenario in it. MINIVMM (default target/release/minivmm) is the binary under test;
# SCENARIOS="boot reboot" runs a subset.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export MINIVMM="${MINIVMM:-$(cd "$here/../.." && pwd)/target/release/minivmm}"
[ -x "$MINIVMM" ] || { echo "run-all: $MINIVMM not built (cargo build --release)" >&2; exit 1; }
# The guest-side VFIO test program and the minivmm L1 runs for L2, static so they run in any
# initramfs.
root="$(cd "$here/../.." && pwd)"
if [ -z "${EDU_VFIO_TEST:-}" ] || [ -z "${MINIVMM_STATIC:-}" ]; then
    (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --quiet -p edu-vfio-test -p minivmm --target x86_64-unknown-linux-gnu)
    EDU_VFIO_TEST="$root/target/x86_64-unknown-linux-gnu/release/edu-vfio-test"
    MINIVMM_STATIC="$root/target/x86_64-unknown-linux-gnu/release/minivmm"
fi
export EDU_VFIO_TEST MINIVMM_STATIC
# The idle payload L0 keeps running during the suite (see tests/payloads/idle.S).
work="$here/work"
mkdir -p "$work"
cc -c -o "$work/idle.o" "$here/../payloads/idle.S"
ld -m elf_x86_64 -Ttext=0x100000 -z noseparate-code -nostdlib -o "$work/idle64.elf" "$work/idle.o"
objcopy -I elf64-x86-64 -O elf32-i386 "$work/idle64.elf" "$work/idle.elf"
exec "$here/run-l0.sh" --timeout "${NESTED_TIMEOUT:-2400}" "$here/inner-all.sh"

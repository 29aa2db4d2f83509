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
"$here/build-idle.sh"
exec "$here/run-l0.sh" --timeout "${NESTED_TIMEOUT:-2400}" "$here/inner-all.sh"

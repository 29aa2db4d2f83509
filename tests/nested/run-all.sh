#!/usr/bin/env bash
# Host side of the nested suite: sets up the lab if needed, boots L0 once and runs every
# scenario in it. MINIVMM (default target/release/minivmm) is the binary under test;
# SCENARIOS="boot reboot" runs a subset.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
export MINIVMM="${MINIVMM:-$REPO_ROOT/target/release/minivmm}"
[ -x "$MINIVMM" ] || { echo "run-all: $MINIVMM not built (cargo build --release)" >&2; exit 1; }
# The guest-side VFIO test program and the minivmm L1 runs for L2, static so they run in any
# initramfs.
if [ -z "${EDU_VFIO_TEST:-}" ] || [ -z "${MINIVMM_STATIC:-}" ]; then
    build_static edu-vfio-test minivmm
    EDU_VFIO_TEST="$(static_bin edu-vfio-test)"
    MINIVMM_STATIC="$(static_bin minivmm)"
fi
export EDU_VFIO_TEST MINIVMM_STATIC
# The passt the user-networking scenario runs (build-passt.sh says why not Debian 12's).
LAB_PASST="${LAB_PASST:-$("$NESTED_DIR/build-passt.sh")}"
export LAB_PASST
"$NESTED_DIR/build-idle.sh"
exec "$NESTED_DIR/run-l0.sh" --timeout "${NESTED_TIMEOUT:-2400}" "$NESTED_DIR/inner-all.sh"

#!/usr/bin/env bash
# The L1 -> L2 reassignment, in the nested lab (slow: L2 is a guest of a guest of the simulated
# host, all under TCG; not part of CI): L0's edu goes to L1 behind minivmm's vIOMMU, L1 binds it
# to vfio-pci and runs minivmm (a static build) to boot L2 with it behind a second vIOMMU, and
# L2 runs the DMA test program. Exit status 0 when the test passes in L2. With
# L2_DEVICE=virtio-blk, minivmm's virtio-blk goes from L1 to L2 instead and L2's virtio_blk
# reads and writes the image.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
scripts/install-deps.sh
tests/nested/setup.sh
cargo build --release
build_static edu-vfio-test minivmm
export MINIVMM="$PWD/target/release/minivmm"
MINIVMM_STATIC="$(static_bin minivmm)"
EDU_VFIO_TEST="$(static_bin edu-vfio-test)"
export MINIVMM_STATIC EDU_VFIO_TEST
exec tests/nested/run-l0.sh --timeout "${L2_TIMEOUT:-5400}" tests/nested/l2-inner.sh

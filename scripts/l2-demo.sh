#!/usr/bin/env bash
# The L1 -> L2 reassignment, in the nested lab (slow: L2 is a guest of a guest of the simulated
# host, all under TCG; not part of CI): L0's edu goes to L1 behind minivmm's vIOMMU, L1 binds it
# to vfio-pci and runs minivmm (a static build) to boot L2 with it behind a second vIOMMU, and
# L2 runs the DMA test program. Exit status 0 when the test passes in L2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
tests/nested/setup.sh
cargo build --release
static=(env RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet
    --target x86_64-unknown-linux-gnu)
"${static[@]}" -p edu-vfio-test
"${static[@]}" -p minivmm
export MINIVMM="$PWD/target/release/minivmm"
export MINIVMM_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/minivmm"
export EDU_VFIO_TEST="$PWD/target/x86_64-unknown-linux-gnu/release/edu-vfio-test"
exec tests/nested/run-l0.sh --timeout "${L2_TIMEOUT:-5400}" tests/nested/l2-inner.sh

#!/usr/bin/env bash
# Benchmark (not a test): TCP throughput L0 -> L1 through a host port forward, minivmm
# --net user (passt) vs QEMU -netdev user (slirp) vs QEMU -netdev stream to the same passt,
# side by side in one L0 (tests/nested/bench-net-inner.sh). BENCH_RUNS (default 5)
# transfers per VMM, BENCH_MB (default 32) MiB each; medians printed.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
scripts/install-deps.sh
tests/nested/setup.sh
cargo build --release
export MINIVMM="$PWD/target/release/minivmm"
tests/nested/build-idle.sh
LAB_PASST="$(tests/nested/build-passt.sh)"
export LAB_PASST
exec tests/nested/run-l0.sh --timeout "${BENCH_TIMEOUT:-3000}" tests/nested/bench-net-inner.sh

#!/usr/bin/env bash
# Benchmark (not a test): in the nested lab, boots L1 with the lab's edu passed through behind a
# vIOMMU under minivmm and under QEMU (-device intel-iommu,intremap=on,caching-mode=on -device
# vfio-pci), alternately in the same L0 after a warm-up, and prints the medians side by side:
# L1 time to init, L1's VFIO map+unmap rate of 4 KiB pages, VMM peak RSS.
# BENCH_RUNS (default 3) sets the runs per VMM; BENCH_MINIVMM_ARGS adds minivmm flags (e.g.
# --seccomp=off, to measure the sandbox).
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
scripts/install-deps.sh
tests/nested/setup.sh
cargo build --release
build_static edu-vfio-test
export MINIVMM="$PWD/target/release/minivmm"
tests/nested/build-idle.sh
EDU_VFIO_TEST="$(static_bin edu-vfio-test)"
export EDU_VFIO_TEST
exec tests/nested/run-l0.sh --timeout "${BENCH_TIMEOUT:-3000}" tests/nested/bench-inner.sh

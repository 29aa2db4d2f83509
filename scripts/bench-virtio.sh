#!/usr/bin/env bash
# Benchmark (not a test): virtio-blk in L1 under minivmm and under QEMU (-device
# virtio-blk-pci,disable-legacy=on[,iommu_platform=on] behind -device intel-iommu,...,
# caching-mode=on), each with the vIOMMU on and off, in one L0, medians side by side: O_DIRECT
# sequential read MB/s and 4 KiB random read IOPS (tests/blk-bench, run in L1).
# BENCH_RUNS (default 3) runs per configuration, BENCH_SECONDS (default 5) per measurement,
# BENCH_CONFIGS the configurations (default "minivmm_on minivmm_auto qemu_on minivmm_off
# qemu_off"; minivmm_auto is the vIOMMU with the default caching-mode=auto, off here).
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
scripts/install-deps.sh
tests/nested/setup.sh
cargo build --release
build_static blk-bench
export MINIVMM="$PWD/target/release/minivmm"
tests/nested/build-idle.sh
BLK_BENCH="$(static_bin blk-bench)"
export BLK_BENCH
exec tests/nested/run-l0.sh --timeout "${BENCH_TIMEOUT:-3000}" tests/nested/bench-virtio-inner.sh

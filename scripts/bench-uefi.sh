#!/usr/bin/env bash
# Benchmark (not a test): in the nested lab, boots the lab's UEFI disk image through Debian's
# stock OVMF.fd under minivmm (--bios) and under QEMU (-bios, q35, intel-iommu, virtio-blk with
# iommu_platform), alternately in the same L0 after a warm-up, and prints the medians side by
# side: time to L1's init, VMM peak RSS. BENCH_RUNS (default 5) sets the runs per VMM.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
scripts/install-deps.sh
tests/nested/setup.sh
cargo build --release
export MINIVMM="$PWD/target/release/minivmm"
tests/nested/build-idle.sh
mkdir -p "$NESTED_WORKDIR/logs"
exec tests/nested/run-l0.sh --timeout "${BENCH_TIMEOUT:-3000}" tests/nested/bench-uefi-inner.sh

#!/usr/bin/env bash
# The main job, in the nested lab: builds minivmm, boots the simulated host L0 (QEMU TCG with
# nested SVM, intel-iommu and an edu device), and inside it runs minivmm booting a Debian Linux
# kernel on 2 vCPUs with the console on stdout. First run downloads the kernel (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
cargo build --release -p minivmm
export MINIVMM="$PWD/target/release/minivmm"
exec tests/nested/run-l0.sh --timeout 600 tests/nested/demo-inner.sh

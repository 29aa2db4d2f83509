#!/usr/bin/env bash
# The main job, in the nested lab: builds minivmm, boots the simulated host L0 (QEMU TCG with
# nested SVM, intel-iommu and an edu device bound to vfio-pci), and inside it runs
#   minivmm --vfio <edu> --iommu --kernel bzImage --initramfs initrd.img --cmdline "console=ttyS0 intel_iommu=on"
# with the guest console on stdout: L1 Linux finds the DMAR unit, turns on interrupt remapping,
# binds the passed-through device to its own vfio-pci and runs a DMA test on it. The first run
# downloads a Debian kernel (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
tests/nested/setup.sh >/dev/null
cargo build --release -p minivmm
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet -p edu-vfio-test \
    --target x86_64-unknown-linux-gnu
export MINIVMM="$PWD/target/release/minivmm"
export EDU_VFIO_TEST="$PWD/target/x86_64-unknown-linux-gnu/release/edu-vfio-test"
exec tests/nested/run-l0.sh --timeout 900 tests/nested/demo-inner.sh

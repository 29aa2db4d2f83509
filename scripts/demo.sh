#!/usr/bin/env bash
# The main job, in the nested lab: builds minivmm, boots the simulated host L0 (QEMU TCG with
# nested SVM, intel-iommu and an edu device bound to vfio-pci), and inside it runs
#   minivmm --vfio <edu> --iommu --kernel bzImage --initramfs initrd.img --cmdline "console=ttyS0 intel_iommu=on"
# with the guest console on stdout: L1 Linux finds the DMAR unit, turns on interrupt remapping,
# binds the passed-through device to its own vfio-pci and runs a DMA test on it. The first run
# downloads a Debian kernel (about a minute).
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
scripts/install-deps.sh >/dev/null
tests/nested/setup.sh >/dev/null
cargo build --release -p minivmm
build_static edu-vfio-test
export MINIVMM="$PWD/target/release/minivmm"
EDU_VFIO_TEST="$(static_bin edu-vfio-test)"
export EDU_VFIO_TEST
exec tests/nested/run-l0.sh --timeout 900 tests/nested/demo-inner.sh

#!/usr/bin/env bash
# Inside L0: the user's command. The lab's edu (bound to vfio-pci in L0) goes to L1 behind
# minivmm's vIOMMU; the guest console is on stdout.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${EDU_BDF:?L0 has no edu device bound to vfio-pci}" "${EDU_VFIO_TEST:?}"
img="$NESTED_WORKDIR/l1-demo.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-demo" \
    --module irqbypass "${L1_VFIO_MODULES[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test" 2>/dev/null
cmd=("$MINIVMM" --vfio "$EDU_BDF" --iommu --kernel "$BZIMAGE" --initramfs "$img" --cpus 2
    --memory 512M --cmdline "console=ttyS0 intel_iommu=on")
echo "+ minivmm --vfio $EDU_BDF --iommu --kernel bzImage --initramfs initrd.img --cpus 2 --memory 512M --cmdline \"console=ttyS0 intel_iommu=on\""
start=$(date +%s.%N)
rc=0
"${cmd[@]}" < /dev/null || rc=$?
echo "+ minivmm exited $rc after $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5)s"
exit $rc

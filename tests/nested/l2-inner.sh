#!/usr/bin/env bash
# Runs inside L0 (see scripts/l2-demo.sh): L0 gives its edu to L1 behind minivmm's vIOMMU; L1
# gives it on to L2 with its own minivmm behind a second vIOMMU; L2 runs the DMA test.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${MINIVMM_STATIC:?}" "${EDU_BDF:?}" "${EDU_VFIO_TEST:?}"
tmp="${TMPDIR:-/tmp}/l2"; mkdir -p "$tmp"
"$NESTED_DIR/mk-initramfs.sh" "$tmp/l2.img" "$NESTED_DIR/guest/init-iommu" --module irqbypass \
    "${L1_VFIO_MODULES[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test" 2>/dev/null
"$NESTED_DIR/mk-initramfs.sh" "$tmp/l1.img" "$NESTED_DIR/guest/init-l1-host" \
    --module irqbypass --module kvm --module ccp --module kvm-amd "${L1_VFIO_MODULES[@]}" \
    --file "$MINIVMM_STATIC:/minivmm" --file "$BZIMAGE:/bzImage" --file "$tmp/l2.img:/l2.img" 2>/dev/null
log="$NESTED_WORKDIR/logs/l2-demo.log"
mkdir -p "$(dirname "$log")"
start=$(date +%s)
set +e
timeout -k 5 "${L2_TIMEOUT:-5400}" "$MINIVMM" --vfio "$EDU_BDF" --iommu --kernel "$BZIMAGE" \
    --initramfs "$tmp/l1.img" --cpus 2 --memory 1G \
    --cmdline "console=ttyS0 intel_iommu=on panic=-1" < /dev/null 2>&1 | tee "$log"
set -e
echo "l2-demo: finished after $(( $(date +%s) - start ))s"
grep -E "MINIVMM-L1-KVM|MINIVMM-L1-EDU|L2\| MINIVMM-TEST|MINIVMM-L1-L2-DONE" "$log" || true
grep -q "L2| MINIVMM-TEST edu-vfio-test: [0-9]* passed, 0 failed" "$log"

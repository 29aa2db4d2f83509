#!/usr/bin/env bash
# Runs inside L0 (see scripts/l2-demo.sh): L0 gives its edu to L1 behind minivmm's vIOMMU; L1
# gives it on to L2 with its own minivmm behind a second vIOMMU; L2 runs the DMA test.
# L2_DEVICE=virtio-blk: minivmm's virtio-blk goes the same way instead, and L2's virtio_blk uses it.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${MINIVMM_STATIC:?}" "${EDU_BDF:?}" "${EDU_VFIO_TEST:?}"
tmp="${TMPDIR:-/tmp}/l2"; mkdir -p "$tmp"
l1_mods=(--module irqbypass --module kvm --module ccp --module kvm-amd "${L1_VFIO_MODULES[@]}")
log="$NESTED_WORKDIR/logs/l2-demo.log"
mkdir -p "$(dirname "$log")"
if [ "${L2_DEVICE:-edu}" = virtio-blk ]; then
    # minivmm's virtio-blk instead of the physical edu: L1 gets it behind the vIOMMU, hands it
    # to L2, whose virtio_blk reads the image's first MiB and writes the second with O_DIRECT.
    disk=/run/nested-tmp/l2-disk.raw
    head -c 1M /dev/urandom > "$disk"; truncate -s 64M "$disk"
    first=$(head -c 1M "$disk" | sha256sum | cut -d' ' -f1)
    "$NESTED_DIR/mk-initramfs.sh" "$tmp/l2.img" "$NESTED_DIR/guest/init-virtio" --module virtio_blk 2>/dev/null
    device=(--disk "path=$disk")
    l2dev=1af4:1042
else
    "$NESTED_DIR/mk-initramfs.sh" "$tmp/l2.img" "$NESTED_DIR/guest/init-iommu" --module irqbypass \
        "${L1_VFIO_MODULES[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test" 2>/dev/null
    device=(--vfio "$EDU_BDF")
    l2dev=1234:11e8
fi
"$NESTED_DIR/mk-initramfs.sh" "$tmp/l1.img" "$NESTED_DIR/guest/init-l1-host" "${l1_mods[@]}" \
    --file "$MINIVMM_STATIC:/minivmm" --file "$BZIMAGE:/bzImage" --file "$tmp/l2.img:/l2.img" 2>/dev/null
start=$(date +%s)
set +e
timeout -k 5 "${L2_TIMEOUT:-5400}" "$MINIVMM" "${device[@]}" --iommu --kernel "$BZIMAGE" \
    --initramfs "$tmp/l1.img" --cpus 2 --memory 1G \
    --cmdline "console=ttyS0 intel_iommu=on panic=-1 l2dev=$l2dev" < /dev/null 2>&1 | tee "$log"
set -e
echo "l2-demo: finished after $(( $(date +%s) - start ))s"
grep -E "MINIVMM-L1-KVM|MINIVMM-L1-EDU|L2\| MINIVMM-(TEST|VIRTIO|BLK|FAULT)|MINIVMM-L1-L2-DONE" "$log" || true
if [ "${L2_DEVICE:-edu}" = virtio-blk ]; then
    grep -q "L2| MINIVMM-BLK-READ $first" "$log"
    wrote=$(sed -n 's/^L2| MINIVMM-BLK-WROTE \([0-9a-f]*\).*/\1/p' "$log")
    [ -n "$wrote" ] && grep -q "L2| MINIVMM-BLK-READBACK $wrote" "$log"
    [ "$(dd if="$disk" bs=1M skip=1 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$wrote" ]
    if grep -q "L2| MINIVMM-FAULT" "$log"; then echo "l2-demo: a DMAR fault in L2"; exit 1; fi
    echo "l2-demo: L2's virtio_blk read the image and wrote 1 MiB that the image holds"
else
    grep -q "L2| MINIVMM-TEST edu-vfio-test: [0-9]* passed, 0 failed" "$log"
fi

# shellcheck shell=bash
# VT-d: L1 Linux with intel_iommu=on finds the DMAR unit, enables queued invalidation and
# interrupt remapping, puts every device in its own IOMMU group, and the edu test program passes
# through VFIO in L1 (DMA, blocked unmapped DMA with a DMAR fault, MSI through IR, map/unmap).
# Four L1 boots: default (x2APIC IR), iommu=pt, intel_iommu=on,strict, nox2apic with aw-bits=39.
img="$NESTED_WORKDIR/l1-iommu.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-iommu" \
    --module irqbypass "${L1_VFIO_MODULES[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test"

variant() {
    local name="$1" iommu="$2" cmdline="$3" aw="$4" mode="$5"
    l1_variant "$LOGDIR/50-iommu-$name.log" "$name" "check_vtd_l1 $aw $mode emulated" \
        --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M --iommu "$iommu" \
        --device edu --cmdline "console=ttyS0 panic=-1 $cmdline"
}

summary=""
for v in "default|caching-mode=on|intel_iommu=on|48|x2apic" \
         "pt|caching-mode=on|intel_iommu=on iommu=pt|48|x2apic" \
         "strict|caching-mode=on|intel_iommu=on,strict|48|x2apic" \
         "nox2apic|aw-bits=39|intel_iommu=on nox2apic|39|xapic"; do
    IFS='|' read -r name iommu cmdline aw mode <<< "$v"
    line=$(variant "$name" "$iommu" "$cmdline" "$aw" "$mode") || { echo "$line"; exit 1; }
    echo "$line"
    summary="$summary${summary:+; }$line"
done
echo "$summary"

# L1 -> L2 reassignment: L0's edu goes to L1 behind minivmm's vIOMMU; L1 loads KVM (nested SVM)
# and its own vfio-pci, and runs a static minivmm (--vfio <bdf> --iommu) that boots L2 from the
# same kernel; L2 binds the device to vfio-pci and the DMA test passes there: DMA through two
# vIOMMUs, unmapped DMA blocked, MSI through two levels of interrupt remapping.
[ -n "$EDU_BDF" ] || { echo "L0 has no edu device bound to vfio-pci"; exit 1; }
[ -x "${MINIVMM_STATIC:-}" ] || { echo "MINIVMM_STATIC (a static minivmm for L1) is not set"; exit 1; }
vfio=(--module vfio --module vfio_iommu_type1 --module vfio-pci-core --module vfio-pci)
l2img="$NESTED_WORKDIR/l2.img"
l1_initramfs "$l2img" "$NESTED_DIR/guest/init-iommu" --module irqbypass "${vfio[@]}" \
    --file "$EDU_VFIO_TEST:/edu-vfio-test"
img="$NESTED_WORKDIR/l1-host.img"
# Load order matters: irqbypass before kvm, ccp before kvm-amd.
l1_initramfs "$img" "$NESTED_DIR/guest/init-l1-host" --module irqbypass --module kvm --module ccp \
    --module kvm-amd "${vfio[@]}" --file "$MINIVMM_STATIC:/minivmm" --file "$BZIMAGE:/bzImage" \
    --file "$l2img:/l2.img"

check_l2() {
    reject "$1" "^MINIVMM-INSMOD-FAILED" "a module load failure in L1" || return 1
    expect "$1" "^MINIVMM-L1-KVM ok" "/dev/kvm in L1" || return 1
    expect "$1" "^MINIVMM-L1-EDU .* driver=vfio-pci" "the device on L1's vfio-pci" || return 1
    expect "$1" "^L2\| .*DMAR-IR: Enabled IRQ remapping in x2apic mode" "interrupt remapping in L2" || return 1
    expect "$1" "^L2\| MINIVMM-TEST PASS dma" "the DMA round trip in L2" || return 1
    expect "$1" "^L2\| MINIVMM-TEST PASS unmapped-dma-blocked" "unmapped DMA blocked in L2" || return 1
    expect "$1" "^L2\| MINIVMM-TEST PASS msi" "MSI in L2" || return 1
    expect "$1" "^L2\| MINIVMM-TEST edu-vfio-test: [0-9]+ passed, 0 failed" "no failure in L2" || return 1
    grep -m1 "^MINIVMM-L1-L2-DONE" "$1" | sed 's/MINIVMM-L1-L2-DONE after/L2 booted, tested and powered off in/'
}

l1_variant "$LOGDIR/70-l2.log" "l1->l2" check_l2 --kernel "$BZIMAGE" --initramfs "$img" \
    --cpus 2 --memory 1G --iommu --vfio "$EDU_BDF" --cmdline "console=ttyS0 intel_iommu=on panic=-1"

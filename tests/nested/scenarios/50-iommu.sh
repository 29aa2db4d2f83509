# VT-d: L1 Linux with intel_iommu=on finds the DMAR unit, enables queued invalidation and
# interrupt remapping, puts every device in its own IOMMU group, and the edu test program passes
# through VFIO in L1 (DMA, blocked unmapped DMA with a DMAR fault, MSI through IR, map/unmap).
# Four L1 boots: default (x2APIC IR), iommu=pt, intel_iommu=on,strict, nox2apic with aw-bits=39.
img="$NESTED_WORKDIR/l1-iommu.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-iommu" \
    --module irqbypass --module vfio --module vfio_iommu_type1 --module vfio-pci-core \
    --module vfio-pci --file "$EDU_VFIO_TEST:/edu-vfio-test"

# check_l1 LOG AW MODE: the checks every variant shares.
check_l1() {
    local log="$1" aw="$2" mode="$3"
    expect "$log" "^MINIVMM-L1-UP" "the init marker"
    expect "$log" "DMAR: IOMMU enabled" "'DMAR: IOMMU enabled'"
    expect "$log" "DMAR: Host address width $aw" "host address width $aw"
    expect "$log" "DMAR: DRHD base: 0x000000fed90000 flags: 0x1" "the DRHD line"
    expect "$log" "DMAR-IR: IOAPIC id 0 under DRHD base +0xfed90000 IOMMU 0" "the IOAPIC scope line"
    expect "$log" "DMAR-IR: Enabled IRQ remapping in $mode mode" "IR in $mode mode"
    expect "$log" "DMAR: dmar0: Using Queued invalidation" "queued invalidation"
    expect "$log" "DMAR: Intel\(R\) Virtualization Technology for Directed I/O" "the VT-d banner"
    reject "$log" "MINIVMM-INSMOD-FAILED" "a module load failure"
    # One group per device, every device in one.
    reject "$log" "^MINIVMM-GROUP .* group=none" "a device without an IOMMU group"
    local groups devices
    devices=$(grep -c "^MINIVMM-GROUP " "$log")
    groups=$(grep "^MINIVMM-GROUP " "$log" | sed 's/.*group=//' | sort -u | wc -l)
    [ "$devices" -ge 2 ] && [ "$devices" = "$groups" ] || { echo "$devices devices in $groups groups"; return 1; }
    expect "$log" "^MINIVMM-EDU .* driver=vfio-pci" "edu bound to vfio-pci"
    expect "$log" "^MINIVMM-TEST PASS dma" "the DMA round trip"
    expect "$log" "^MINIVMM-TEST PASS unmapped-dma-blocked" "unmapped DMA blocked"
    expect "$log" "^MINIVMM-TEST PASS msi" "MSI through interrupt remapping"
    expect "$log" "^MINIVMM-TEST PASS map-unmap-bench" "the map/unmap run"
    expect "$log" "^MINIVMM-TEST edu-vfio-test: [0-9]+ passed, 0 failed" "no test failure"
    # The unmapped DMA was a device write to a page without W: fault reason 5, in L1's log.
    expect "$log" "DMAR: \[DMA Write NO_PASID\] Request device \[00:01.0\] fault addr 0x[0-9a-f]+ \[fault reason 0x05\]" "the DMAR fault for the blocked DMA"
    expect "$log" "MINIVMM-IRQ .*DMAR-MSI" "the DMAR fault interrupt"
    reject "$log" "vt-d: interrupt .* blocked" "a blocked interrupt"
    expect "$log" "reboot: Power down" "an ACPI poweroff"
    grep -m1 "^MINIVMM-TEST map+unmap pairs per second" "$log" | sed 's/^MINIVMM-TEST //'
}

variant() {
    local name="$1" iommu="$2" cmdline="$3" aw="$4" mode="$5"
    local log="$LOGDIR/50-iommu-$name.log" rate rc note=""
    for attempt in 1 2; do
        rc=0
        run_l1 "$log" 480 --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M \
            --iommu $iommu --device edu \
            --cmdline "console=ttyS0 panic=-1 $cmdline" || rc=$?
        if [ $rc -eq 0 ] && rate=$(check_l1 "$log" "$aw" "$mode"); then
            echo "$name: ok, $rate$note"
            return 0
        fi
        if [ $attempt = 1 ] && lab_flake "$log"; then
            mv "$log" "${log%.log}-flake.log"
            note=" (retried once after the lab's int3 flake)"
            continue
        fi
        [ $rc -eq 0 ] || rate="minivmm exited $rc"
        echo "$name: $rate"
        return 1
    done
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

# shellcheck shell=bash
# UEFI: minivmm boots Debian's stock OVMF.fd (--bios), which boots the lab's disk image (GPT, ESP
# with systemd-boot, the lab kernel, an ext4 root) from a virtio-blk disk behind the vIOMMU.
#  - poweroff: L1 comes up through the firmware (EFI runtime), sees minivmm's DMAR (queued
#    invalidation, interrupt remapping, one IOMMU group per device), binds L0's edu (--vfio) to
#    its vfio-pci and runs the DMA test program from its disk, powers off: exit 0;
#  - reboot: the guest reboots once (a VM reset: the firmware runs again, no new process), boots
#    a second time and powers off: exit 0, both boots in one log.
[ -n "$EDU_BDF" ] || { echo "L0 has no edu device bound to vfio-pci"; exit 1; }
ovmf=/usr/share/ovmf/OVMF.fd
[ -f "$ovmf" ] || { echo "$ovmf missing (apt-get install ovmf)"; exit 1; }
disk="$NESTED_WORKDIR/uefi-disk.img"
"$NESTED_DIR/mk-disk-image.sh" "$disk" "$NESTED_DIR/guest/init-uefi" \
    --module irqbypass "${L1_VFIO_MODULES[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test"

# check_uefi_l1 BOOTS LOG: the firmware-booted L1's checks (init-uefi's output), BOOTS boots.
check_uefi_l1() {
    local boots="$1" log="$2" n
    expect "$log" "^MINIVMM-L1-UP boot=$boots" "boot $boots reaching init" || return 1
    n=$(grep -c "^MINIVMM-L1-UP" "$log")
    [ "$n" = "$boots" ] || { echo "$n boots in $log (want $boots)"; return 1; }
    expect "$log" "^MINIVMM-EFI runtime=" "an EFI-booted kernel" || return 1
    expect "$log" "DMAR: IOMMU enabled" "'DMAR: IOMMU enabled'" || return 1
    expect "$log" "DMAR: DRHD base: 0x000000fed90000 flags: 0x1" "the DRHD line" || return 1
    expect "$log" "DMAR-IR: Enabled IRQ remapping in x2apic mode" "interrupt remapping" || return 1
    expect "$log" "DMAR: dmar0: Using Queued invalidation" "queued invalidation" || return 1
    reject "$log" "MINIVMM-INSMOD-FAILED" "a module load failure" || return 1
    reject "$log" "^MINIVMM-GROUP .* group=none" "a device without an IOMMU group" || return 1
    local groups devices
    devices=$(grep "^MINIVMM-GROUP " "$log" | sort -u | wc -l)
    groups=$(grep "^MINIVMM-GROUP " "$log" | sed 's/.*group=//' | sort -u | wc -l)
    if [ "$devices" -lt 3 ] || [ "$devices" != "$groups" ]; then echo "$devices devices in $groups groups"; return 1; fi
    expect "$log" "^MINIVMM-GROUP .* 0x1af4:0x1042 " "the virtio disk" || return 1
    expect "$log" "^MINIVMM-EDU .* driver=vfio-pci" "edu bound to vfio-pci" || return 1
    expect "$log" "^MINIVMM-TEST PASS dma" "the DMA round trip" || return 1
    expect "$log" "^MINIVMM-TEST edu-vfio-test: [0-9]+ passed, 0 failed" "no test failure" || return 1
    expect "$log" "^MINIVMM-POWEROFF" "the power-off" || return 1
    echo "boots=$boots devices=$devices"
}

# uefi_variant NAME MODE BOOTS: one L1 from a fresh copy of the image, lab.mode=MODE.
uefi_variant() {
    local name="$1" mode="$2" boots="$3" copy="$NESTED_WORKDIR/uefi-run.img" log="$LOGDIR/90-uefi-$1.log"
    cp "$disk" "$copy"
    set_boot_options "$copy" "console=ttyS0 intel_iommu=on panic=-1 lab.mode=$mode"
    l1_variant "$log" "$name" "check_uefi_l1 $boots" \
        --bios "$ovmf" --disk "path=$copy" --iommu --vfio "$EDU_BDF" --cpus 2 --memory 1G \
        --debugcon "file=$LOGDIR/90-uefi-$name-debugcon.log"
}

summary=""
for v in "poweroff|poweroff|1" "reboot|reboot|2"; do
    IFS='|' read -r name mode boots <<< "$v"
    line=$(uefi_variant "$name" "$mode" "$boots") || { echo "$line"; exit 1; }
    echo "$line"
    summary="$summary${summary:+; }$line"
done
echo "$summary"

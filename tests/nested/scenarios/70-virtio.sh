# shellcheck shell=bash
# Virtio: L1 Linux drives minivmm's modern virtio-pci block and entropy devices.
#  - errors: a missing image, an image another process holds locked: one line naming --disk;
#  - behind the vIOMMU (intel_iommu=on): 1af4:1042 and 1af4:1044, revision 1, each in its own
#    IOMMU group, VERSION_1 (bit 32) and ACCESS_PLATFORM (bit 33) negotiated; the disk's first
#    MiB reads as the host wrote it, a MiB written with O_DIRECT reads back and is in the image
#    after L1 exits; /dev/hwrng is virtio_rng and gives random bytes; no DMAR fault;
#  - without --iommu: ACCESS_PLATFORM not offered (bit 33 clear), the same I/O works; a
#    read-only disk refuses the write and the image is unchanged;
#  - with --iommu device-iotlb=on: the same as behind the vIOMMU, and each virtio function has
#    the ATS capability at 0x100 (header 0x0001000f) with Enable set by L1's intel-iommu
#    ("ATSCtl: Enable+"): an integrated endpoint under a unit with ECAP.DT.
img="$NESTED_WORKDIR/l1-virtio.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-virtio" --module virtio_blk --module virtio-rng
disk=/run/nested-tmp/virtio-disk.raw
head -c 1M /dev/urandom > "$disk"
truncate -s 64M "$disk"
first=$(head -c 1M "$disk" | sha256sum | cut -d' ' -f1)
second() { dd if="$disk" bs=1M skip=1 count=1 2>/dev/null | sha256sum | cut -d' ' -f1; }

# error CASE PATTERN MINIVMM-ARGS...: minivmm fails at once with one line matching PATTERN.
error() {
    local case="$1" pattern="$2" log="$LOGDIR/70-virtio-error-$1.log" rc=0
    shift 2
    timeout 60 "$@" > "$log" 2>&1 < /dev/null || rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "$case: exit status $rc"; return 1; fi
    [ "$(wc -l < "$log")" -eq 1 ] || { echo "$case: not one line: $(cat "$log")"; return 1; }
    grep -qE -e "$pattern" "$log" || { echo "$case: unexpected message: $(cat "$log")"; return 1; }
    echo "error $case: $(cat "$log")"
}
k=(--kernel "$BZIMAGE" --initramfs "$img" --memory 256M)
error missing-image "--disk.*/run/nested-tmp/no-such.raw" "$MINIVMM" "${k[@]}" --disk path=/run/nested-tmp/no-such.raw
# This shell holds the image's lock while minivmm tries to take it (its own open of the file).
exec 9>>"$disk"
flock -x 9
error locked-image "--disk.*locked" "$MINIVMM" "${k[@]}" --disk "path=$disk"
flock -u 9
exec 9>&-

# bit LOG DEVICE BIT: the negotiated feature bit BIT of the virtio device with id DEVICE.
bit() {
    grep -m1 "^MINIVMM-VIRTIO .* device=$2 " "$1" | sed 's/.*features=\([01]*\).*/\1/' | cut -c$(($3 + 1))
}

# check_virtio IOMMU(1|0) READONLY(1|0) LOG
check_virtio() {
    local iommu="$1" ro="$2" log="$3" wrote
    expect "$log" "^MINIVMM-L1-UP" "the init marker" || return 1
    reject "$log" "MINIVMM-INSMOD-FAILED" "a module load failure" || return 1
    expect "$log" "^MINIVMM-PCI .* 0x1af4:0x1042 rev=0x01" "the virtio-blk function" || return 1
    expect "$log" "^MINIVMM-PCI .* 0x1af4:0x1044 rev=0x01" "the virtio-rng function" || return 1
    expect "$log" "^MINIVMM-VIRTIO .* device=0x0002 .*driver=virtio_blk" "virtio_blk bound" || return 1
    expect "$log" "^MINIVMM-VIRTIO .* device=0x0004 .*driver=virtio_rng" "virtio_rng bound" || return 1
    for dev in 0x0002 0x0004; do
        [ "$(bit "$log" $dev 32)" = 1 ] || { echo "device $dev: VERSION_1 not negotiated"; return 1; }
        [ "$(bit "$log" $dev 33)" = "$iommu" ] || { echo "device $dev: ACCESS_PLATFORM bit is not $iommu"; return 1; }
    done
    if [ "$iommu" = 1 ]; then
        expect "$log" "DMAR: IOMMU enabled" "'DMAR: IOMMU enabled'" || return 1
        reject "$log" "^MINIVMM-PCI .* group=none" "a virtio function without an IOMMU group" || return 1
    fi
    expect "$log" "^MINIVMM-BLK size=131072 ro=$ro" "a 64 MiB disk with ro=$ro" || return 1
    expect "$log" "^MINIVMM-BLK-READ $first" "the image's first MiB" || return 1
    if [ "$ro" = 1 ]; then
        expect "$log" "^MINIVMM-BLK-WRITE-FAILED" "the write refused" || return 1
        [ "$(second)" = "$before" ] || { echo "the read-only image changed"; return 1; }
    else
        wrote=$(sed -n 's/^MINIVMM-BLK-WROTE \([0-9a-f]*\).*/\1/p' "$log")
        [ -n "$wrote" ] || { echo "the O_DIRECT write failed in L1"; return 1; }
        expect "$log" "^MINIVMM-BLK-READBACK $wrote" "the written MiB read back" || return 1
        [ "$(second)" = "$wrote" ] || { echo "the image does not hold what L1 wrote"; return 1; }
    fi
    expect "$log" "^MINIVMM-RNG current=virtio_rng" "virtio_rng as the current hwrng" || return 1
    expect "$log" "^MINIVMM-RNG-BYTES 16384" "16 KiB from /dev/hwrng" || return 1
    local distinct
    distinct=$(sed -n 's/^MINIVMM-RNG-DISTINCT \([0-9]*\).*/\1/p' "$log")
    [ "${distinct:-0}" -ge 200 ] || { echo "4 KiB from /dev/hwrng has only ${distinct:-0} distinct bytes"; return 1; }
    reject "$log" "^MINIVMM-FAULT" "a DMAR fault" || return 1
    expect "$log" "reboot: Power down" "an ACPI poweroff" || return 1
    echo "rng: $distinct distinct byte values in 4 KiB; disk: 1 MiB O_DIRECT round trip"
}

# check_ats LOG: every virtio function has the ATS capability, enabled by L1.
check_ats() {
    local log="$1" n=0 header ctl
    while read -r _ _ header ctl; do
        n=$((n + 1))
        [ "$header" = header=0x0001000f ] || { echo "ATS: $header at 0x100"; return 1; }
        ctl=${ctl#ctl=}
        case "$ctl" in 0x[0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;; *) echo "ATS control $ctl"; return 1 ;; esac
        [ $((ctl & 0x8000)) -ne 0 ] || { echo "ATS not enabled by L1 (control $ctl)"; return 1; }
    done < <(grep "^MINIVMM-ATS " "$log" | tr -d '\r')
    [ "$n" -eq 2 ] || { echo "ATS lines for $n virtio functions, not 2"; return 1; }
    echo "ATS enabled on $n functions"
}

# check_virtio_ats LOG: check_virtio behind the vIOMMU, then check_ats.
check_virtio_ats() {
    local out
    out=$(check_virtio 1 0 "$1") || { echo "$out"; return 1; }
    check_ats "$1" || return 1
}

summary=""
before=$(second)
line=$(l1_variant "$LOGDIR/70-virtio-iommu.log" "virtio+iommu" "check_virtio 1 0" \
    --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M --iommu \
    --disk "path=$disk" --rng --cmdline "console=ttyS0 panic=-1 intel_iommu=on") || { echo "$line"; exit 1; }
echo "$line"; summary="$line"
before=$(second)
line=$(l1_variant "$LOGDIR/70-virtio-noiommu.log" "virtio, read-only, no iommu" "check_virtio 0 1" \
    --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M \
    --disk "path=$disk,readonly=on" --rng --cmdline "console=ttyS0 panic=-1") || { echo "$line"; exit 1; }
echo "$line"; summary="$summary; $line"
before=$(second)
line=$(l1_variant "$LOGDIR/70-virtio-device-iotlb.log" "virtio+iommu device-iotlb" check_virtio_ats \
    --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M --iommu device-iotlb=on \
    --disk "path=$disk" --rng --cmdline "console=ttyS0 panic=-1 intel_iommu=on") || { echo "$line"; exit 1; }
echo "$line"
rm -f "$disk"
echo "$summary; $line"

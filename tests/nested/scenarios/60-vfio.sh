# shellcheck shell=bash
# VFIO passthrough: L0's edu (the lab's "physical" device, bound to vfio-pci in L0) goes to L1.
#  - error cases, each one clear line and a non-zero status, before anything is set up;
#  - with --iommu: L1 (intel_iommu=on) sees 1234:11e8 in its own IOMMU group, binds it to its
#    vfio-pci and the DMA test passes against the physical device: DMA, unmapped DMA blocked,
#    INTx and MSI through interrupt remapping, map/unmap rate; L0's NVMe controller, passed
#    through beside it, works with L1's own nvme driver (MSI-X, DMA through L1's DMA domain);
#  - SIGTERM while L1 runs: minivmm stops in order and releases the device;
#  - without --iommu: L1 has no IOMMU; DMA to the guest-physical address of a locked buffer
#    lands (all L1 RAM is mapped at IOVA = GPA), and the NVMe controller works too; the devices
#    are taken again after the runs above, so release works.
[ -n "$EDU_BDF" ] || { echo "L0 has no edu device bound to vfio-pci"; exit 1; }
[ -n "$NVME_BDF" ] || { echo "L0 has no NVMe controller bound to vfio-pci"; exit 1; }
nvme_mods=(--module nvme-auth --module nvme-core --module nvme --file "$NESTED_DIR/guest/nvme-check:/nvme-check")
img="$NESTED_WORKDIR/l1-vfio.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-iommu" \
    --module irqbypass "${L1_VFIO_MODULES[@]}" "${nvme_mods[@]}" --file "$EDU_VFIO_TEST:/edu-vfio-test"
img_noiommu="$NESTED_WORKDIR/l1-vfio-noiommu.img"
l1_initramfs "$img_noiommu" "$NESTED_DIR/guest/init-vfio-noiommu" "${nvme_mods[@]}" \
    --file "$EDU_VFIO_TEST:/edu-vfio-test" --file "$MINIVMM_STATIC:/minivmm"
img_wait="$NESTED_WORKDIR/l1-wait.img"
l1_initramfs "$img_wait" "$NESTED_DIR/guest/init-wait"

# error CASE PATTERN MINIVMM-ARGS...: minivmm fails at once with one line matching PATTERN.
error() {
    local case="$1" pattern="$2" log="$LOGDIR/60-vfio-error-$1.log" rc=0
    shift 2
    timeout 60 "$@" > "$log" 2>&1 < /dev/null || rc=$?
    if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "$case: exit status $rc"; return 1; fi
    [ "$(wc -l < "$log")" -eq 1 ] || { echo "$case: not one line: $(cat "$log")"; return 1; }
    grep -qE "$pattern" "$log" || { echo "$case: unexpected message: $(cat "$log")"; return 1; }
    echo "error $case: $(cat "$log")"
    errors=$((errors + 1))
}
errors=0
k=(--kernel "$BZIMAGE" --initramfs "$img" --memory 256M)
error no-such-device "PCI device 0000:ff:1f.7 does not exist" "$MINIVMM" "${k[@]}" --vfio ff:1f.7
error bad-address "is not a PCI address" "$MINIVMM" "${k[@]}" --vfio 00:99.0
other=""
for d in /sys/bus/pci/devices/*; do
    drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    if [ -n "$drv" ] && [ "$drv" != vfio-pci ] && [ "$drv" != pcieport ]; then other=$(basename "$d"); break; fi
done
if [ -n "$other" ]; then
    error wrong-driver "is bound to .*, not vfio-pci; rebind it" "$MINIVMM" "${k[@]}" --vfio "$other"
fi
error no-permission "No permission to open /dev/vfio/" \
    setpriv --reuid=65534 --regid=65534 --clear-groups "$MINIVMM" "${k[@]}" --vfio "$EDU_BDF"
error caching-mode "needs caching-mode=on" "$MINIVMM" "${k[@]}" --iommu caching-mode=off --vfio "$EDU_BDF"

# Behind the vIOMMU (with minivmm's info log, to see the BAR and RAM mappings).
check_vfio_iommu() { check_vtd_l1 48 x2apic "$1" && check_nvme "$1"; }
export RUST_LOG=info,vfio_ioctls=error
# x-query-vtd over QMP while L1 runs: a poller keeps the answer in which the edu had the most
# mappings (tests/nested/qmp-vtd-poll.py); checked as JSON below.
qmp_sock="$NESTED_WORKDIR/60-vfio-qmp.sock"
vtd_json="$LOGDIR/60-vfio-vtd.json"
rm -f "$qmp_sock" "$vtd_json"
python3 "$NESTED_DIR/qmp-vtd-poll.py" "$qmp_sock" "$vtd_json" "$EDU_BDF" > "$LOGDIR/60-vfio-vtd-poll.log" 2>&1 &
poller=$!
line=$(l1_variant "$LOGDIR/60-vfio-iommu.log" "vfio+iommu" check_vfio_iommu \
    --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M --iommu \
    --vfio "$EDU_BDF" --vfio "$NVME_BDF" --qmp "unix:$qmp_sock,server,wait=off" \
    --cmdline "console=ttyS0 panic=-1 intel_iommu=on") || { echo "$line"; kill "$poller" 2>/dev/null; exit 1; }
echo "$line"
iommu_line="$line"
unset RUST_LOG
wait "$poller" || true
[ -s "$vtd_json" ] || { echo "x-query-vtd: no answer showed $EDU_BDF ($(cat "$LOGDIR/60-vfio-vtd-poll.log"))"; exit 1; }
vtd_line=$(python3 - "$vtd_json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["device"]
assert isinstance(d["domain"], int) and d["domain"] > 0, d
assert d["mode"] == "translated", d
assert len(d["mappings"]) >= 1 and all(m["size"] > 0 for m in d["mappings"]), d
assert d["mapped_bytes"] > 0 and d["vfio"]["maps"] >= 1, d
print(f"x-query-vtd: {d['bdf']} domain {d['domain']} {d['mode']}, {len(d['mappings'])} ranges "
      f"({d['mapped_bytes']:#x} bytes), {d['vfio']['maps']} MAP_DMA")
PY
) || { echo "x-query-vtd: unexpected view: $(head -c 2000 "$vtd_json")"; exit 1; }
echo "$vtd_line"
expect "$LOGDIR/60-vfio-iommu.log" "^MINIVMM-GROUP 0000:00:01.0 0x1234:0x11e8 group=" "1234:11e8 at 00:01.0"
expect "$LOGDIR/60-vfio-iommu.log" "vfio $EDU_BDF: BAR 0 mapped into the guest at 0x" "edu's BAR 0 as a KVM memory slot"
expect "$LOGDIR/60-vfio-iommu.log" "vfio $NVME_BDF: MSI absent, MSI-X at 0x[0-9a-f]+ \([0-9]+ vectors, table in BAR 0\)" "the NVMe MSI-X capability"
expect "$LOGDIR/60-vfio-iommu.log" "vfio $NVME_BDF: BAR 0 mapped into the guest at 0x[0-9a-f]+ \(0x[0-9a-f]+ bytes, [1-9] of [1-9] pieces\)" "NVMe BAR 0 mapped around its MSI-X table"
expect "$LOGDIR/60-vfio-iommu.log" "vfio $EDU_BDF: INTx wired" "edu's INTx wired"
# The NVMe interrupts L1 took came through KVM irqfds, none through the VMM's relay; edu's
# INTx test asserted its line through the relay.
grep -A1 "^ *passthrough $NVME_BDF" "$LOGDIR/60-vfio-iommu.log" | tail -n1 | grep -q " 0 relayed by the VMM" \
    || { echo "NVMe vectors were relayed: $(grep -A1 "passthrough $NVME_BDF" "$LOGDIR/60-vfio-iommu.log" | tail -n1)"; exit 1; }
# L1's 2 MiB superpage mapping became one host mapping.
expect "$LOGDIR/60-vfio-iommu.log" "vfio $EDU_BDF: .*largest 0x200000\)" "the 2 MiB guest mapping as one host mapping"
expect "$LOGDIR/60-vfio-iommu.log" "INTx idle \([1-9][0-9]* assertions\)" "edu's INTx assertions"
expect "$LOGDIR/60-vfio-iommu.log" "guest RAM mapped at IOVA = GPA in" "the background identity mapping"
expect "$LOGDIR/60-vfio-iommu.log" "reset and released" "the device released at exit"

# SIGTERM: an orderly stop (status 128 + 15) that releases the device.
log="$LOGDIR/60-vfio-sigterm.log"
"$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img_wait" --memory 256M --vfio "$EDU_BDF" \
    > "$log" 2>&1 < /dev/null &
pid=$!
for _ in $(seq 480); do grep -q "^MINIVMM-L1-UP" "$log" && break; sleep 1; done
expect "$log" "^MINIVMM-L1-UP" "L1 up before SIGTERM"
kill -TERM $pid
rc=0; wait $pid || rc=$?
[ $rc -eq 143 ] || { echo "SIGTERM: exit status $rc, want 143"; exit 1; }
expect "$log" "minivmm: stopped by signal 15; devices released" "the stop message"
echo "sigterm: status 143, device released"

check_noiommu() {
    expect "$1" "^MINIVMM-EDU 0000:00:01.0" "the edu at 00:01.0" || return 1
    expect "$1" "^MINIVMM-TEST PASS dma-identity" "DMA at IOVA = GPA" || return 1
    expect "$1" "^MINIVMM-TEST edu-vfio-test: [0-9]+ passed, 0 failed" "no test failure" || return 1
    check_nvme "$1" > /dev/null || return 1
    # The sixth error case, from a real run on a host without an IOMMU (this L1).
    expect "$1" "^MINIVMM-NOIOMMU minivmm: error: --vfio: PCI device 0000:00:01.0 is in no IOMMU group: this host has no IOMMU enabled" "the no-IOMMU error inside L1" || return 1
    expect "$1" "reboot: Power down" "an ACPI poweroff" || return 1
    echo "error no-iommu (in L1): $(grep -m1 '^MINIVMM-NOIOMMU' "$1" | sed 's/^MINIVMM-NOIOMMU //')"
    grep -m1 "PASS dma-identity" "$1" | sed 's/^MINIVMM-TEST //'
}

# Without a vIOMMU (L1 RAM below 256 MiB: QEMU's edu masks DMA addresses to 28 bits).
line=$(l1_variant "$LOGDIR/60-vfio-noiommu.log" "vfio-noiommu" check_noiommu \
    --kernel "$BZIMAGE" --initramfs "$img_noiommu" --memory 200M --vfio "$EDU_BDF" --vfio "$NVME_BDF" \
    --cmdline "console=ttyS0 panic=-1") || { echo "$line"; exit 1; }
echo "$line"
echo "$((errors + 1)) error cases; $iommu_line; $vtd_line; sigterm ok; $line"

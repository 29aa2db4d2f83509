# shellcheck shell=bash
# virtio-net: L1 Linux drives minivmm's modern virtio-pci network card over a tap.
#  - a network namespace made here holds the tap mvtap0 (10.0.2.1/24) and L0's end of every
#    exchange; minivmm runs inside it, so no address or route exists outside the namespace;
#  - errors: a multicast MAC is refused naming '--net mac';
#  - behind the vIOMMU (intel_iommu=on): 1af4:1041 revision 1 in its own IOMMU group,
#    virtio_net bound, VERSION_1 (bit 32) and ACCESS_PLATFORM (bit 33) negotiated, link up with
#    the default MAC 52:54:00:12:34:56; L1 (10.0.2.15) pings 10.0.2.1 and sends 1 MiB over TCP
#    to a listener in the namespace, which receives the same sha256; no DMAR fault;
#  - without --iommu: ACCESS_PLATFORM not negotiated (bit 33 clear), the same exchange works.
img="$NESTED_WORKDIR/l1-net.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-net" \
    --module failover --module net_failover --module virtio_net
ns="minivmm-net-$$"
tap=mvtap0
port=5555
tmp=/run/nested-tmp
recv="$tmp/net-received"
fifo="$tmp/net-listener-stdin"
wrapper="$tmp/minivmm-in-netns"
listener=""

cleanup() {
    # The listener runs in its own session (setsid below): end its process group, by its id.
    if [ -n "$listener" ]; then kill -- -"$listener" 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true
    rm -f "$recv" "$recv.part" "$fifo" "$wrapper"
}
trap cleanup EXIT

# L0's init loads tun from its initramfs (tests/nested/setup.sh).
[ -c /dev/net/tun ] || { echo "/dev/net/tun missing in L0 (the tun module did not load)"; exit 1; }
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" ip tuntap add dev "$tap" mode tap
ip -n "$ns" addr add 10.0.2.1/24 dev "$tap"
ip -n "$ns" link set "$tap" up
# No address outside the namespace: the tap is not in L0's own namespace.
if ip link show "$tap" > /dev/null 2>&1; then echo "$tap is visible outside $ns"; exit 1; fi

# The listener: one connection at a time, each written to $recv.part and moved to $recv when
# it ends (a retried L1 overwrites its earlier run's). Its stdin is a FIFO the loop holds open
# for writing, so nc never sees the end of its input and half-closes before L1 is done.
rm -f "$recv" "$recv.part" "$fifo"
mkfifo "$fifo"
# shellcheck disable=SC2016 # expanded by the inner bash
setsid ip netns exec "$ns" bash -c '
    exec 3<> "$2"
    while :; do
        busybox nc -l -p "$3" < "$2" > "$1.part" || exit 1
        mv "$1.part" "$1"
    done' listener "$recv" "$fifo" "$port" &
listener=$!

# minivmm inside the namespace: run_l1 takes one program path.
printf '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' "$ns" "$MINIVMM" > "$wrapper"
chmod +x "$wrapper"

# A multicast MAC is no card's address: refused before anything is made, naming the option.
log="$LOGDIR/80-net-error-mac.log"
rc=0
timeout 60 "$wrapper" --kernel "$BZIMAGE" --initramfs "$img" --net "tap=$tap,mac=01:00:5e:00:00:01" \
    > "$log" 2>&1 < /dev/null || rc=$?
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "bad MAC: exit status $rc"; exit 1; fi
grep -q "'--net mac'" "$log" || { echo "bad MAC: unexpected message: $(cat "$log")"; exit 1; }
echo "error bad-mac: $(head -n1 "$log")"

# bit LOG BIT: the negotiated feature bit BIT of the virtio-net device.
bit() {
    grep -m1 "^MINIVMM-VIRTIO .* device=0x0001 " "$1" | sed 's/.*features=\([01]*\).*/\1/' | cut -c$(($2 + 1))
}

# check_net IOMMU(1|0) LOG
check_net() {
    local iommu="$1" log="$2" sent got pings
    expect "$log" "^MINIVMM-L1-UP" "the init marker" || return 1
    reject "$log" "MINIVMM-INSMOD-FAILED" "a module load failure" || return 1
    expect "$log" "^MINIVMM-PCI .* 0x1af4:0x1041 rev=0x01" "the virtio-net function" || return 1
    expect "$log" "^MINIVMM-VIRTIO .* device=0x0001 .*driver=virtio_net" "virtio_net bound" || return 1
    grep -m1 "^MINIVMM-VIRTIO .* device=0x0001 " "$log" >&2
    [ "$(bit "$log" 32)" = 1 ] || { echo "VERSION_1 not negotiated"; return 1; }
    [ "$(bit "$log" 33)" = "$iommu" ] || { echo "ACCESS_PLATFORM bit is not $iommu"; return 1; }
    if [ "$iommu" = 1 ]; then
        expect "$log" "DMAR: IOMMU enabled" "'DMAR: IOMMU enabled'" || return 1
        reject "$log" "^MINIVMM-PCI .* group=none" "a virtio function without an IOMMU group" || return 1
    fi
    expect "$log" "^MINIVMM-NET-LINK up 52:54:00:12:34:56" "eth0 up with the default MAC" || return 1
    pings=$(sed -n 's/^MINIVMM-NET-PING \([0-9]*\).*/\1/p' "$log")
    [ "${pings:-0}" -ge 1 ] || { echo "no ping reply from 10.0.2.1"; return 1; }
    expect "$log" "^MINIVMM-NET-NC ok" "the TCP send to finish" || return 1
    sent=$(sed -n 's/^MINIVMM-NET-SENT \([0-9a-f]*\).*/\1/p' "$log")
    [ -n "$sent" ] || { echo "L1 printed no sha256 of what it sent"; return 1; }
    # The listener moves the file in place when the connection ends.
    for _ in $(seq 1 30); do [ -f "$recv" ] && break; sleep 1; done
    [ -f "$recv" ] || { echo "the listener in $ns received no connection"; return 1; }
    got=$(sha256sum < "$recv" | cut -d' ' -f1)
    [ "$got" = "$sent" ] || { echo "L0 received $(wc -c < "$recv") bytes, sha256 $got; L1 sent $sent"; return 1; }
    reject "$log" "^MINIVMM-FAULT" "a DMAR fault" || return 1
    expect "$log" "reboot: Power down" "an ACPI poweroff" || return 1
    echo "ping $pings/3, 1 MiB over TCP with matching sha256, bits 32=1 33=$iommu"
}

rm -f "$recv"
line=$(MINIVMM="$wrapper" l1_variant "$LOGDIR/80-net-iommu.log" "net+iommu" "check_net 1" \
    --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M --iommu \
    --net "tap=$tap" --cmdline "console=ttyS0 panic=-1 intel_iommu=on") || { echo "$line"; exit 1; }
echo "$line"; summary="$line"
rm -f "$recv"
line=$(MINIVMM="$wrapper" l1_variant "$LOGDIR/80-net-noiommu.log" "net, no iommu" "check_net 0" \
    --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M \
    --net "tap=$tap" --cmdline "console=ttyS0 panic=-1") || { echo "$line"; exit 1; }
echo "$line"
echo "$summary; $line"

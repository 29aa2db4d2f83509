#!/usr/bin/env bash
# Runs inside L0 (see scripts/bench-net.sh): TCP throughput from L0 to L1 through a host port
# forward, in one L0, each with the same kernel and initramfs: minivmm --net user (passt;
# also with mtu=65520), QEMU -netdev user (slirp) and QEMU -netdev stream to a passt started
# here (also at MTU 65520). Each VM boots once and takes BENCH_RUNS (default 5) transfers of
# BENCH_MB (default 32) MiB; a transfer counts only when L1 reports receiving every byte. Prints
# per-transfer MB/s and the medians side by side.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
: "${MINIVMM:?}"
runs="${BENCH_RUNS:-5}"
size=$(( ${BENCH_MB:-32} * 1024 * 1024 ))
py=/usr/bin/python3
client="$NESTED_DIR/user-net-client.py"
# In the work dir, so the logs outlive L0.
tmp="$NESTED_WORKDIR/logs/bench-net"; mkdir -p "$tmp"
img="$tmp/l1.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-bench-net" \
    --module failover --module net_failover --module virtio_net 2>/dev/null
# The lab's passt (tests/nested/build-passt.sh) first on PATH, for minivmm and for QEMU's.
[ -n "${LAB_PASST:-}" ] && PATH="$(dirname "$LAB_PASST"):$PATH"
command -v passt > /dev/null || { echo "bench-net: passt is not installed in L0" >&2; exit 1; }

# A namespace with a routable template interface for passt (nothing is sent on it).
ns="minivmm-benchnet-$$"
vm=""
passt_pid=""
sockdir=""
cleanup() {
    if [ -n "$vm" ]; then kill "$vm" 2>/dev/null || true; fi
    if [ -n "$passt_pid" ]; then kill "$passt_pid" 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true
    if [ -n "$sockdir" ]; then rm -rf "$sockdir"; fi
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" ip tuntap add dev mvtpl0 mode tap
ip -n "$ns" addr add 10.0.2.15/24 dev mvtpl0
ip -n "$ns" link set mvtpl0 up
ip -n "$ns" route add default via 10.0.2.2 dev mvtpl0 onlink
in_ns() { ip netns exec "$ns" "$@"; }

cmdline="console=ttyS0 panic=-1"
# shellcheck disable=SC2054 # QEMU's option syntax has commas
q=(qemu-system-x86_64 -machine q35,accel=kvm -cpu host -smp 2 -m 512M -kernel "$BZIMAGE"
    -initrd "$img" -append "$cmdline" -display none -serial stdio -no-reboot -nodefaults)

# measure NAME PORT CMD...: boots CMD in the namespace, waits for L1, runs the transfers to
# 127.0.0.1:PORT and appends each MB/s to $tmp/NAME.txt.
measure() {
    local name="$1" port="$2" log="$tmp/$1.log" before after r i
    shift 2
    : > "$tmp/$name.txt"
    # ip netns exec directly (it execs the VMM), so $! is the VMM: a function run in the
    # background would be a subshell, and killing it would leave the VM running.
    # A boot the lab fails (TCG's nested SVM: a triple fault under either VMM) is tried once
    # more, its log kept as NAME-failed.log.
    for attempt in 1 2; do
        ip netns exec "$ns" "$@" > "$log" 2>&1 < /dev/null &
        vm=$!
        for _ in $(seq 1 400); do
            grep -q "MINIVMM-BENCH-READY" "$log" && break
            kill -0 "$vm" 2>/dev/null || break
            sleep 1
        done
        grep -q "MINIVMM-BENCH-READY" "$log" && break
        echo "bench-net: $name: L1 never got ready (attempt $attempt, log $tmp/$name-failed.log)"
        kill "$vm" 2>/dev/null || true
        wait "$vm" 2>/dev/null || true
        vm=""
        mv "$log" "$tmp/$name-failed.log"
        port_free "$port"
    done
    [ -n "$vm" ] || return 0
    echo "bench-net: $name: $(grep -m1 "MINIVMM-DHCP" "$log" | tr -d '\r'), $(grep -m1 -o "mtu=[0-9]*" "$log")"
    for i in $(seq 1 $((runs * 2))); do
        [ "$(wc -l < "$tmp/$name.txt")" -ge "$runs" ] && break
        before=$(grep -c "MINIVMM-BENCH-RECV $size" "$log" || true)
        r=$(in_ns timeout 300 "$py" "$client" bench "$port" "$size") || r=""
        sleep 1
        after=$(grep -c "MINIVMM-BENCH-RECV $size" "$log" || true)
        if [ -n "$r" ] && [ "$after" -gt "$before" ]; then
            echo "$r" >> "$tmp/$name.txt"
            printf 'bench-net: %-16s transfer %s: %8s MB/s\n' "$name" "$i" "$r"
        else
            echo "bench-net: $name transfer $i: L1 did not receive all $size bytes; not counted"
        fi
    done
    kill "$vm" 2>/dev/null || true
    wait "$vm" 2>/dev/null || true
    vm=""
    port_free "$port"
}
# port_free PORT: until nothing listens on PORT (minivmm's passt goes when its socket closes).
port_free() {
    for _ in $(seq 1 50); do in_ns ss -ltn | grep -q ":$1 " || return 0; sleep 0.2; done
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

start_idle_vm
measure minivmm-passt 15001 "$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 \
    --memory 512M --net "user,hostfwd=tcp::15001-:5001" --cmdline "$cmdline"
# The same with a 65520-byte MTU (passt --mtu, VIRTIO_NET_F_MTU): no TSO over the socket,
# so large frames are how the guest sends fewer packets.
measure minivmm-passt-64k 15004 "$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 \
    --memory 512M --net "user,hostfwd=tcp::15004-:5001,mtu=65520" --cmdline "$cmdline"
# QEMU's user networking (slirp).
# shellcheck disable=SC2054 # QEMU's option syntax has commas
measure qemu-slirp 15002 "${q[@]}" -netdev user,id=n0,hostfwd=tcp::15002-:5001 \
    -device virtio-net-pci,netdev=n0,disable-legacy=on
# QEMU over the same passt, started here. Who binds passt's socket depends on its version:
# Debian 12's passt as nobody, the lab's 2025 build as root without capabilities (so not in a
# 0700 directory of nobody's either): the directory is open to both, sticky as /tmp is.
sockdir=$(mktemp -d)
chmod 1777 "$sockdir"
ip netns exec "$ns" passt --foreground --quiet --socket "$sockdir/passt.sock" --tcp-ports 15003:5001 \
    --udp-ports none > "$tmp/passt.log" 2>&1 &
passt_pid=$!
for _ in $(seq 1 50); do [ -S "$sockdir/passt.sock" ] && break; sleep 0.2; done
# shellcheck disable=SC2054
measure qemu-passt 15003 "${q[@]}" \
    -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sockdir/passt.sock" \
    -device virtio-net-pci,netdev=n0,disable-legacy=on
kill "$passt_pid" 2>/dev/null || true
wait "$passt_pid" 2>/dev/null || true
# QEMU over a passt with the same 65520-byte MTU as minivmm's 64k row (host_mtu= is
# VIRTIO_NET_F_MTU): tells whether a loss at that MTU is minivmm's or passt's.
rm -f "$sockdir/passt.sock"
ip netns exec "$ns" passt --foreground --quiet --socket "$sockdir/passt.sock" --tcp-ports 15005:5001 \
    --udp-ports none --mtu 65520 > "$tmp/passt-64k.log" 2>&1 &
passt_pid=$!
for _ in $(seq 1 50); do [ -S "$sockdir/passt.sock" ] && break; sleep 0.2; done
# shellcheck disable=SC2054
measure qemu-passt-64k 15005 "${q[@]}" \
    -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sockdir/passt.sock" \
    -device virtio-net-pci,netdev=n0,disable-legacy=on,host_mtu=65520
kill "$passt_pid" 2>/dev/null || true
passt_pid=""
stop_idle_vm

row() { printf '%-36s %14s %16s %12s %14s %12s\n' "$@"; }
cols=(minivmm-passt minivmm-passt-64k qemu-passt qemu-passt-64k qemu-slirp)
echo
row "TCP L0 -> L1 through hostfwd, MB/s" "minivmm+passt" "minivmm+passt64k" "qemu+passt" \
    "qemu+passt64k" "qemu slirp"
meds=(); counts=()
for c in "${cols[@]}"; do
    meds+=("$(median < "$tmp/$c.txt")"); counts+=("$(wc -l < "$tmp/$c.txt")")
done
row "median of the transfers" "${meds[@]}"
row "transfers counted" "${counts[@]}"
echo "($((size / 1048576)) MiB per transfer, one boot per VMM, same L0, kernel and initramfs)"

# shellcheck shell=bash
# Typing into minivmm's stdin reaches the guest through the UART's interrupt (IRQ 4 through
# the userspace IOAPIC). The line is sent once the guest says it is reading.
img="$NESTED_WORKDIR/l1-echo.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-echo"
log="$LOGDIR/40-console-input.log"
fifo=$(mktemp -u "${TMPDIR:-/tmp}/stdin.XXXXXX"); mkfifo "$fifo"
(
    exec 3> "$fifo"
    for _ in $(seq 1 460); do
        grep -q "MINIVMM-L1-READY" "$log" 2>/dev/null && break
        sleep 1
    done
    sleep 1
    echo "hello-from-stdin" >&3
    sleep 60
) &
writer=$!
set +e
timeout -k 5 480 "$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --memory 256M \
    --cmdline "console=ttyS0 panic=-1" < "$fifo" > "$log" 2>&1
rc=$?
set -e
kill "$writer" 2>/dev/null || true
rm -f "$fifo"
[ $rc -eq 0 ] || { echo "minivmm exited $rc"; exit 1; }
expect "$log" "MINIVMM-L1-GOT <hello-from-stdin>" "the echoed input"
expect "$log" "IO-APIC.*4-edge.*ttyS0" "the UART's interrupt on IOAPIC pin 4 in /proc/interrupts"
echo "console input echoed back; $(grep -m1 -E 'IO-APIC.*ttyS0' "$log" | tr -s ' ')"

# shellcheck shell=bash
# A guest kernel panic (reported through pvpanic) ends minivmm non-zero with a message.
img="$NESTED_WORKDIR/l1-panic.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-panic" --module pvpanic --module pvpanic-mmio
log="$LOGDIR/30-panic.log"
rc=0
run_l1 "$log" 480 --kernel "$BZIMAGE" --initramfs "$img" --memory 256M \
    --cmdline "console=ttyS0 panic=-1" || rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then
    echo "minivmm exited $rc (want a non-zero status, not a timeout)"; exit 1
fi
expect "$log" "^MINIVMM-L1-UP" "the init marker"
expect "$log" "Kernel panic" "the panic"
expect "$log" "minivmm: the guest kernel panicked" "minivmm's panic message"
echo "panic ended minivmm with $rc and a message"

# shellcheck shell=bash
# A guest reboot request ends minivmm with status 0.
img="$NESTED_WORKDIR/l1-reboot.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-reboot"
log="$LOGDIR/20-reboot.log"
RUST_LOG=${RUST_LOG:-info} run_l1 "$log" 480 --kernel "$BZIMAGE" --initramfs "$img" --memory 256M \
    --cmdline "console=ttyS0 panic=-1" || { echo "minivmm exited $? (want 0)"; exit 1; }
expect "$log" "^MINIVMM-L1-UP" "the init marker"
expect "$log" "reboot: Restarting system" "the kernel's restart"
echo "reboot ended minivmm with 0"

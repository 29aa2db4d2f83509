# shellcheck shell=bash
# Linux boots on 2 vCPUs to its init, sees both CPUs, and poweroff ends minivmm with 0.
img="$NESTED_WORKDIR/l1-boot.img"
l1_initramfs "$img" "$NESTED_DIR/guest/init-boot"
log="$LOGDIR/10-boot.log"
start=$(date +%s.%N)
run_l1 "$log" 480 --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M \
    --cmdline "console=ttyS0 panic=-1" || { echo "minivmm exited $? (want 0)"; exit 1; }
expect "$log" "^MINIVMM-L1-UP" "the init marker"
expect "$log" "^MINIVMM-L1-CPUS 2 online=0-1" "2 online CPUs"
expect "$log" "reboot: Power down" "an ACPI poweroff"
echo "booted to init and powered off in $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)")s"

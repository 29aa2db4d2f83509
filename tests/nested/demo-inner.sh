#!/usr/bin/env bash
# Inside L0: boot Linux under minivmm with the guest console on stdout.
set -euo pipefail
img="$NESTED_WORKDIR/l1-demo.img"
"$NESTED_DIR/mk-initramfs.sh" "$img" "$NESTED_DIR/guest/init-demo" 2>/dev/null
echo "+ minivmm --kernel $BZIMAGE --initramfs $img --cpus 2 --memory 512M --cmdline \"console=ttyS0\""
start=$(date +%s.%N)
"$MINIVMM" --kernel "$BZIMAGE" --initramfs "$img" --cpus 2 --memory 512M --cmdline "console=ttyS0" < /dev/null
rc=$?
echo "+ minivmm exited $rc after $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5)s"
exit $rc

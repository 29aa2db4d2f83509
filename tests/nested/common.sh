# shellcheck shell=bash
# What the lab's scripts share, on the host and inside L0 (where the checkout is at the same
# path). Sourced; sets no shell options. Source it before any `cd`, so that a relative
# NESTED_WORKDIR means the directory the user named.
#
#   NESTED_DIR       tests/nested (absolute)
#   REPO_ROOT        the checkout (absolute)
#   NESTED_WORKDIR   the work dir: $NESTED_WORKDIR or tests/nested/work; created, absolute, exported
#   L1_VFIO_MODULES  mk-initramfs.sh arguments for the modules an L1 needs to bind a device to
#                    its own vfio-pci, in load order (irqbypass goes before them)
#   lab_env          sources $NESTED_WORKDIR/env.sh (KVER, BZIMAGE, VMLINUX, MODDIR; setup.sh)
#   build_static     static builds of workspace packages (they run in any initramfs)
#   static_bin       the path of such a build
#   build_payload    assembles a tests/payloads/*.S into a Multiboot ELF32 image
#   start_idle_vm    (in L0) the idle VM that keeps L0's KVM static keys still

NESTED_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$NESTED_DIR/../.." && pwd)"
NESTED_WORKDIR="${NESTED_WORKDIR:-$NESTED_DIR/work}"
mkdir -p "$NESTED_WORKDIR"
NESTED_WORKDIR="$(cd "$NESTED_WORKDIR" && pwd)"
export NESTED_WORKDIR

# shellcheck disable=SC2034 # used by the scripts that source this
L1_VFIO_MODULES=(--module vfio --module vfio_iommu_type1 --module vfio-pci-core --module vfio-pci)

# lab_env: the variables of the unpacked kernel (tests/nested/setup.sh writes env.sh).
lab_env() {
    # shellcheck source=/dev/null
    . "$NESTED_WORKDIR/env.sh"
}

STATIC_TARGET=x86_64-unknown-linux-gnu

# build_static PKG...: release builds of PKG..., linked statically.
build_static() {
    local p args=()
    for p in "$@"; do args+=(-p "$p"); done
    (cd "$REPO_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --quiet --target "$STATIC_TARGET" "${args[@]}")
}

# static_bin NAME: prints the path of build_static's NAME.
static_bin() {
    printf '%s\n' "$REPO_ROOT/target/$STATIC_TARGET/release/$1"
}

# build_payload NAME OUTDIR: tests/payloads/NAME.S as OUTDIR/NAME.elf, a Multiboot image (ELF32,
# loaded at 1 MiB; vmm/tests/kvm_payload.rs builds its payloads the same way).
build_payload() {
    local name="$1" out="$2"
    cc -c -o "$out/$name.o" "$REPO_ROOT/tests/payloads/$name.S"
    ld -m elf_x86_64 -Ttext=0x100000 -z noseparate-code -nostdlib -o "$out/${name}64.elf" "$out/$name.o"
    objcopy -I elf64-x86-64 -O elf32-i386 "$out/${name}64.elf" "$out/$name.elf"
}

# start_idle_vm: in L0, starts an idle VM (tests/payloads/idle.S, built by build-idle.sh) under
# $MINIVMM for the rest of the script and stops it on exit (an EXIT trap). Held while L1s start
# and stop, it keeps L0's KVM static keys from toggling (idle.S says why). Without idle.elf it
# says so and carries on.
IDLE_PID=""
start_idle_vm() {
    if [ ! -f "$NESTED_WORKDIR/idle.elf" ]; then
        echo "note: no $NESTED_WORKDIR/idle.elf (tests/nested/build-idle.sh); running without the idle VM" >&2
        return 0
    fi
    "$MINIVMM" --kernel "$NESTED_WORKDIR/idle.elf" --memory 32M --serial off > /dev/null 2>&1 &
    IDLE_PID=$!
    trap stop_idle_vm EXIT
}

stop_idle_vm() {
    if [ -n "$IDLE_PID" ]; then
        kill "$IDLE_PID" 2>/dev/null || true
    fi
    IDLE_PID=""
}

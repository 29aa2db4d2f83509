#!/usr/bin/env bash
# Builds the lab's L0 QEMU, once (cached in the work dir): Debian's QEMU 10.0.2 source
# (bookworm-backports, fetched with apt-get source), x86_64-softmmu only, with one fix:
# target/i386's helper_write_crN raises or lowers the virtual interrupt of a nested SVM guest
# that writes CR8 without taking the big QEMU lock, and TCG aborts (tcg_handle_interrupt:
# assertion failed: (bql_locked())). Linux in L1 never hits it; OVMF in L1 does within seconds.
# qemu-l0-bql.patch takes the lock there. Prints the binary's path.
# Usage: tests/nested/build-l0-qemu.sh
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
version=10.0.2
tarball_sha256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
dest="$NESTED_WORKDIR/l0-qemu"
bin="$dest/bin/qemu-system-x86_64"
stamp="$dest/stamp"
# What the build depends on: the version, the patch and the configure options.
configure_args=(--target-list=x86_64-softmmu --firmwarepath=/usr/share/qemu:/usr/share/seabios
    --disable-docs --disable-werror --disable-install-blobs --without-default-features
    --enable-virtfs --enable-attr --enable-pixman)
want="$version $(printf '%s\n' "${configure_args[@]}" | cat - "$NESTED_DIR/qemu-l0-bql.patch" | sha256sum | cut -c1-16)"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$bin"
    exit 0
fi
log() { printf 'build-l0-qemu: %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# Build dependencies (Debian) and the meson QEMU 10 needs (PyPI; bookworm's is too old).
deps=(ninja-build libglib2.0-dev libpixman-1-dev libattr1-dev libfdt-dev pkg-config gcc make)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check "meson==1.5.0" "pycotap==1.3.1" 2>&1 \
    | grep -v -e "Running pip as the 'root' user" -e "^$" >&2 || true

# The source: Debian's orig tarball, through a deb-src entry for bookworm-backports.
src="$NESTED_WORKDIR/l0-qemu-src"
mkdir -p "$src"
tarball="$src/qemu_$version+ds.orig.tar.xz"
if ! echo "$tarball_sha256  $tarball" | sha256sum -c --quiet >/dev/null 2>&1; then
    list=/etc/apt/sources.list.d/minivmm-lab-src.sources
    if ! grep -qs bookworm-backports "$list"; then
        log "adding a deb-src entry for bookworm-backports ($list)"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | $SUDO tee "$list" >/dev/null
        $SUDO apt-get update -qq
    fi
    srcver=$(apt-cache showsrc qemu | sed -n "s/^Version: \(1:$version+ds-.*\)/\1/p" | head -n1)
    [ -n "$srcver" ] || { log "no qemu $version source package in apt"; exit 1; }
    log "fetching the source of qemu $srcver"
    # Only the orig tarball is needed; apt may fail on the .dsc while fetching it.
    (cd "$src" && apt-get source --download-only -qq "qemu=$srcver" >/dev/null 2>&1) || true
    echo "$tarball_sha256  $tarball" | sha256sum -c --quiet \
        || { log "$tarball missing or not the expected one"; exit 1; }
fi

build="$src/qemu-$version"
rm -rf "$build"
tar xf "$tarball" -C "$src"
(cd "$build" && patch -p1 -s < "$NESTED_DIR/qemu-l0-bql.patch")
# The Debian source has no firmware blobs: do not unpack the edk2 ones; the lab uses Debian's
# SeaBIOS and option ROMs (--firmwarepath).
sed -i 's/^    unpack_edk2_blobs = bzip2.found()/    unpack_edk2_blobs = false/' "$build/meson.build"
log "configuring (x86_64-softmmu)"
mkdir -p "$build/build"
(cd "$build/build" && ../configure --prefix="$dest" "${configure_args[@]}" >"$src/configure.log" 2>&1) || { tail -n 20 "$src/configure.log" >&2; exit 1; }
log "building (about 20 minutes on 2 cores)"
start=$(date +%s)
(cd "$build/build" && ninja -j"$(nproc)" qemu-system-x86_64 >"$src/build.log" 2>&1) \
    || { tail -n 30 "$src/build.log" >&2; exit 1; }
mkdir -p "$dest/bin"
cp "$build/build/qemu-system-x86_64" "$bin"
echo "$want" > "$stamp"
rm -rf "$build"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"

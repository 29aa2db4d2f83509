#!/usr/bin/env bash
# Builds the passt the lab's user-networking scenario and benchmark run, once (cached in the
# work dir): Debian trixie's passt source (2025-05-03), fetched with apt-get source. Debian 12's
# own package (2023-03-09) crashes in L0: with the lab's 6.12 kernel it dies of a SIGSEGV right
# after accepting its first forwarded TCP connection (after getsockopt(TCP_INFO) and SO_SNDBUF;
# seen with strace), so no hostfwd connection ever reaches the guest. Prints the binary's path.
# Usage: tests/nested/build-passt.sh
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
version=0.0~git20250503.587980c
tarball_sha256=69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49
dest="$NESTED_WORKDIR/passt"
bin="$dest/passt"
if [ -x "$bin" ] && [ "$(cat "$dest/stamp" 2>/dev/null)" = "$version" ]; then
    echo "$bin"
    exit 0
fi
log() { printf 'build-passt: %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
mkdir -p "$dest"
tarball="$dest/passt_$version.orig.tar.xz"
if ! echo "$tarball_sha256  $tarball" | sha256sum -c --quiet >/dev/null 2>&1; then
    list=/etc/apt/sources.list.d/minivmm-lab-trixie-src.sources
    if ! grep -qs trixie "$list"; then
        log "adding a deb-src entry for trixie ($list)"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | $SUDO tee "$list" >/dev/null
        $SUDO apt-get update -qq
    fi
    srcver=$(apt-cache showsrc passt | sed -n "s/^Version: \($version-.*\)/\1/p" | head -n1)
    [ -n "$srcver" ] || { log "no passt $version source package in apt"; exit 1; }
    log "fetching the source of passt $srcver"
    # Only the orig tarball is needed; apt may fail on the .dsc while fetching it.
    (cd "$dest" && apt-get source --download-only -qq "passt=$srcver" >/dev/null 2>&1) || true
    echo "$tarball_sha256  $tarball" | sha256sum -c --quiet >/dev/null 2>&1 \
        || { log "$tarball missing or not the expected one"; exit 1; }
fi
src=$(mktemp -d "${TMPDIR:-/tmp}/passt-src.XXXXXX")
trap 'rm -rf "$src"' EXIT
tar xf "$tarball" -C "$src"
log "building"
(cd "$src"/passt-* && make -j"$(nproc)" passt >"$dest/build.log" 2>&1) \
    || { tail -n 20 "$dest/build.log" >&2; exit 1; }
cp "$src"/passt-*/passt "$bin"
echo "$version" > "$dest/stamp"
echo "$bin"

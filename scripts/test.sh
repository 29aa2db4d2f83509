#!/usr/bin/env bash
# The project's whole test suite, as CI runs it: shellcheck on the scripts, formatting, lints,
# unit and integration tests on this host's /dev/kvm, then the nested-KVM scenarios (minivmm
# inside a simulated L0 host).
# Usage: scripts/test.sh [--no-nested]
set -euo pipefail
cd "$(dirname "$0")/.."

nested=1
case "${1:-}" in
"") ;;
--no-nested) nested=0 ;;
*) echo "usage: scripts/test.sh [--no-nested]" >&2; exit 2 ;;
esac

step() { printf '\n=== %s\n' "$*"; }

step "Installing test prerequisites (apt; skipped when present)"
scripts/install-deps.sh

step "shellcheck (the lab's and these scripts)"
shellcheck -x scripts/*.sh tests/nested/*.sh tests/nested/scenarios/*.sh tests/nested/l0-init \
    tests/nested/guest/*

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release"
cargo build --release --workspace

# A debug build: some /dev/kvm payload tests use the fault hooks only debug builds have
# (MINIVMM_TEST_FAULT, vmm/src/lifecycle.rs), and fail against a release minivmm.
step "cargo test (unit tests, /dev/kvm payload tests; debug build)"
cargo test --workspace

if [ "$nested" = 1 ]; then
    step "Nested-KVM scenarios (L0 = QEMU TCG host, minivmm inside it)"
    MINIVMM="$PWD/target/release/minivmm" tests/nested/run-all.sh
fi

#!/usr/bin/env bash
# Builds the lab's Multiboot payloads (ELF32) into the work dir: tests/payloads/idle.S, the idle
# VM L0 keeps running while scenarios or benchmark runs start and stop L1s, and
# tests/payloads/triple-fault.S, with which the reliability check tests its triple-fault
# detection under each VMM.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/common.sh"
for p in idle triple-fault; do
    build_payload "$p" "$NESTED_WORKDIR"
done

#!/usr/bin/env bash
# The nested lab as a reliability check: in one L0, boots the same L1 RUNS times (default 30)
# under minivmm and RUNS times under QEMU-KVM, alternately, after an unmeasured warm-up, and
# prints per VMM the clean boots, triple faults, "Oops: int3" flakes, timeouts and other
# failures, with the median boot time (tests/nested/reliability-inner.sh does the work).
# Environment: RUNS; MINIVMM (default target/release/minivmm, built if missing);
# NESTED_WORKDIR (default tests/nested/work); UNTIL=HH:MM (UTC) starts no round after that
# time and prints the counts so far; RESUME=1 keeps the results of an earlier, interrupted
# check and continues it. Results and every log: $NESTED_WORKDIR/reliability/.
set -euo pipefail
# shellcheck source=tests/nested/common.sh
. "$(dirname "$0")/../tests/nested/common.sh"
cd "$REPO_ROOT"
export MINIVMM="${MINIVMM:-$PWD/target/release/minivmm}"
[ -x "$MINIVMM" ] || cargo build --release -p minivmm
tests/nested/setup.sh
tests/nested/build-idle.sh
export RELIABILITY_RUNS="${RUNS:-30}"
timeout=$((RELIABILITY_RUNS * 2 * 300 + 600))
if [ -n "${UNTIL:-}" ]; then
    RELIABILITY_UNTIL=$(date -u -d "$UNTIL" +%s)
    export RELIABILITY_UNTIL
    # Room for the round in progress when the time comes (two boots of up to 300 s), and no
    # more.
    timeout=$((RELIABILITY_UNTIL - $(date +%s) + 2 * 300 + 120))
fi
if [ "${RESUME:-0}" != 1 ]; then
    rm -rf "$NESTED_WORKDIR/reliability"
fi
exec tests/nested/run-l0.sh --timeout "$timeout" tests/nested/reliability-inner.sh

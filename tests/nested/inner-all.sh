#!/usr/bin/env bash
# Runs inside L0: every scenario in tests/nested/scenarios (or those named in $SCENARIOS),
# each with its log in $NESTED_WORKDIR/logs; prints PASS/FAIL lines and a summary line.
set -uo pipefail
# shellcheck source=tests/nested/common.sh
. "$NESTED_DIR/common.sh"
export LOGDIR="$NESTED_WORKDIR/logs"
rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
: "${MINIVMM:?MINIVMM must point at the minivmm binary}"
[ -x "$MINIVMM" ] || { echo "MINIVMM=$MINIVMM is not executable"; exit 1; }
passed=0; failed=0
# An idle VM held for the whole run keeps L0's KVM static keys from toggling (idle.S says why).
start_idle_vm
for s in "$NESTED_DIR"/scenarios/*.sh; do
    name=$(basename "$s" .sh)
    if [ -n "${SCENARIOS:-}" ] && ! grep -qw -- "${name#*-}" <<< "$SCENARIOS"; then continue; fi
    start=$(date +%s.%N)
    out=$(bash -e -c ". '$NESTED_DIR/lib.sh'; . '$s'" 2>&1)
    rc=$?
    secs=$(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo 0)")
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "PASS $name (${secs}s)${out:+: $(tail -n1 <<< "$out")}"
    else
        failed=$((failed + 1))
        echo "FAIL $name (${secs}s): $(tail -n1 <<< "$out")"
        # shellcheck disable=SC2001 # a prefix on every line
        sed 's/^/    | /' <<< "$out" | tail -n 20
        for l in "$LOGDIR"/"$name"*.log; do
            [ -f "$l" ] || continue
            echo "    --- last lines of $l"
            tail -n 25 "$l" | sed 's/^/    | /'
        done
    fi
done
stop_idle_vm
echo "nested: $passed passed, $failed failed"
[ $failed -eq 0 ]

# Helpers for nested scenarios (sourced inside L0 by inner-all.sh).
# Each scenario is tests/nested/scenarios/NN-name.sh, run with bash; exit 0 means pass.
# Available: $MINIVMM, $BZIMAGE, $MODDIR, $EDU_BDF, $NESTED_DIR, $NESTED_WORKDIR, $LOGDIR.

# l1_initramfs OUT INIT [mk-initramfs args...]
l1_initramfs() {
    "$NESTED_DIR/mk-initramfs.sh" "$@" 2>/dev/null
}

# run_l1 LOG TIMEOUT [minivmm args...]: runs minivmm, console and stderr to LOG; returns its
# exit status (124 on timeout).
run_l1() {
    local log="$1" t="$2"; shift 2
    set +e
    timeout -k 5 "$t" "$MINIVMM" "$@" > "$log" 2>&1 < /dev/null
    local rc=$?
    set -e
    echo "minivmm exited $rc" >> "$log"
    return $rc
}

# expect LOG PATTERN [what]: fails with a message unless LOG matches PATTERN (grep -E).
expect() {
    if ! grep -qE "$2" "$1"; then
        echo "expected ${3:-$2} in $1"
        return 1
    fi
}

# reject LOG PATTERN [what]: fails if LOG matches PATTERN.
reject() {
    if grep -qE "$2" "$1"; then
        echo "unexpected ${3:-$2} in $1: $(grep -m1 -E "$2" "$1")"
        return 1
    fi
}

# lab_flake LOG: whether LOG shows the lab's known TCG failure: a kernel oops on an int3 left
# behind by cross-CPU code patching (text_poke_bp), seen in L0 and L1 alike under multi-threaded
# TCG with nested SVM. Scenarios retry a run once when it shows this, and say so.
lab_flake() {
    grep -q "Oops: int3" "$1"
}

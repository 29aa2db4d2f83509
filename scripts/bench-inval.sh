#!/usr/bin/env bash
# Benchmark (not a test), on this host, no lab: what one queued invalidation costs the VT-d
# model natively (iommu/examples/inval_cost.rs), for a tracked device (VFIO's case: walk of the
# invalidated range, diff, host effects taken and acknowledged, no host call) beside an
# untracked one (an emulated device's case) measured in the same run. With PROFILE=1, also the
# instructions one invalidation executes in each case (valgrind's callgrind), the figure that
# carries over to the lab's TCG-emulated L0 better than native time does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p iommu --example inval_cost
bin=target/release/examples/inval_cost
"$bin"
if [ "${PROFILE:-0}" = 1 ]; then
    command -v valgrind > /dev/null || { echo "bench-inval: PROFILE=1 needs valgrind" >&2; exit 1; }
    out=$(mktemp -d)
    # Instructions of N and 2N pairs: the difference is N pairs' worth, start-up excluded.
    count() { # MODE PAIRS
        valgrind --tool=callgrind --callgrind-out-file="$out/$1.$2" "$bin" "$1" "$2" 2>&1 |
            sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    }
    echo "instructions per IQT write (callgrind, 1000 map+unmap pairs):"
    for mode in untracked tracked; do
        a=$(count "$mode" 1000)
        b=$(count "$mode" 2000)
        printf '  %-10s %8d\n' "$mode" $(((b - a) / 2000))
    done
    rm -rf "$out"
fi

# shellcheck shell=bash
# shellcheck disable=SC2034 # T_INIT and PEAK_MIB are read by the benchmarks that source this
# What the lab's benchmarks share (sourced inside L0).
#   timed_run LOG CMD...   runs CMD (600 s at most) with its output in LOG; sets T_INIT (seconds
#                          from start to the first line starting MINIVMM-L1-UP, 0 if none) and
#                          PEAK_MIB (the VMM's peak resident memory)
#   median                 the median of the numbers on stdin
# Measuring must not load the lab (L0 emulates every instruction): the console is read by a
# bash loop that only uses builtins ($EPOCHREALTIME, read), and the VMM's memory is sampled
# twice a second from /proc with builtins too; nothing is forked while the VM runs.

first_child() { # PID: the first child of PID (from /proc, no fork), in REPLY
    local c=""
    read -r c _ < "/proc/$1/task/$1/children" 2>/dev/null || true
    printf -v REPLY '%s' "$c"
}

timed_run() {
    local log="$1"; shift
    local start=$EPOCHREALTIME t="" peak=0 line k v vmm="" rc out sub
    exec {out}< <(exec timeout 600 "$@" 2>&1 < /dev/null)
    sub=$!
    : > "$log"
    while :; do
        rc=0
        IFS= read -r -t 0.5 line <&"$out" || rc=$?
        if [ $rc -eq 0 ]; then
            printf '%s\n' "$line" >> "$log"
            if [ -z "$t" ] && [[ $line == MINIVMM-L1-UP* ]]; then t=$EPOCHREALTIME; fi
        elif [ $rc -le 128 ]; then
            [ -n "$line" ] && printf '%s\n' "$line" >> "$log"
            break
        fi
        if [ -z "$vmm" ]; then first_child "$sub"; vmm=$REPLY; fi
        if [ -n "$vmm" ] && [ -r "/proc/$vmm/status" ]; then
            while read -r k v _; do
                if [ "$k" = VmRSS: ] && [ "$v" -gt "$peak" ]; then peak=$v; fi
            done < "/proc/$vmm/status"
        fi
    done
    exec {out}<&-
    wait "$sub" 2>/dev/null || true
    T_INIT=0
    [ -n "$t" ] && T_INIT=$(printf '%.1f' "$(echo "$t - $start" | bc)")
    PEAK_MIB=$((peak / 1024))
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

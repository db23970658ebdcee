#!/usr/bin/env bash
# CPU and context switches of each thread of a process over a few seconds, summed by thread
# name (the server's tokio workers are one line): `scripts/thread-cpu.sh PID [SECS]`.
# Reads utime + stime from /proc/PID/task/*/stat and the switch counts from .../status,
# before and after. Used by `THREADS=1 scripts/bench-load.sh` during the load.
set -euo pipefail
PID=$1
SECS=${2:-5}
snap() {
    # One line per thread: tid, name, voluntary and involuntary switches, CPU ticks.
    for t in /proc/"$PID"/task/*; do
        { read -r name < "$t/comm"
          awk -v n="$name" -v tid="$(basename "$t")" '/^voluntary_ctxt/ { v = $2 }
              /^nonvoluntary_ctxt/ { nv = $2 } END { printf "%s %s %d %d ", tid, n, v, nv }' "$t/status"
          awk '{ print $14 + $15 }' "$t/stat"; } 2>/dev/null || true
    done | sort
}
before=$(snap)
sleep "$SECS"
after=$(snap)
hz=$(getconf CLK_TCK)
# Differences per thread, then summed by name: a thread that ended meanwhile (tokio's blocking
# threads share the workers' name and end when idle) is left out instead of subtracting its
# whole life's CPU; one that started counts from zero.
join -a 2 -e 0 -o 2.1,2.2,1.3,1.4,1.5,2.3,2.4,2.5 <(echo "$before") <(echo "$after") \
    | awk '{ v[$2] += $6 - $3; nv[$2] += $7 - $4; c[$2] += $8 - $5 }
           END { for (k in v) print k, v[k], nv[k], c[k] }' | sort \
    | awk -v s="$SECS" -v hz="$hz" '
    { printf "%-16s %5.1f%% of a core  %6.0f voluntary / %5.0f involuntary switches a second\n",
             $1, 100 * $4 / hz / s, $2 / s, $3 / s }'

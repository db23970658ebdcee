#!/usr/bin/env bash
# CPU and context switches of each thread of a process over a few seconds, summed by thread
# name (the server's tokio workers are one line): `scripts/thread-cpu.sh PID [SECS]`.
# Reads utime + stime from /proc/PID/task/*/stat and the switch counts from .../status,
# before and after. Used by `THREADS=1 scripts/bench-load.sh` during the load.
set -euo pipefail
PID=$1
SECS=${2:-5}
snap() {
    for t in /proc/"$PID"/task/*; do
        { read -r name < "$t/comm"
          awk -v n="$name" '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { nv = $2 }
              END { printf "%s %d %d ", n, v, nv }' "$t/status"
          awk '{ print $14 + $15 }' "$t/stat"; } 2>/dev/null || true
    done | awk '{ v[$1] += $2; nv[$1] += $3; c[$1] += $4 }
                END { for (k in v) print k, v[k], nv[k], c[k] }' | sort
}
before=$(snap)
sleep "$SECS"
after=$(snap)
hz=$(getconf CLK_TCK)
join <(echo "$before") <(echo "$after") | awk -v s="$SECS" -v hz="$hz" '
    { printf "%-16s %5.1f%% of a core  %6.0f voluntary / %5.0f involuntary switches a second\n",
             $1, 100 * ($7 - $4) / hz / s, ($5 - $2) / s, ($6 - $3) / s }'

#!/usr/bin/env bash
# Profiles the server inside the many-agent load of scripts/bench-load.sh: waits until the
# load is under way, then `perf record`s the server (or only its threads named COMM) for a
# few seconds and prints the self time of the hottest symbols. One agent count (AGENTS=1000).
# Usage: BIN=target/release/mamori AGENTS=1000 [COMM=tokio-rt-worker] [DWARF=1] \
#        scripts/profile-load.sh OUT.data
# DWARF=1 records call graphs by DWARF unwinding (needed for inclusive shares: the release
# build has no frame pointers); `perf report -i OUT.data` reads the result.
# STACK=32768 copies that many bytes of stack per sample for DWARF unwinding (default 16384;
# hyper's deep stacks need more), FREQ=499 samples at that rate (default 999).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/profile-load.sh OUT.data}
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 2; }
AGENTS=${AGENTS:-1000}
SECS=${SECS:-8}
LOG=$(mktemp)
SECS=$(( SECS + 20 + AGENTS / 500 )) scripts/bench-load.sh >"$LOG" 2>&1 &
LOAD=$!
# The load starts once every agent is connected (after a build, when BIN is not given).
while kill -0 "$LOAD" 2>/dev/null && ! grep -q "connected over mutual TLS" "$LOG"; do sleep 0.5; done
grep -q "connected over mutual TLS" "$LOG" || { cat "$LOG" >&2; exit 1; }
sleep 5
PID=$(pgrep -f "server run --listen" | head -1)
TARGET=(-p "$PID")
if [ -n "${COMM:-}" ]; then
    TIDS=$(for t in /proc/"$PID"/task/*; do
        if [ "$(cat "$t"/comm)" = "$COMM" ]; then basename "$t"; fi
    done | paste -sd,)
    [ -n "$TIDS" ] || { echo "no thread of the server is named $COMM" >&2; exit 1; }
    TARGET=(-t "$TIDS")
fi
if [ -n "${DWARF:-}" ]; then GRAPH=(--call-graph "dwarf,${STACK:-16384}" -F "${FREQ:-999}"); else GRAPH=(-g -F 1999); fi
perf record "${GRAPH[@]}" "${TARGET[@]}" -o "$OUT" -- sleep "$SECS" 2>/dev/null
wait "$LOAD" || true
grep -E "^server:|p99" "$LOG"
rm -f "$LOG"
perf report -i "$OUT" --no-children --sort comm,sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40

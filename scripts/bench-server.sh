#!/usr/bin/env bash
# Server ingest benchmark for BENCHMARKS.md: one agent ships N synthetic sensor events (ECS
# process starts, 1 in 1,000 suspicious) over mutual TLS on loopback to a server that stores
# (fsync before every acknowledgement) and runs live detection with the full SigmaHQ corpus
# plus Mamori's rules. Reports the time to drain the spool, events/s, the server's CPU
# (user + system) and peak RSS, and the alerts raised.
# Usage: scripts/bench-server.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500000}
. scripts/deps.sh
. scripts/start-server.sh
cargo build --release -j2 -p mamori >&2
cargo build --release -j2 -p mamori-spool --example fill >&2
BIN=$PWD/target/release/mamori
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
start_server "$BIN" "$WORK/srv"
TOKEN=$("$BIN" server token 2>/dev/null)
MAMORI_DATA_DIR=$WORK/agent "$BIN" agent enroll --server https://127.0.0.1:$PORT --token "$TOKEN" --ca-fingerprint "$FP" 2>/dev/null
target/release/examples/fill "$WORK/agent/spool" "$N"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
t0=$(ticks $SERVER); s0=$(date +%s.%N)
MAMORI_DATA_DIR=$WORK/agent "$BIN" agent ship 2>"$WORK/ship.err"
s1=$(date +%s.%N)
sleep 1   # let detection finish the last batch
t1=$(ticks $SERVER)
secs=$(echo "$s1 - $s0" | bc)
echo "machine: $(nproc) cores, $(uname -r)"
echo "$(grep "live detection" "$WORK/srv.err")"
echo "shipped $N events in ${secs}s = $(echo "$N / $secs" | bc) events/s (one agent, mTLS, fsync per batch, detection on)"
echo "server CPU: $((t1 - t0)) ticks = $(echo "scale=2; ($t1 - $t0) * 10000 / $N" | bc) µs per event; $(echo "scale=0; $N * 100 / ($t1 - $t0)" | bc) events per CPU-second"
echo "server peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$SERVER/status)"
echo "alerts: $(MAMORI_DATA_DIR=$WORK/srv "$BIN" server alerts --limit 100000 2>/dev/null | tail -n +2 | wc -l) (expected $((N / 1000)) suspicious events, folded per process)"
echo "rules raising the most alerts:"
MAMORI_DATA_DIR=$WORK/srv "$BIN" server alerts --json --limit 100000 2>/dev/null \
    | python3 -c 'import json,sys,collections; c=collections.Counter(json.loads(l)["rule_title"] for l in sys.stdin); [print(f"  {n:6} {t}") for t,n in c.most_common(5)]'
tail -1 "$WORK/ship.err"

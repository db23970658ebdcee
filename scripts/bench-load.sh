#!/usr/bin/env bash
# Many-agent load benchmark for BENCHMARKS.md: a release server with the full SigmaHQ corpus
# and Mamori's rules (storage and live detection on), and the load generator
# (crates/mamori-link/examples/loadgen.rs) simulating N agents over real mutual TLS, each with
# its own certificate and stream. For each N: durable events/s, server CPU per event, RSS per
# connected agent, and event-to-alert latency as seen through the REST API.
# Usage: AGENTS="100 1000 10000" RATE=50000 SECS=20 scripts/bench-load.sh
# INTERVAL_MS=500 sends each agent's batches every 500 ms (the agent's linger) instead of the
# default (every second, or every N/2 ms above 2,000 agents).
# HEARTBEAT_S=60: each agent's heartbeat interval, as real agents (0: none).
# NETWORK=30 makes 30% of the events connections to an external address (default 0).
# FILES=40 makes the next 40% file writes (default 0): NETWORK=20 FILES=50 offers a mix more
# like a real host's than process starts alone (the most expensive events to match).
# MARKERS=200 makes 200 of each second's events new alerts (default 10): an alert storm.
# POLL_MS=1000 reads the alerts every 1000 ms instead of every 50 (the poller's own cost).
# THREADS=1 also prints the server's CPU per thread over 5 s inside the load
# (scripts/thread-cpu.sh).
# BIN=/path/to/another/mamori measures that server binary instead (e.g. an older build, to
# compare two builds run by run on this noisy machine); it is used as it is, not rebuilt.
# LOADGEN=/path/to/another/loadgen likewise runs that generator build, not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-"100 1000 10000"}
RATE=${RATE:-50000}
SECS=${SECS:-20}
. scripts/deps.sh
. scripts/start-server.sh
if [ -z "${BIN:-}" ]; then
    cargo build --release -j2 -p mamori -p mamori-link --bins --example loadgen >&2
    BIN=$PWD/target/release/mamori
elif [ -z "${LOADGEN:-}" ]; then
    cargo build --release -j2 -p mamori-link --example loadgen >&2   # BIN is not rebuilt
fi
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"   # 10,000 agents need ~10,000 descriptors in each process
echo "machine: $(nproc) cores, $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs) at $(grep -m1 "cpu MHz" /proc/cpuinfo | cut -d: -f2 | xargs) MHz, $(uname -r)"
for N in $AGENTS; do
    # A fresh server for each agent count, so that nothing carries over.
    start_server "$BIN" "$WORK/srv-$N"
    TOKEN=$("$BIN" server token --uses 100000 --ttl 4h 2>/dev/null)
    API=$("$BIN" server api-token --name loadgen --role viewer 2>/dev/null)
    # A batch per agent per second, or fewer for many agents (or every INTERVAL_MS).
    INTERVAL=${INTERVAL_MS:-$(( N > 2000 ? N / 2 : 1000 ))}
    echo "== $N agents, $RATE events/s offered, $SECS s; $(grep "live detection" "$WORK/srv-$N.err")"
    # The per-thread sample starts 5 s into the load (once every agent is connected; how long
    # enrolling and connecting take varies from run to run).
    if [ -n "${THREADS:-}" ]; then
        (until grep -q "connected over mutual TLS" "$WORK/load-$N.out" 2>/dev/null; do
            kill -0 "$SERVER" 2>/dev/null || exit 0; sleep 0.5; done
         sleep 5; scripts/thread-cpu.sh "$SERVER" 5) &
    fi
    # The server's own view while the load runs: GET /api/v1/status once a second (how long
    # the oldest durable event waited for detection, how far the store is behind).
    ADMIN=$(grep -o 'mamori_admin_[0-9a-f]*' "$WORK/srv-$N.err" | head -1)
    (until grep -q "connected over mutual TLS" "$WORK/load-$N.out" 2>/dev/null; do
        kill -0 "$SERVER" 2>/dev/null || exit 0; sleep 0.5; done
     while kill -0 "$SERVER" 2>/dev/null && ! grep -q "^sent " "$WORK/load-$N.out"; do
        curl -s --max-time 2 --cacert "$MAMORI_DATA_DIR/server/pki/ca.pem" \
            -H "Authorization: Bearer $ADMIN" "https://127.0.0.1:$PORT/api/v1/status" \
            >>"$WORK/status-$N.jsonl" && echo >>"$WORK/status-$N.jsonl"
        sleep 1
     done) &
    STATUS=$!
    "$LOADGEN" --server https://127.0.0.1:$PORT --fingerprint "$FP" \
        --token "$TOKEN" --api-token "$API" --agents "$N" --rate "$RATE" --seconds "$SECS" \
        --interval-ms "$INTERVAL" --markers "${MARKERS:-10}" --heartbeat-s "${HEARTBEAT_S:-60}" \
        --network "${NETWORK:-0}" --files "${FILES:-0}" --poll-ms "${POLL_MS:-50}" \
        --cache "$WORK/agents-$N" --server-pid "$SERVER" | tee "$WORK/load-$N.out"
    wait $STATUS 2>/dev/null || true
    python3 - "$WORK/status-$N.jsonl" <<'PY' || true
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        pass
def spread(path):
    v = sorted(((r.get(path[0]) or {}).get(path[1]) or 0) for r in rows)
    return f"p50 {v[len(v) // 2]} ms, max {v[-1]} ms" if v else "none"
store = max(((r.get("store") or {}).get("behind") or 0 for r in rows), default=0)
if rows:
    print(f"server status during the load ({len(rows)} samples): events' age when durable "
          f"{spread(('ingest', 'event_age_ms'))}, of which waiting in the server "
          f"{spread(('ingest', 'wait_ms'))}; detection delay {spread(('detection', 'delay_ms'))}; "
          f"columnar store at most {store} events behind")
PY
    kill $SERVER; wait $SERVER 2>/dev/null || true
    # Merges and retention during the run (a run past a minute includes one), and the
    # server's own word on how far detection fell behind (warned at most once a minute).
    cat "$WORK/srv-$N.err" "$MAMORI_DATA_DIR/server.log" 2>/dev/null \
        | grep -E "event store maintenance|detection is .* behind|detection has caught up" \
        | sed 's/^/server log: /' || true
    SERVER=
done

#!/usr/bin/env bash
# Many-agent load benchmark for BENCHMARKS.md: a release server with the full SigmaHQ corpus
# and Mamori's rules (storage and live detection on), and the load generator
# (crates/mamori-link/examples/loadgen.rs) simulating N agents over real mutual TLS, each with
# its own certificate and stream. For each N: durable events/s, server CPU per event, RSS per
# connected agent, and event-to-alert latency as seen through the REST API.
# Usage: AGENTS="100 1000 10000" RATE=50000 SECS=20 scripts/bench-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-"100 1000 10000"}
RATE=${RATE:-50000}
SECS=${SECS:-20}
. scripts/deps.sh
cargo build --release -j2 -p mamori -p mamori-link --example loadgen >&2
BIN=$PWD/target/release/mamori
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
ulimit -n 200000 2>/dev/null || ulimit -n 65536
export MAMORI_DATA_DIR=$WORK/srv
"$BIN" rules install --from ../shared/data/sigma >/dev/null 2>&1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server run --listen 127.0.0.1:$PORT 2>"$WORK/server.err" &
SERVER=$!
for _ in $(seq 600); do grep -q "listening on" "$WORK/server.err" 2>/dev/null && break; sleep 0.1; done
FP=$(grep -o 'sha256:[0-9a-f]*' "$WORK/server.err" | head -1)
TOKEN=$("$BIN" server token --uses 100000 --ttl 4h 2>/dev/null)
API=$("$BIN" server api-token --name loadgen --role viewer 2>/dev/null)
echo "machine: $(nproc) cores, $(uname -r); $(grep "live detection" "$WORK/server.err")"
for N in $AGENTS; do
    # A batch per agent per second, or fewer for many agents: every batch is fsynced.
    INTERVAL=$(( N > 2000 ? N / 2 : 1000 ))
    echo "== $N agents, $RATE events/s offered, $SECS s"
    target/release/examples/loadgen --server https://127.0.0.1:$PORT --fingerprint "$FP" \
        --token "$TOKEN" --api-token "$API" --agents "$N" --rate "$RATE" --seconds "$SECS" \
        --interval-ms "$INTERVAL" --cache "$WORK/agents" --server-pid "$SERVER"
done

#!/usr/bin/env bash
# The server's CPU per REST API request, as a console's poll costs it: starts a release
# server (SigmaHQ + Mamori rules), runs 10 s of load from 100 simulated agents so that a few
# hundred alerts with evidence exist, then reads the server's CPU (/proc/PID/stat) around
# 100 requests of each kind, with curl:
#   - the 50 newest alerts, a new TLS connection each (the load generator's poll before
#     `?after=` and kept-open connections);
#   - the same on one connection;
#   - `?after=<newest>` (nothing new) on one connection (the poll now);
#   - `/api/v1/status`, a new connection each (about the cost of a handshake).
# Usage: BIN=target/release/mamori scripts/probe-api.sh (needs curl and a built loadgen:
# cargo build --release -p mamori-link --example loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 2; }
BIN=${BIN:-target/release/mamori}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
. scripts/start-server.sh
W=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$W"' EXIT
start_server "$BIN" "$W/srv"
S=$SERVER
TOKEN=$("$BIN" server token --uses 1000 --ttl 1h 2>/dev/null)
API=$("$BIN" server api-token --name probe --role viewer 2>/dev/null)
"$LOADGEN" --server https://127.0.0.1:$PORT --fingerprint "$FP" --token "$TOKEN" \
    --api-token "$API" --agents 100 --rate 20000 --seconds 10 --markers 10 \
    --cache "$W/agents" --poll-ms 1000 >/dev/null
sleep 2
URL=https://127.0.0.1:$PORT
cpu() { awk '{print $14 + $15}' /proc/$S/stat; }   # clock ticks (1/100 s)
get() { curl -sk -H "Authorization: Bearer $API" "$@"; }
NEWEST=$(get "$URL/api/v1/alerts?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo "alerts: $NEWEST; a page of 50 is $(get "$URL/api/v1/alerts?limit=50" | wc -c) bytes"
each() {   # label, then the curl arguments of the 100 requests
    local label=$1; shift
    local t0; t0=$(cpu)
    "$@" >/dev/null
    echo "$label: $(( ($(cpu) - t0) * 10 )) ms of server CPU for 100 requests"
}
each "50 newest, new connection each" \
    bash -c "for i in \$(seq 100); do curl -sk -H 'Authorization: Bearer $API' '$URL/api/v1/alerts?limit=50' -o /dev/null; done"
each "50 newest, one connection" \
    get $(for i in $(seq 100); do echo "$URL/api/v1/alerts?limit=50"; done) -o /dev/null
each "after the newest, one connection" \
    get $(for i in $(seq 100); do echo "$URL/api/v1/alerts?after=$NEWEST&limit=1000"; done) -o /dev/null
each "status, new connection each" \
    bash -c "for i in \$(seq 100); do curl -sk -H 'Authorization: Bearer $API' '$URL/api/v1/status' -o /dev/null; done"

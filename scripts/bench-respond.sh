#!/usr/bin/env bash
# Time from the API call to isolation verified on the host, and back (release), measured in
# network namespaces like the tests: a "host" namespace running the agent and a "server"
# namespace running `mamori server`, joined by a veth pair. Needs root, nft, ip, curl.
#
#   ROUNDS=20 scripts/bench-respond.sh
#
# For each round: POST isolate, poll the action every 5 ms until it succeeded; the same for
# release. Prints the server's own measure (action created → outcome stored, from the action
# record) and the client's wall time (HTTP call → succeeded seen), p50 and max.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
[ "$(id -u)" = 0 ] || { echo "error: needs root (network namespaces, nftables)" >&2; exit 2; }
cargo build -j2 --release -p mamori >&2
BIN=$PWD/target/release/mamori
W=$(mktemp -d /tmp/mamori-bench-respond.XXXX)
H=mbr-h-$$; S=mbr-s-$$
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; ip netns del $H 2>/dev/null || true; ip netns del $S 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
ip netns add $H; ip netns add $S
ip link add vh$$ netns $H type veth peer name vs$$ netns $S
ip -n $H addr add 10.202.1.2/24 dev vh$$; ip -n $S addr add 10.202.1.1/24 dev vs$$
for n in $H $S; do ip -n $n link set lo up; done
ip -n $H link set vh$$ up; ip -n $S link set vs$$ up
MAMORI_DATA_DIR=$W/srv ip netns exec $S "$BIN" server run --listen 10.202.1.1:7443 2> "$W/server.err" &
for _ in $(seq 100); do grep -q "listening on" "$W/server.err" 2>/dev/null && break; sleep 0.1; done
ADMIN=$(sed -n 's/.*stored only as a hash): //p' "$W/server.err")
FP=$(sed -n 's/.*CA fingerprint //p' "$W/server.err")
TOKEN=$(MAMORI_DATA_DIR=$W/srv "$BIN" server token)
MAMORI_DATA_DIR=$W/agent ip netns exec $H "$BIN" agent enroll --server https://10.202.1.1:7443 --token "$TOKEN" --ca-fingerprint "$FP" 2>/dev/null
AGENT=$(sed -n 's/.*"agent_id": "\(.*\)".*/\1/p' "$W/agent/agent/identity.json")
MAMORI_DATA_DIR=$W/agent ip netns exec $H "$BIN" agent --without file,network,login 2> "$W/agent.err" &
for _ in $(seq 200); do grep -q "shipping to" "$W/agent.err" 2>/dev/null && break; sleep 0.1; done
sleep 1
api() { ip netns exec $S curl -s --cacert "$W/srv/server/pki/ca.pem" -H "Authorization: Bearer $ADMIN" "$@"; }
run() { # $1: action JSON → prints "server_ms wall_ms"
    local t0 t1 id a
    t0=$(date +%s%N)
    id=$(api -X POST -H 'Content-Type: application/json' --data-binary "{\"action\":$1,\"reason\":\"bench\"}" \
        "https://10.202.1.1:7443/api/v1/hosts/$AGENT/actions" | sed -n 's/.*"id":"\(cmd-[0-9a-f]*\)".*/\1/p')
    while :; do
        a=$(api "https://10.202.1.1:7443/api/v1/actions/$id")
        case "$a" in *'"status":"succeeded"'*) break ;; *'"status":"failed"'*) echo "failed: $a" >&2; exit 1 ;; esac
        sleep 0.005
    done
    t1=$(date +%s%N)
    local c u
    c=$(echo "$a" | sed -n 's/.*"created_ms":\([0-9]*\).*/\1/p'); u=$(echo "$a" | sed -n 's/.*"updated_ms":\([0-9]*\).*/\1/p')
    echo "$((u - c)) $(((t1 - t0) / 1000000))"
}
: > "$W/iso"; : > "$W/rel"
for _ in $(seq "$ROUNDS"); do
    run '{"type":"isolate"}' >> "$W/iso"
    run '{"type":"release"}' >> "$W/rel"
done
stats() { sort -n -k"$2" "$1" | awk -v k="$2" '{v[NR]=$k} END {printf "p50 %d ms, max %d ms", v[int((NR+1)/2)], v[NR]}'; }
echo "rounds: $ROUNDS ($(nproc) cores, $(uname -r))"
echo "isolate  server (created → verified outcome stored): $(stats "$W/iso" 1); client wall: $(stats "$W/iso" 2)"
echo "release  server: $(stats "$W/rel" 1); client wall: $(stats "$W/rel" 2)"

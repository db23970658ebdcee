#!/usr/bin/env bash
# Sensor benchmark for BENCHMARKS.md (root). For each storm (exec, files, connect, udp), the same
# workload runs without and then with `mamori agent` (spool mode, the default) in one run;
# reported: the workload's rate both ways, events the agent wrote, kernel drops, the agent's
# CPU (user + kernel, from /proc), BPF program run time (kernel.bpf_stats_enabled), idle CPU
# and peak RSS.
# Usage: sudo [AGENT_ARGS="--without file"] [STORMS="exec files connect"] scripts/bench-agent.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
STORMS=${STORMS:-exec files connect udp}
. scripts/deps.sh
cargo build --release -j2 -p mamori >&2
cargo build --release -j2 -p mamori-sensor --example storm >&2
BIN=$PWD/target/release/mamori
STORM=$PWD/target/release/examples/storm
WORK=$(mktemp -d)
AGENT=
trap '[ -n "$AGENT" ] && kill $AGENT 2>/dev/null; rm -rf "$WORK"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
bpf_stats() { cat /proc/$AGENT/fdinfo/* 2>/dev/null | awk '/run_time_ns/ {t+=$2} /run_cnt/ {c+=$2} END {print t+0, c+0}'; }

start_agent() {
    rm -rf "$WORK/data"
    MAMORI_DATA_DIR=$WORK/data "$BIN" agent --duration 600 --without login ${AGENT_ARGS:-} 2>"$WORK/agent.err" &
    AGENT=$!
    for _ in $(seq 100); do grep -q collecting "$WORK/agent.err" 2>/dev/null && break; sleep 0.1; done
    sleep 1
}

stop_agent() {
    kill -TERM $AGENT; wait $AGENT 2>/dev/null || true
    AGENT=
}

echo "machine: $(nproc) cores, $(uname -r); agent args: --without login ${AGENT_ARGS:-}"
sysctl -qw kernel.bpf_stats_enabled=1
first=1
for kind in $STORMS; do
    echo "== $kind storm, $N operations from 2 threads"
    echo "without the agent: $($STORM "$kind" "$N" 2)"
    start_agent
    if [ $first = 1 ]; then
        t0=$(ticks $AGENT); sleep 10; t1=$(ticks $AGENT)
        echo "agent idle: $((t1 - t0)) ticks of CPU in 10 s = $(awk -v t=$((t1 - t0)) 'BEGIN{printf "%.2f", t/10}')% of a core"
        first=0
    fi
    read -r bt0 bc0 <<<"$(bpf_stats)"
    t0=$(ticks $AGENT)
    echo "with the agent:    $($STORM "$kind" "$N" 2)"
    sleep 1
    t1=$(ticks $AGENT)
    read -r bt1 bc1 <<<"$(bpf_stats)"
    rss=$(awk '/VmHWM/ {print $2, $3}' /proc/$AGENT/status)
    stop_agent
    summary=$(grep "events in" "$WORK/agent.err" | tail -1)
    events=$(sed -E 's/.*agent: ([0-9]+) events.*/\1/' <<<"$summary")
    drops=$(sed -E 's/.* ([0-9]+) dropped.*/\1/' <<<"$summary")
    echo "events written: $events (whole agent run), kernel drops: $drops"
    echo "BPF programs: $((bc1 - bc0)) runs, $(awk -v t=$((bt1 - bt0)) 'BEGIN{printf "%.3f", t/1e9}') s = $(awk -v t=$((bt1 - bt0)) -v n="$N" 'BEGIN{printf "%.2f", t/n/1000}') µs per operation"
    echo "agent user+sys CPU: $((t1 - t0)) ticks = $(awk -v t=$((t1 - t0)) -v n="$N" 'BEGIN{printf "%.2f", t*10000/n}') µs per operation = $(awk -v t=$((t1 - t0)) -v e="$events" 'BEGIN{printf "%.2f", t*10000/e}') µs per event"
    echo "agent peak RSS: $rss"
done
sysctl -qw kernel.bpf_stats_enabled=0

#!/usr/bin/env bash
# Sensor benchmark for BENCHMARKS.md (root): an exec storm with and without `mamori agent`
# in the same run, the agent's CPU (user + kernel, from /proc), BPF program run time per event
# (kernel.bpf_stats_enabled), events captured, drops, idle CPU and peak RSS.
# Usage: sudo [AGENT_ARGS="--without file"] scripts/bench-agent.sh [EXECS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
. scripts/deps.sh
cargo build --release -j2 -p mamori >&2
cargo build --release -j2 -p mamori-sensor --example spawnstorm >&2
BIN=$PWD/target/release/mamori
STORM=$PWD/target/release/examples/spawnstorm
WORK=$(mktemp -d)
trap 'kill $AGENT 2>/dev/null || true; rm -rf "$WORK"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks

echo "machine: $(nproc) cores, $(uname -r)"
echo "without the agent: $($STORM "$N" 2)"

sysctl -qw kernel.bpf_stats_enabled=1
MAMORI_DATA_DIR=$WORK/data "$BIN" agent --duration 600 ${AGENT_ARGS:-} 2>"$WORK/agent.err" &
AGENT=$!
for _ in $(seq 100); do grep -q collecting "$WORK/agent.err" 2>/dev/null && break; sleep 0.1; done
sleep 1
t0=$(ticks $AGENT)
sleep 10
t1=$(ticks $AGENT)
echo "agent idle: $((t1 - t0)) ticks of CPU in 10 s = $(awk -v t=$((t1 - t0)) 'BEGIN{printf "%.2f", t/10}')% of a core"
bpf_before=$(cat /proc/$AGENT/fdinfo/* 2>/dev/null | awk '/run_time_ns/ {t+=$2} /run_cnt/ {c+=$2} END {print t, c}')
t0=$(ticks $AGENT)
echo "with the agent:    $($STORM "$N" 2)"
sleep 1
t1=$(ticks $AGENT)
bpf_after=$(cat /proc/$AGENT/fdinfo/* 2>/dev/null | awk '/run_time_ns/ {t+=$2} /run_cnt/ {c+=$2} END {print t, c}')
sysctl -qw kernel.bpf_stats_enabled=0
read -r bt0 bc0 <<<"$bpf_before"; read -r bt1 bc1 <<<"$bpf_after"
events=$((bc1 - bc0))
echo "BPF programs: $events runs, $(awk -v t=$((bt1 - bt0)) 'BEGIN{printf "%.3f", t/1e9}') s in the kernel = $(awk -v t=$((bt1 - bt0)) -v n="$N" 'BEGIN{printf "%.2f", t/n/1000}') µs per exec"
echo "agent user+sys CPU for the storm: $((t1 - t0)) ticks = $(awk -v t=$((t1 - t0)) -v n="$N" 'BEGIN{printf "%.2f", t*10000/n}') µs per exec"
echo "agent peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$AGENT/status)"
kill -TERM $AGENT; wait $AGENT 2>/dev/null || true
tail -1 "$WORK/agent.err"

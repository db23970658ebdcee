#!/usr/bin/env bash
# Benchmarks for BENCHMARKS.md, all measured in one run so that ratios are comparable on a
# shared, noisy machine. Usage: scripts/bench.sh [EVTX_DIR] [SIGMA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
EVTX=${1:-../shared/data/evtx}
SIGMA=${2:-../shared/data/sigma}
ROUNDS=${ROUNDS:-5}

cargo build --release -j2 -p mamori >&2
cargo build --release -j2 -p mamori-sigma --example scanbench >&2
BIN=$PWD/target/release/mamori
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export MAMORI_DATA_DIR=$WORK/data
"$BIN" rules install --from "$SIGMA" >/dev/null
mkdir -p "$WORK/empty"

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "input: $EVTX ($(find "$EVTX" -name '*.evtx' | wc -l) EVTX files, $(du -sh "$EVTX" | cut -f1))"

# run LABEL ARGS...: prints records/s per round and peak RSS; returns the best records/s.
best() { sort -n | tail -1; }
measure() {
    local label=$1; shift
    local rates=() rss=0
    for _ in $(seq "$ROUNDS"); do
        local out
        out=$( { /usr/bin/time -f 'RSS %M' "$BIN" hunt "$@" --stats -o /dev/null --no-summary; } 2>&1 || true)
        rates+=("$(sed -n 's/.* = \([0-9]*\) records\/s.*/\1/p' <<<"$out")")
        local r; r=$(sed -n 's/^RSS \([0-9]*\)/\1/p' <<<"$out")
        [ "$r" -gt "$rss" ] && rss=$r
        LAST="$out"
    done
    local b; b=$(printf '%s\n' "${rates[@]}" | best)
    printf '%-44s best %7d records/s  (rounds: %s)  peak RSS %d MiB\n' "$label" "$b" "${rates[*]}" $((rss / 1024))
    eval "$(echo "RATE_$label" | tr -c 'A-Za-z0-9_\n' _)=$b"
}

measure parse_only_1_job "$EVTX" --rules "$WORK/empty" -j1
measure detect_1_job "$EVTX" -j1
echo "  $(grep -o 'stats: [0-9]* rules.*loaded in [0-9.]*s' <<<"$LAST")"
echo "  $(grep -o '[0-9]* rule evaluations ([0-9.]* per record)' <<<"$LAST")"
measure parse_only_2_jobs "$EVTX" --rules "$WORK/empty" -j2
measure detect_2_jobs "$EVTX" -j2
awk -v p="$RATE_parse_only_1_job" -v d="$RATE_detect_1_job" 'BEGIN {
    printf "detection cost, 1 job: %.2fx the time of bare parsing (+%.0f%%)\n", p/d, (p/d-1)*100 }'

# Memory as input grows: the same corpus 1x and 4x.
mkdir -p "$WORK/x4"
for i in 1 2 3 4; do ln -s "$(realpath "$EVTX")" "$WORK/x4/copy$i"; done
measure detect_1x_input "$EVTX" -j2
measure detect_4x_input "$WORK/x4" -j2

# Rule-set compile time (whole corpus), and matching alone without parsing.
for _ in 1 2 3; do
    { /usr/bin/time -f '%e s, %M KiB' "$BIN" rules check "$SIGMA"/rules "$SIGMA"/rules-threat-hunting \
        "$SIGMA"/rules-emerging-threats "$SIGMA"/rules-dfir "$SIGMA"/rules-compliance >/dev/null; } 2>&1 \
        | grep -v 'exited with' | sed 's/^/rules check (read + parse + compile whole corpus): /' || true
done
ROUNDS_SCAN=${ROUNDS_SCAN:-10}
ROUNDS=$ROUNDS_SCAN target/release/examples/scanbench "$SIGMA"/rules "$SIGMA"/rules-threat-hunting \
    "$SIGMA"/rules-emerging-threats "$SIGMA"/rules-dfir "$SIGMA"/rules-compliance -- "$EVTX" | sed -n '1,5p' || true

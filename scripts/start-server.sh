# Sourced by the benchmark scripts: `start_server BIN DIR` installs the SigmaHQ rules into a
# fresh data directory DIR, starts `BIN server run` on a free loopback port with its stderr
# in DIR.err, and waits until it listens. Sets MAMORI_DATA_DIR (exported), PORT, SERVER (the
# pid) and FP (the CA fingerprint agents pin).
start_server() {
    local bin=$1 dir=$2
    export MAMORI_DATA_DIR=$dir
    "$bin" rules install --from ../shared/data/sigma >/dev/null 2>&1
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" server run --listen 127.0.0.1:$PORT 2>"$dir.err" &
    SERVER=$!
    for _ in $(seq 600); do grep -q "listening on" "$dir.err" 2>/dev/null && break; sleep 0.1; done
    FP=$(grep -o 'sha256:[0-9a-f]*' "$dir.err" | head -1)
    [ -n "$FP" ] || { cat "$dir.err" >&2; echo "the server did not start" >&2; return 1; }
}

#!/usr/bin/env bash
# Registration writes per second and p50/p99 latency: meshd (one dev server, sled, flushed
# writes) side by side with a single-member etcd (Debian etcd-server, fsync on: the default)
# written through its JSON gateway, by the same load tool (tests/src/bin/regbench.rs), at 1, 16
# and 64 concurrent clients, interleaved.
#
# Usage: tests/bench/registration.sh            (from anywhere in the repo)
# Env:   DURATION=10      seconds per run
#        CLIENTS="1 16 64" client counts
#        ROUNDS=1         repetitions of the whole matrix (order alternates each round)
#        BENCH_DIR=...    parent of the temp data dirs (default $TMPDIR or /tmp; use a real
#                         disk, not tmpfs, or fsync means nothing)
# Prints one JSON line per run, then a summary table (meshd/etcd ratio per client count).
# Everything listens on 127.0.0.1 only; every run is bounded by DURATION.
set -euo pipefail

DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-1 16 64}"
ROUNDS="${ROUNDS:-1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'registration.sh: %s\n' "$*" >&2; exit 1; }

# --- etcd ---------------------------------------------------------------------------------
if ! command -v etcd >/dev/null 2>&1; then
    log "installing etcd-server (Debian)"
    sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq etcd-server >/dev/null
fi
command -v etcd >/dev/null 2>&1 || die "etcd is not installed and could not be installed"
log "$(etcd --version | head -1)"

# --- build --------------------------------------------------------------------------------
log "building meshd and regbench (release)"
cargo build --release -q -p meshd
cargo build --release -q -p tests --bin regbench
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
MESHD="$TARGET_DIR/release/meshd"
REGBENCH="$TARGET_DIR/release/regbench"
[[ -x $MESHD && -x $REGBENCH ]] || die "built binaries not found under $TARGET_DIR/release"

# --- temp dir and cleanup -----------------------------------------------------------------
WORK="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/meshd-bench.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- start etcd (single member, loopback, default fsync) ----------------------------------
ETCD_CLIENT_PORT="$(free_port)"
ETCD_PEER_PORT="$(free_port)"
ETCD_URL="http://127.0.0.1:$ETCD_CLIENT_PORT"
etcd --name bench \
    --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD_URL" \
    --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --logger zap --log-outputs stderr \
    >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)

for _ in $(seq 1 300); do
    if curl -sf "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'; then break; fi
    sleep 0.1
done
curl -sf "$ETCD_URL/health" | grep -q '"health":"true"' \
    || { tail -20 "$WORK/etcd.log" >&2; die "etcd did not become healthy"; }
log "etcd serving at $ETCD_URL (data $WORK/etcd)"

# --- start meshd (dev, persistent data dir) -----------------------------------------------
"$MESHD" agent --dev --data-dir "$WORK/meshd" --http-addr 127.0.0.1:0 --log-level warn \
    >"$WORK/meshd.out" 2>"$WORK/meshd.log" &
PIDS+=($!)
MESHD_URL=""
for _ in $(seq 1 300); do
    MESHD_URL="$(sed -n 's/^==> meshd serving: http=\([^ ]*\).*/\1/p' "$WORK/meshd.out" | head -1)"
    [[ -n $MESHD_URL ]] && break
    sleep 0.1
done
[[ -n $MESHD_URL ]] || { tail -20 "$WORK/meshd.log" >&2; die "meshd did not print its serving line"; }
log "meshd serving at $MESHD_URL (data $WORK/meshd)"

# --- runs ---------------------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
run() { # target url clients round
    "$REGBENCH" --target "$1" --url "$2" --clients "$3" --duration "$DURATION" \
        --prefix "r$4-c$3" | tee -a "$RESULTS"
}
for round in $(seq 1 "$ROUNDS"); do
    for c in $CLIENTS; do
        if (( round % 2 == 1 )); then
            run meshd "$MESHD_URL" "$c" "$round"
            run etcd "$ETCD_URL" "$c" "$round"
        else
            run etcd "$ETCD_URL" "$c" "$round"
            run meshd "$MESHD_URL" "$c" "$round"
        fi
    done
done

# --- summary ------------------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF'
import json, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["target"], r["clients"])].append(r)
def avg(rs, k):
    return sum(r[k] for r in rs) / len(rs)
print()
print("| clients | meshd writes/s | meshd p50 ms | meshd p99 ms | etcd writes/s | etcd p50 ms | etcd p99 ms | meshd/etcd |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in sorted({k[1] for k in runs}):
    m, e = runs.get(("meshd", c), []), runs.get(("etcd", c), [])
    if not m or not e:
        continue
    ratio = avg(m, "writes_per_s") / avg(e, "writes_per_s") if avg(e, "writes_per_s") else float("nan")
    print(f"| {c} | {avg(m, 'writes_per_s'):.0f} | {avg(m, 'p50_ms'):.2f} | {avg(m, 'p99_ms'):.2f} "
          f"| {avg(e, 'writes_per_s'):.0f} | {avg(e, 'p50_ms'):.2f} | {avg(e, 'p99_ms'):.2f} | {ratio:.2f} |")
errs = sum(r["errors"] for rs in runs.values() for r in rs)
if errs:
    print(f"\nWARNING: {errs} requests failed; see the JSON lines above.")
EOF

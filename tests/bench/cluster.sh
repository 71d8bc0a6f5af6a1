#!/usr/bin/env bash
# Cluster benchmark: a 3-server meshd cluster (mutual-TLS QUIC, sled with durable group commit)
# against a 3-member etcd cluster (Debian etcd-server, fsync on: the default), each server and
# member in its own network namespace on one bridge, loaded from the root namespace by the same
# tool as registration.sh (regbench) at 16 and 64 clients, interleaved; then the propagation of
# a registration to 10 meshd agents' local views. The orchestration is
# tests/src/bin/clusterbench.rs (it uses the tests crate's netns and cluster harness).
#
# Usage: tests/bench/cluster.sh                (from anywhere in the repo; needs root: netns)
# Env:   DURATION=10        seconds per throughput run
#        CLIENTS="16 64"    client counts
#        ROUNDS=1           repetitions of the throughput matrix (order alternates each round)
#        WRITE_TO=all       all: clients round-robin over every server/member (followers
#                           forward to the leader); leader: every client writes to the leader
#        SERVERS=3          meshd servers and etcd members
#        AGENTS=10          meshd agents for the propagation phase
#        SAMPLES=200        propagation samples (registrations)
#        PHASE=all          all, throughput or propagation
#        LOG_LEVEL=warn     meshd's log level (logs are in the temp dir: see MESHD_KEEP_LOGS)
#        KEEP_LOAD_DATA=1   start the agents with the throughput phase's services (hundreds of
#                           thousands) still registered, instead of deregistering them first
#        BENCH_DIR=...      parent of the temp dir with every node's data, config and log
#                           (default $TMPDIR or /tmp; must be a real disk, not tmpfs, or fsync
#                           means nothing)
#        MESHD_KEEP_LOGS=1  keep that temp dir (path printed at the end)
# Prints one JSON line per run, then a Markdown summary (meshd/etcd ratios, propagation
# percentiles). Not run by CI. Every run is bounded by DURATION (and regbench's own bound);
# on exit (also on failure or Ctrl-C) every process and namespace it made is removed.
set -euo pipefail

DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-16 64}"
ROUNDS="${ROUNDS:-1}"
WRITE_TO="${WRITE_TO:-all}"
SERVERS="${SERVERS:-3}"
AGENTS="${AGENTS:-10}"
SAMPLES="${SAMPLES:-200}"
PHASE="${PHASE:-all}"
LOG_LEVEL="${LOG_LEVEL:-warn}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'cluster.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces); run it with sudo"
command -v ip >/dev/null 2>&1 || die "iproute2 (ip) is not installed"

# --- etcd ---------------------------------------------------------------------------------
if [[ $PHASE != propagation ]] && ! command -v etcd >/dev/null 2>&1; then
    log "installing etcd-server (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    command -v etcd >/dev/null 2>&1 || die "etcd is not installed and could not be installed"
fi

# --- build --------------------------------------------------------------------------------
log "building meshd, meshctl, regbench and clusterbench (release)"
cargo build --release -q -p meshd -p meshctl
cargo build --release -q -p tests --bin regbench --bin clusterbench
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
for b in meshd meshctl regbench clusterbench; do
    [[ -x $BIN/$b ]] || die "built binary $BIN/$b not found"
done
export MESHD_BIN="$BIN/meshd" MESHCTL_BIN="$BIN/meshctl"

log "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- registry meshd meshctl \
    || echo ' + uncommitted changes in registry/meshd/meshctl'), $(date -u '+%Y-%m-%d %H:%M UTC')"
log "load before: $(uptime)"

# --- temp dir and cleanup -----------------------------------------------------------------
WORK="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/meshd-cluster-bench.XXXXXX")"
fs="$(stat -f -c %T "$WORK")"
[[ $fs != tmpfs && $fs != ramfs ]] || die "$WORK is on $fs: set BENCH_DIR to a real disk"

CB_PID=""
# base 36, as tests/src/netns.rs names its namespaces and links after the owning pid
b36() {
    local n=$1 s="" d=0123456789abcdefghijklmnopqrstuvwxyz
    while :; do
        s="${d:n%36:1}$s"
        n=$((n / 36))
        ((n == 0)) && break
    done
    printf '%s' "$s"
}
cleanup() {
    local rc=$? id ns pid link i
    trap - EXIT INT TERM
    if [[ -n $CB_PID ]] && kill -0 "$CB_PID" 2>/dev/null; then
        # clusterbench stops its processes and removes its namespaces on SIGTERM
        kill -TERM "$CB_PID" 2>/dev/null || true
        for i in $(seq 1 300); do
            kill -0 "$CB_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$CB_PID" 2>/dev/null || true
        wait "$CB_PID" 2>/dev/null || true
    fi
    if [[ -n $CB_PID ]]; then
        # Backstop for a clusterbench that could not clean up (SIGKILLed): its namespaces are
        # mn<pid36>x<n>h<i>, its links m[bqvc]<pid36>x<n>[h<i>].
        id="$(b36 "$CB_PID")"
        for ns in $(ip netns list | awk '{print $1}' | grep -E "^mn${id}x[0-9]+h[0-9]+$" || true); do
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -KILL "$pid" 2>/dev/null || true
            done
            ip netns delete "$ns" 2>/dev/null || true
        done
        for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 \
            | grep -E "^m[bqvc]${id}x[0-9]+(h[0-9]+)?$" || true); do
            ip link delete "$link" 2>/dev/null || true
        done
    fi
    if [[ -n ${MESHD_KEEP_LOGS:-} ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- run ----------------------------------------------------------------------------------
# clusterbench makes its cluster's temp dir (data, configs, TLS, logs) under TMPDIR. It runs in
# the background so that the trap can stop it (and then check its namespaces are gone).
TMPDIR="$WORK" "$BIN/clusterbench" \
    --servers "$SERVERS" --agents "$AGENTS" \
    --clients "$(tr -s ' ' ',' <<<"$CLIENTS" | sed 's/^,//; s/,$//')" \
    --duration "$DURATION" --rounds "$ROUNDS" --write-to "$WRITE_TO" \
    --samples "$SAMPLES" --phase "$PHASE" --log-level "$LOG_LEVEL" \
    ${KEEP_LOAD_DATA:+--keep-load-data} \
    --regbench "$BIN/regbench" &
CB_PID=$!
wait "$CB_PID"
log "load after: $(uptime)"

#!/usr/bin/env bash
# Data-plane benchmark: a client host A and a server host B (two network namespaces joined by a
# veth pair), the same HTTP backend on B (tests/src/bin/benchserver.rs: 100-byte answers,
# keep-alive; GET /bulk streams BULK_BYTES), reached from A five ways, side by side:
#   direct        wrk on A -> B's address (plain TCP, no proxy)
#   haproxy       wrk on A -> HAProxy on A -> TLS 1.3 mutual TLS (EC P-256) -> HAProxy on B ->
#                 127.0.0.1 on B (Debian haproxy, nbthread THREADS each; mode tcp)
#   haproxy_http  the same two hops in mode http: keep-alive on every hop (http-reuse always
#                 between the hops), each request balanced (roundrobin) over two backends on
#                 B (127.0.0.1:8080 and 127.0.0.1:8081)
#   meshd         wrk on A -> `api`'s virtual IP on A -> meshd on A -> QUIC mutual TLS -> meshd
#                 on B -> 127.0.0.1 on B (a meshd server on A, an agent on B)
#   meshd_l7      the same path to `apil7`, whose service-defaults say Protocol "http" (meshd
#                 proxies it at layer 7), two instances on B (127.0.0.1:8080, 127.0.0.2:8080)
# For each: wrk requests/s and p50/p99 latency at one connection (-t1 -c1) and at CONNS
# connections, then one bulk download of BULK_BYTES through it (curl). meshd's RSS (both
# hosts) idle and the most seen under load.
#
# Usage: tests/bench/mesh.sh   (root: network namespaces)
# Env:   DURATION=10  seconds per wrk run     CONNS="32 256"   wrk connections
#        ROUNDS=1     repetitions, variant order alternating   BULK_BYTES=1073741824
#        VARIANTS="direct haproxy haproxy_http meshd meshd_l7"
#        THREADS=2    threads of each proxy process (HAProxy nbthread, meshd worker_threads)
#        MESHD=path   the meshd binary (default: this tree's release build)
# Prints one JSON line per run, then a Markdown summary with the ratios. Not run by CI; every
# run is bounded by DURATION (wrk) or a timeout (bulk); everything it starts and the
# namespaces are removed on exit, also on failure.
set -euo pipefail

DURATION="${DURATION:-10}"
CONNS="${CONNS:-32 256}"
ROUNDS="${ROUNDS:-1}"
BULK_BYTES="${BULK_BYTES:-1073741824}"
VARIANTS="${VARIANTS:-direct haproxy haproxy_http meshd meshd_l7}"
THREADS="${THREADS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'mesh.sh: %s\n' "$*" >&2; exit 1; }
has() { [[ " $VARIANTS " == *" $1 "* ]]; } # has VARIANT: is it one of VARIANTS
for v in $VARIANTS; do
    case $v in direct | haproxy | haproxy_http | meshd | meshd_l7) ;; *) die "unknown variant $v" ;; esac
done
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"

need=()
for c in wrk haproxy curl openssl; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
if ((${#need[@]})); then
    log "installing ${need[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk haproxy curl openssl >/dev/null
fi

if has meshd || has meshd_l7; then
    log "building meshd, meshctl and benchserver (release)"
    cargo build --release -q -p meshd -p meshctl
else
    log "building benchserver (release)"
fi
cargo build --release -q -p tests --bin benchserver
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
MESHD="${MESHD:-$BIN/meshd}" # another build of meshd, for an A/B run
log "commit $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $THREADS threads per proxy"

ID="mb$$"
NA="${ID}a" NB="${ID}b"
IPA=10.251.$(($$ % 250)).1
IPB=10.251.$(($$ % 250)).2
WORK="$(mktemp -d /tmp/meshd-mesh-bench.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
    [[ -n ${MESHD_KEEP_LOGS:-} ]] && log "logs kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NA"
ip netns add "$NB"
ip link add "${ID}x" type veth peer name "${ID}y"
ip link set "${ID}x" netns "$NA"
ip link set "${ID}y" netns "$NB"
ip -n "$NA" addr add "$IPA/24" dev "${ID}x"
ip -n "$NB" addr add "$IPB/24" dev "${ID}y"
for ns in "$NA" "$NB"; do
    ip -n "$ns" link set lo up
done
ip -n "$NA" link set "${ID}x" up
ip -n "$NB" link set "${ID}y" up
inA() { ip netns exec "$NA" "$@"; }
inB() { ip netns exec "$NB" "$@"; }
bg() { # bg NS LOG CMD...: start in the background, remember the pid
    local ns=$1 out=$2
    shift 2
    ip netns exec "$ns" "$@" >"$out" 2>&1 &
    PIDS+=("$!")
}
wait_port() { # wait_port NS HOST PORT
    for _ in $(seq 1 150); do
        ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
        sleep 0.2
    done
    die "nothing listens on $2:$3 in $1"
}

# --- the backend on B: loopback for the proxies, B's address for direct ---------------------
bg "$NB" "$WORK/backend.log" env BULK_BYTES="$BULK_BYTES" "$BIN/benchserver" 127.0.0.1:8080
bg "$NB" "$WORK/backend-direct.log" env BULK_BYTES="$BULK_BYTES" "$BIN/benchserver" "$IPB:8080"
wait_port "$NB" 127.0.0.1 8080
wait_port "$NB" "$IPB" 8080
# The second backend of the layer-7 variants: haproxy_http balances over 127.0.0.1:8080 and
# :8081, meshd_l7 over 127.0.0.1:8080 and 127.0.0.2:8080 (a virtual IP's port is its
# instances' port).
if has haproxy_http; then
    bg "$NB" "$WORK/backend-8081.log" env BULK_BYTES="$BULK_BYTES" "$BIN/benchserver" 127.0.0.1:8081
    wait_port "$NB" 127.0.0.1 8081
fi
if has meshd_l7; then
    bg "$NB" "$WORK/backend-2.log" env BULK_BYTES="$BULK_BYTES" "$BIN/benchserver" 127.0.0.2:8080
    wait_port "$NB" 127.0.0.2 8080
fi

# --- HAProxy chain ----------------------------------------------------------------------------
if has haproxy || has haproxy_http; then
    P="$WORK/pki"
    mkdir -p "$P"
    ec() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
    ec "$P/ca.key"
    openssl req -x509 -new -key "$P/ca.key" -subj /CN=bench-ca -days 2 -out "$P/ca.pem" 2>/dev/null
    for who in client server; do
        ec "$P/$who.key"
        openssl req -new -key "$P/$who.key" -subj "/CN=$who" -out "$P/$who.csr" 2>/dev/null
        printf 'subjectAltName=IP:%s\n' "$IPB" >"$P/$who.ext"
        openssl x509 -req -in "$P/$who.csr" -CA "$P/ca.pem" -CAkey "$P/ca.key" -CAcreateserial \
            -days 2 -extfile "$P/$who.ext" -out "$P/$who.crt" 2>/dev/null
        cat "$P/$who.crt" "$P/$who.key" >"$P/$who.pem"
    done
    cat >"$WORK/haproxy-a.cfg" <<EOF
global
    nbthread $THREADS
    ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend in
    bind 127.0.0.1:9000
    default_backend chain
backend chain
    server b $IPB:9443 ssl crt $P/client.pem ca-file $P/ca.pem verify required
EOF
    cat >"$WORK/haproxy-b.cfg" <<EOF
global
    nbthread $THREADS
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind $IPB:9443 ssl crt $P/server.pem ca-file $P/ca.pem verify required
    default_backend app
backend app
    server app 127.0.0.1:8080
EOF
fi
if has haproxy; then
    bg "$NB" "$WORK/haproxy-b.log" haproxy -db -f "$WORK/haproxy-b.cfg"
    bg "$NA" "$WORK/haproxy-a.log" haproxy -db -f "$WORK/haproxy-a.cfg"
    wait_port "$NB" "$IPB" 9443
    wait_port "$NA" 127.0.0.1 9000
fi
if has haproxy_http; then
    # mode http on both hops: A's HAProxy keeps its TLS connections to B open and shares them
    # between client connections (http-reuse always); B's balances every request (no
    # prefer-last-server) over the two backends, on kept-alive connections to them.
    cat >"$WORK/haproxy-a-http.cfg" <<EOF
global
    nbthread $THREADS
    ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend in_http
    bind 127.0.0.1:9100
    default_backend chain_http
backend chain_http
    server b $IPB:9444 ssl crt $P/client.pem ca-file $P/ca.pem verify required alpn http/1.1
EOF
    cat >"$WORK/haproxy-b-http.cfg" <<EOF
global
    nbthread $THREADS
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend tls_http
    bind $IPB:9444 ssl crt $P/server.pem ca-file $P/ca.pem verify required alpn http/1.1
    default_backend app_http
backend app_http
    balance roundrobin
    server app1 127.0.0.1:8080
    server app2 127.0.0.1:8081
EOF
    bg "$NB" "$WORK/haproxy-b-http.log" haproxy -db -f "$WORK/haproxy-b-http.cfg"
    bg "$NA" "$WORK/haproxy-a-http.log" haproxy -db -f "$WORK/haproxy-a-http.cfg"
    wait_port "$NB" "$IPB" 9444
    wait_port "$NA" 127.0.0.1 9100
fi

# --- meshd: a server on A, an agent on B ------------------------------------------------------
MESHD_A="" MESHD_B="" VIP="" VIP_L7=""
vip_of() { # vip_of SERVICE: its virtual IP as A sees it, or nothing yet
    inA curl -sf 127.0.0.1:8500/v1/mesh/virtual-ips 2>/dev/null |
        python3 -c 'import sys,json; print(next((v["IP"] for v in json.load(sys.stdin)["VirtualIPs"] if v["Service"]==sys.argv[1]),""))' "$1" 2>/dev/null || true
}
if has meshd || has meshd_l7; then
    T="$WORK/tls"
    mkdir -p "$T"
    (cd "$T" && "$BIN/meshctl" tls ca create >/dev/null && \
        "$BIN/meshctl" tls cert create --server --node a --dc dc1 >/dev/null)
    CERT=$(ls "$T"/dc1-server-mesh-*.pem | grep -v -- -key.pem | head -1)
    KEY=${CERT%.pem}-key.pem
    cat >"$WORK/a.toml" <<EOF
node_name = "a"
data_dir = "$WORK/data-a"
server = true
bootstrap_expect = 1
bind_addr = "$IPA:8301"
http_addr = "127.0.0.1:8500"
dns_addr = "127.0.0.1:8600"
ca_file = "$T/mesh-agent-ca.pem"
ca_key_file = "$T/mesh-agent-ca-key.pem"
cert_file = "$CERT"
key_file = "$KEY"
join_token = "bench"
default_intention_policy = "allow"
log_level = "warn"
worker_threads = $THREADS
EOF
    cat >"$WORK/b.toml" <<EOF
node_name = "b"
data_dir = "$WORK/data-b"
bind_addr = "$IPB:8301"
retry_join = ["$IPA:8301"]
http_addr = "127.0.0.1:8500"
dns_addr = "127.0.0.1:8600"
ca_file = "$T/mesh-agent-ca.pem"
join_token = "bench"
log_level = "warn"
worker_threads = $THREADS
EOF
    bg "$NA" "$WORK/meshd-a.log" "$MESHD" agent --config "$WORK/a.toml"
    MESHD_A=${PIDS[-1]}
    wait_port "$NA" 127.0.0.1 8500
    bg "$NB" "$WORK/meshd-b.log" "$MESHD" agent --config "$WORK/b.toml"
    MESHD_B=${PIDS[-1]}
    wait_port "$NB" 127.0.0.1 8500
    for _ in $(seq 1 100); do
        inB curl -sf -X PUT 127.0.0.1:8500/v1/agent/service/register \
            -d '{"Name":"api","Port":8080,"Address":"127.0.0.1"}' >/dev/null 2>&1 && break
        sleep 0.2
    done
    for _ in $(seq 1 100); do
        VIP=$(vip_of api)
        [[ -n $VIP ]] && inA curl -sf -m 2 "http://$VIP:8080/" >/dev/null 2>&1 && break
        sleep 0.3
    done
    inA curl -sf -m 5 "http://$VIP:8080/" >/dev/null || die "api's virtual IP does not answer on A (see $WORK)"
fi
if has meshd_l7; then
    inA curl -sf -X PUT 127.0.0.1:8500/v1/config \
        -d '{"Kind":"service-defaults","Name":"apil7","Protocol":"http"}' >/dev/null ||
        die "service-defaults for apil7 refused (see $WORK)"
    for i in 1 2; do
        inB curl -sf -X PUT 127.0.0.1:8500/v1/agent/service/register \
            -d "{\"ID\":\"apil7-$i\",\"Name\":\"apil7\",\"Port\":8080,\"Address\":\"127.0.0.$i\"}" \
            >/dev/null || die "register apil7-$i (see $WORK)"
    done
    for _ in $(seq 1 100); do
        VIP_L7=$(vip_of apil7)
        [[ -n $VIP_L7 ]] && inA curl -sf -m 2 "http://$VIP_L7:8080/" >/dev/null 2>&1 && break
        sleep 0.3
    done
    inA curl -sf -m 5 "http://$VIP_L7:8080/" >/dev/null || die "apil7's virtual IP does not answer on A (see $WORK)"
fi

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
if [[ -n $MESHD_A ]]; then
    # meshd runs under `ip netns exec`, which execs: the pid is meshd's.
    sleep 2
    IDLE_A=$(rss "$MESHD_A") IDLE_B=$(rss "$MESHD_B")
    log "meshd RSS idle: A ${IDLE_A} KiB, B ${IDLE_B} KiB"
fi
MAXRSS="$WORK/maxrss"
echo "0 0" >"$MAXRSS"
sampler() {
    local a=0 b=0 x y
    while :; do
        x=$(rss "$MESHD_A"); y=$(rss "$MESHD_B")
        ((x > a)) && a=$x
        ((y > b)) && b=$y
        echo "$a $b" >"$MAXRSS"
        sleep 0.5
    done
}
if [[ -n $MESHD_A ]]; then
    sampler &
    PIDS+=("$!")
fi

url_of() {
    case $1 in
        direct) echo "http://$IPB:8080" ;;
        haproxy) echo "http://127.0.0.1:9000" ;;
        haproxy_http) echo "http://127.0.0.1:9100" ;;
        meshd) echo "http://$VIP:8080" ;;
        meshd_l7) echo "http://$VIP_L7:8080" ;;
    esac
}
to_ms() { # wrk latency value (123.45us, 1.23ms, 1.2s) to ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
run_wrk() { # run_wrk VARIANT CONNS ROUND (one connection: one wrk thread)
    local out rps p50 p99 threads=2
    (($2 < 2)) && threads=1
    out=$(inA wrk -t"$threads" -c"$2" -d"${DURATION}s" --latency "$(url_of "$1")/" 2>&1) || die "wrk $1: $out"
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    local errs
    errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out" | tr '\n' ' ')
    printf '{"variant":"%s","threads":%s,"round":%s,"conns":%s,"rps":%s,"p50_ms":%s,"p99_ms":%s,"errors":"%s"}\n' \
        "$1" "$THREADS" "$3" "$2" "$rps" "$p50" "$p99" "$errs" | tee -a "$RESULTS"
}
run_bulk() { # run_bulk VARIANT ROUND
    local speed
    speed=$(inA curl -s -o /dev/null -m 300 -w '%{speed_download}' "$(url_of "$1")/bulk") ||
        die "bulk download through $1 failed"
    printf '{"variant":"%s","threads":%s,"round":%s,"bulk_bytes":%s,"bulk_mib_s":%s}\n' "$1" "$THREADS" "$2" "$BULK_BYTES" \
        "$(awk -v s="$speed" 'BEGIN { printf "%.1f", s / 1048576 }')" | tee -a "$RESULTS"
}

read -r -a V <<<"$VARIANTS"
for r in $(seq 1 "$ROUNDS"); do
    order=("${V[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#V[@]} - 1; i >= 0; i--)); do order+=("${V[i]}"); done
    fi
    for v in "${order[@]}"; do
        for c in 1 $CONNS; do run_wrk "$v" "$c" "$r"; done
        run_bulk "$v" "$r"
    done
done
if [[ -n $MESHD_A ]]; then
    read -r MAX_A MAX_B <"$MAXRSS"
    printf '{"meshd_rss_kib":{"a_idle":%s,"b_idle":%s,"a_max":%s,"b_max":%s}}\n' \
        "$IDLE_A" "$IDLE_B" "$MAX_A" "$MAX_B" | tee -a "$RESULTS"
fi

python3 - "$RESULTS" "1 $CONNS" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
conns = [int(c) for c in sys.argv[2].split()]
def med(v, c, k):
    xs = [r[k] for r in rows if r.get("variant") == v and r.get("conns") == c]
    return statistics.median(xs) if xs else None
def bulk(v):
    xs = [r["bulk_mib_s"] for r in rows if r.get("variant") == v and "bulk_mib_s" in r]
    return statistics.median(xs) if xs else None
vs = [v for v in ["direct", "haproxy", "haproxy_http", "meshd", "meshd_l7"] if any(r.get("variant") == v for r in rows)]
print("\n| variant | " + " | ".join(f"{c} conns: req/s, p50, p99 ms" for c in conns) + " | bulk MiB/s |")
print("|---|" + "---|" * (len(conns) + 1))
for v in vs:
    cells = [f"{med(v,c,'rps'):,.0f}, {med(v,c,'p50_ms'):.3f}, {med(v,c,'p99_ms'):.3f}" for c in conns]
    print(f"| {v} | " + " | ".join(cells) + f" | {bulk(v):,.0f} |")
for m, h in [("meshd", "haproxy"), ("meshd_l7", "haproxy_http")]:
    if m in vs and h in vs:
        for c in conns:
            print(f"\n{m}/{h} at {c} conns: req/s {med(m,c,'rps')/med(h,c,'rps'):.2f}x, "
                  f"p50 {med(m,c,'p50_ms')/med(h,c,'p50_ms'):.2f}x, p99 {med(m,c,'p99_ms')/med(h,c,'p99_ms'):.2f}x")
        print(f"{m}/{h} bulk: {bulk(m)/bulk(h):.2f}x")
for m in ["meshd", "meshd_l7"]:
    if m in vs and "direct" in vs:
        for c in conns:
            print(f"{m}/direct at {c} conns: req/s {med(m,c,'rps')/med('direct',c,'rps'):.2f}x")
rss = [r["meshd_rss_kib"] for r in rows if "meshd_rss_kib" in r]
if rss:
    r = rss[-1]
    print(f"meshd RSS: idle A {r['a_idle']/1024:.1f} MiB (server), B {r['b_idle']/1024:.1f} MiB (agent); "
          f"max under load A {r['a_max']/1024:.1f} MiB, B {r['b_max']/1024:.1f} MiB")
EOF

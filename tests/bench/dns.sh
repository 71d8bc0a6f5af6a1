#!/usr/bin/env bash
# DNS benchmark: meshd's DNS server against NSD (Debian nsd) serving the same records, loaded by
# dnsperf (Debian dnsperf) with the same query file and settings, one after the other; then one
# service with 5,000 instances: SRV over TCP (and A over UDP) while a churn generator flips the
# health of random instances, against the same load without churn. SRV over TCP is loaded by
# `dnschurn query` (tests/src/bin/dnschurn.rs), since Debian's dnsperf cannot read TCP answers
# over 16 KiB; dnschurn also registers the instances and flips their health.
#
# Usage: tests/bench/dns.sh                     (from anywhere in the repo; as root: apt-get,
#                                               taskset)
# Env:   DURATION=20        seconds per dnsperf run
#        CLIENTS=8          dnsperf -c (UDP sockets), both servers alike
#        THREADS=1          dnsperf -T
#        OUTSTANDING=100    dnsperf -q (queries in flight at most)
#        ROUNDS=1           repetitions of the "same records" pair (order alternates each round)
#        PIN=1              taskset: the server under test on CPU $SERVER_CPU, dnsperf and the
#                           churn generator on CPU $CLIENT_CPU; PIN=0: nothing pinned
#        SERVER_CPU=1 CLIENT_CPU=0
#        NSD_SERVERS=       NSD server-count (default: the CPUs the server may use, i.e. 1 when
#                           pinned; meshd's tokio runtime sizes itself the same way)
#        SERVICES=200 INSTANCES=3 NODES=50   the "same records" catalog
#        LAT_QPS=10000      fixed rate of the latency runs (dnsperf -Q, per-query latencies
#                           with -v: p50/p99); LAT_QPS=0 skips them
#        LAT_DURATION=10    seconds per latency run
#        BIG=5000 BIG_NODES=100              instances (and their nodes) of service "big"
#        CHURN_RATE=200     health changes per second during the churn runs (open loop)
#        CHURN_CONCURRENCY=64  churn writes in flight at most
#        TCP_CLIENTS=8      TCP connections of the SRV-over-TCP runs (one query in flight each)
#        SCENARIO=all       all, same or big
#        KEEP=1             keep the temp dir (zone, registrations, logs, raw dnsperf output)
# Prints one JSON line per run, Markdown tables and one JSON summary (last line) with the
# meshd/NSD ratios. Everything listens on 127.0.0.1; every run is bounded by DURATION (dnsperf
# -l) and the churn generator stops by itself. Only the processes this script started are
# stopped (trap on exit). Not run by CI.
set -euo pipefail

DURATION="${DURATION:-20}"
CLIENTS="${CLIENTS:-8}"
THREADS="${THREADS:-1}"
OUTSTANDING="${OUTSTANDING:-100}"
ROUNDS="${ROUNDS:-1}"
PIN="${PIN:-1}"
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
SERVICES="${SERVICES:-200}"
INSTANCES="${INSTANCES:-3}"
NODES="${NODES:-50}"
LAT_QPS="${LAT_QPS:-10000}"
LAT_DURATION="${LAT_DURATION:-10}"
BIG="${BIG:-5000}"
BIG_NODES="${BIG_NODES:-100}"
CHURN_RATE="${CHURN_RATE:-200}"
CHURN_CONCURRENCY="${CHURN_CONCURRENCY:-64}"
TCP_CLIENTS="${TCP_CLIENTS:-8}"
SCENARIO="${SCENARIO:-all}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'dns.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run it as root (apt-get, taskset)"
case $SCENARIO in all | same | big) ;; *) die "SCENARIO must be all, same or big" ;; esac
if [[ $PIN == 1 ]]; then
    ncpu="$(nproc)"
    ((SERVER_CPU < ncpu && CLIENT_CPU < ncpu)) || die "SERVER_CPU/CLIENT_CPU beyond $ncpu CPUs"
    SRV_PIN=(taskset -c "$SERVER_CPU")
    CLI_PIN=(taskset -c "$CLIENT_CPU")
    NSD_SERVERS="${NSD_SERVERS:-1}"
else
    SRV_PIN=()
    CLI_PIN=()
    NSD_SERVERS="${NSD_SERVERS:-$(nproc)}"
fi

# --- packages -----------------------------------------------------------------------------
missing=()
command -v nsd >/dev/null 2>&1 || [[ -x /usr/sbin/nsd ]] || missing+=(nsd)
command -v dnsperf >/dev/null 2>&1 || missing+=(dnsperf)
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NSD="$(command -v nsd || echo /usr/sbin/nsd)"
[[ -x $NSD ]] && command -v dnsperf >/dev/null && command -v dig >/dev/null \
    || die "nsd, dnsperf or dig is missing and could not be installed"
log "$("$NSD" -v 2>&1 | head -1); dnsperf $(dnsperf -h 2>&1 | sed -n 's/^Version //p')"

# --- build --------------------------------------------------------------------------------
log "building meshd and the tests crate (release)"
cargo build --release -q -p meshd -p tests
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
MESHD="${MESHD:-$TARGET_DIR/release/meshd}" # MESHD=path: another build, for an A/B run
DNSCHURN="$TARGET_DIR/release/dnschurn"
[[ -x $MESHD && -x $DNSCHURN ]] || die "built binaries not found under $TARGET_DIR/release"
log "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- registry meshd \
    || echo ' + uncommitted changes in registry/meshd'), $(date -u '+%Y-%m-%d %H:%M UTC')"
log "load before: $(uptime)"
log "pinning: $(if [[ $PIN == 1 ]]; then echo "servers on CPU $SERVER_CPU, dnsperf and churn on CPU $CLIENT_CPU"; else echo none; fi); NSD server-count $NSD_SERVERS"

# --- temp dir and cleanup -----------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshd-dns-bench.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP:-} ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free for both UDP and TCP on 127.0.0.1.
free_port() {
    python3 - <<'EOF'
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close(); continue
    u.close(); t.close(); print(port); break
EOF
}

# --- helpers (Python) ---------------------------------------------------------------------
# gen.py: the registrations for meshd and the NSD zone with the same records, the query files.
cat >"$WORK/gen.py" <<'EOF'
import json, random, sys
out, services, instances, nodes, big, big_nodes = sys.argv[1], *map(int, sys.argv[2:7])
DC, TTL, PRIO, WEIGHT = "dc1", 0, 1, 1

def ip(a, b, n):
    return f"127.{a}.{b + n // 250}.{n % 250 + 1}"

def hexname(addr):
    return "".join(f"{int(o):02x}" for o in addr.split(".")) + f".addr.{DC}.mesh."

def reg(node, naddr, sid, name, saddr, port):
    svc = {"ID": sid, "Service": name, "Port": port, "Tags": ["v1"]}
    if saddr:
        svc["Address"] = saddr
    return {"Node": node, "Address": naddr, "Service": svc,
            "Checks": [{"CheckID": f"{sid}-alive", "Name": "alive", "Status": "passing",
                        "ServiceID": sid}]}

# "same records": SERVICES services x INSTANCES instances spread over NODES nodes; services
# with an even number have their own address per instance (SRV target <hex>.addr.dc1.mesh.),
# the others use their node's (SRV target <node>.node.dc1.mesh.).
assert instances <= nodes
regs, zone, names = [], {}, []
def rr(owner, rtype, rdata):
    zone.setdefault((owner, rtype), set()).add(rdata)
node_addr = {f"node-{k}": ip(32, 0, k) for k in range(nodes)}
for node, a in node_addr.items():
    for owner in (f"{node}.node.mesh.", f"{node}.node.{DC}.mesh."):
        rr(owner, "A", a)
for j in range(services):
    name = f"svc-{j}"
    for i in range(instances):
        n = j * instances + i
        node = f"node-{(j * instances + i) % nodes}"
        saddr = ip(64, 0, n) if j % 2 == 0 else ""
        port = 20000 + n % 40000
        regs.append(reg(node, node_addr[node], f"{name}-{i}", name, saddr, port))
        addr = saddr or node_addr[node]
        target = hexname(saddr) if saddr else f"{node}.node.{DC}.mesh."
        for dc in ("", f"{DC}."):
            rr(f"{name}.service.{dc}mesh.", "A", addr)
            rr(f"_{name}._tcp.service.{dc}mesh.", "SRV", f"{PRIO} {WEIGHT} {port} {target}")
        rr(target, "A", addr)
with open(f"{out}/same.regs.jsonl", "w") as f:
    for r in regs:
        f.write(json.dumps(r) + "\n")
with open(f"{out}/mesh.zone", "w") as f:
    f.write("$ORIGIN mesh.\n$TTL 0\n")
    f.write("@ IN SOA ns.mesh. hostmaster.mesh. 1 3600 600 86400 0\n@ IN NS ns.mesh.\n")
    f.write("ns IN A 127.0.0.1\n")
    for (owner, rtype), rdatas in sorted(zone.items()):
        for rdata in sorted(rdatas):
            f.write(f"{owner} {TTL} IN {rtype} {rdata}\n")
# The query mix: every service's A, every 4th service's SRV, every 2nd node's A; shuffled
# (seeded), the same file for both servers.
q = [f"svc-{j}.service.mesh A" for j in range(services)]
q += [f"_svc-{j}._tcp.service.mesh SRV" for j in range(0, services, 4)]
q += [f"node-{k}.node.mesh A" for k in range(0, nodes, 2)]
random.Random(1).shuffle(q)
with open(f"{out}/same.queries", "w") as f:
    f.write("\n".join(q) + "\n")

# "big": one service with BIG instances over BIG_NODES nodes, each with its own address.
with open(f"{out}/big.regs.jsonl", "w") as f:
    for n in range(big):
        node = f"bnode-{n % big_nodes}"
        f.write(json.dumps(reg(node, ip(33, 0, n % big_nodes), f"big-{n}", "big",
                               ip(65, 0, n), 30000 + n % 30000)) + "\n")
with open(f"{out}/big.srv.queries", "w") as f:
    f.write("_big._tcp.service.mesh SRV\n")
with open(f"{out}/big.a.queries", "w") as f:
    f.write("big.service.mesh A\n")
print(f"{len(regs)} registrations, {sum(len(v) for v in zone.values())} zone records, "
      f"{len(q)} queries; big: {big} instances", file=sys.stderr)
EOF

# compare.py: the record sets two servers answer (dig over TCP, so nothing is truncated).
cat >"$WORK/compare.py" <<'EOF'
import subprocess, sys
queries, servers = sys.argv[1], sys.argv[2:]   # servers: name=port
def answers(port):
    out = subprocess.run(["dig", "@127.0.0.1", "-p", port, "+tcp", "+tries=1", "+time=5",
                          "+noall", "+question", "+answer", "+additional", "-f", queries],
                         capture_output=True, text=True, check=True).stdout
    res, cur = {}, None
    for line in out.splitlines():
        if line.startswith(";") and line.strip() != ";":
            f = line[1:].split()
            cur = (f[0].lower(), f[-1]); res[cur] = {"answer": set(), "additional": set()}
        elif line.strip() and cur:
            f = line.split()
            owner, rtype, rdata = f[0].lower(), f[3], " ".join(f[4:]).lower()
            sec = "answer" if (owner == cur[0] and rtype == cur[1]) else "additional"
            res[cur][sec].add((owner, rtype, rdata))
    return res
got = {name: answers(port) for name, port in (s.split("=") for s in servers)}
(a, ra), (b, rb) = got.items()
bad = 0
for key in sorted(set(ra) | set(rb)):
    x, y = ra.get(key), rb.get(key)
    if x is None or y is None or x["answer"] != y["answer"] or not x["answer"]:
        bad += 1
        if bad <= 5:
            print(f"  {key}: {a} {sorted(x['answer']) if x else None}\n"
                  f"  {' ' * len(str(key))}  {b} {sorted(y['answer']) if y else None}",
                  file=sys.stderr)
        continue
    # The SRV targets' A records must be in both additional sections (NSD may add more, e.g.
    # the NS glue).
    if key[1] == "SRV":
        want = {r[2].split()[-1] for r in x["answer"]}
        for name, r in ((a, x), (b, y)):
            have = {o for o, t, _ in r["additional"] if t == "A"}
            if not want <= have:
                bad += 1
                print(f"  {key}: {name} lacks additional A for {sorted(want - have)}",
                      file=sys.stderr)
print(f"{len(ra)} names compared, {bad} differ", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# run.py: one dnsperf run; server CPU from /proc (the process and its children), dnsperf's own
# CPU from its rusage; prints one JSON line.
cat >"$WORK/run.py" <<'EOF'
import json, os, re, resource, subprocess, sys, time
meta = json.loads(sys.argv[1]); pids = [int(p) for p in sys.argv[2].split(",") if p]
raw, cmd = sys.argv[3], sys.argv[4:]
TICK = os.sysconf("SC_CLK_TCK")
def tree(pid):
    out = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            for c in open(f"/proc/{pid}/task/{t}/children").read().split():
                out += tree(int(c))
    except OSError:
        pass
    return out
def cpu(pids):
    total = 0
    for p in {q for pid in pids for q in tree(pid)}:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / TICK
c0, t0 = cpu(pids), time.monotonic()
r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
lat, timeouts = [], 0
with open(raw, "w") as rawf:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = []
    for line in p.stdout:
        if line.startswith("> "):   # -v: "> RCODE name type latency", "> T name type" (timeout)
            f = line.split()
            try:
                lat.append(float(f[-1]))
            except ValueError:
                timeouts += 1
            continue
        text.append(line); rawf.write(line)
    p.wait()
c1, t1 = cpu(pids), time.monotonic()
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
out = "".join(text)
def num(pattern, cast=float, default=None):
    m = re.search(pattern, out)
    return cast(m.group(1)) if m else default
res = dict(meta)
res.update({
    "sent": num(r"Queries sent:\s+(\d+)", int, 0),
    "completed": num(r"Queries completed:\s+(\d+)", int, 0),
    "lost": num(r"Queries lost:\s+(\d+)", int, 0),
    "qps": round(num(r"Queries per second:\s+([\d.]+)", float, 0.0), 1),
})
m = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", out)
if m:
    res.update({"avg_ms": round(float(m.group(1)) * 1e3, 3),
                "min_ms": round(float(m.group(2)) * 1e3, 3),
                "max_ms": round(float(m.group(3)) * 1e3, 3)})
sd = num(r"Latency StdDev \(s\):\s+([\d.]+)")
if sd is not None:
    res["stddev_ms"] = round(sd * 1e3, 3)
if lat:
    lat.sort()
    def pct(q):
        return round(lat[min(len(lat) - 1, max(0, -(-int(q * len(lat)) // 100) - 1))] * 1e3, 3)
    res.update({"p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9)})
if timeouts:
    res["timeouts_v"] = timeouts
m = re.search(r"Response codes:\s+(.*)", out)
if m:
    res["rcodes"] = {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+)", m.group(1))}
m = re.search(r"Average packet size:\s+request (\d+), response (\d+)", out)
if m:
    res["resp_bytes"] = int(m.group(2))
wall = t1 - t0
res["server_cpu_cores"] = round((c1 - c0) / wall, 3)
if res["completed"]:
    res["server_cpu_us_per_query"] = round((c1 - c0) / res["completed"] * 1e6, 2)
res["dnsperf_cpu_cores"] = round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall, 3)
if p.returncode != 0 or not res["completed"]:
    res["error"] = f"dnsperf exited {p.returncode}; see {raw}"
print(json.dumps(res), flush=True)
EOF

# runq.py: runs a command that prints one JSON line (dnschurn query) and adds the server's CPU.
cat >"$WORK/runq.py" <<'EOF'
import json, os, subprocess, sys, time
meta = json.loads(sys.argv[1]); pids = [int(p) for p in sys.argv[2].split(",") if p]
TICK = os.sysconf("SC_CLK_TCK")
def tree(pid):
    out = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            for c in open(f"/proc/{pid}/task/{t}/children").read().split():
                out += tree(int(c))
    except OSError:
        pass
    return out
def cpu():
    total = 0
    for p in {q for pid in pids for q in tree(pid)}:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / TICK
c0, t0 = cpu(), time.monotonic()
p = subprocess.run(sys.argv[3:], stdout=subprocess.PIPE, text=True)
c1, t1 = cpu(), time.monotonic()
res = dict(meta)
try:
    res.update(json.loads(p.stdout.strip().splitlines()[-1]))
except (IndexError, ValueError):
    res["error"] = f"exited {p.returncode} without a result"
res["server_cpu_cores"] = round((c1 - c0) / (t1 - t0), 3)
if res.get("completed"):
    res["server_cpu_us_per_query"] = round((c1 - c0) / res["completed"] * 1e6, 2)
print(json.dumps(res), flush=True)
EOF

# --- records ------------------------------------------------------------------------------
python3 "$WORK/gen.py" "$WORK" "$SERVICES" "$INSTANCES" "$NODES" "$BIG" "$BIG_NODES"

# --- meshd --------------------------------------------------------------------------------
"${SRV_PIN[@]}" "$MESHD" agent --dev --data-dir "$WORK/meshd" --http-addr 127.0.0.1:0 \
    --dns-addr 127.0.0.1:0 --log-level warn >"$WORK/meshd.out" 2>"$WORK/meshd.log" &
MESHD_PID=$!
PIDS+=("$MESHD_PID")
MESHD_URL=""
MESHD_DNS=""
for _ in $(seq 1 300); do
    line="$(grep -m1 '^==> meshd serving:' "$WORK/meshd.out" || true)"
    if [[ -n $line ]]; then
        MESHD_URL="$(sed -n 's/.* http=\([^ ]*\).*/\1/p' <<<"$line")"
        MESHD_DNS="$(sed -n 's/.* dns=\([^ ]*\).*/\1/p' <<<"$line")"
        break
    fi
    kill -0 "$MESHD_PID" 2>/dev/null || break
    sleep 0.1
done
[[ -n $MESHD_URL ]] || { tail -20 "$WORK/meshd.log" >&2; die "meshd did not print its serving line"; }
[[ -n $MESHD_DNS ]] || die "meshd serves no DNS (serving line: $line)"
MESHD_PORT="${MESHD_DNS##*:}"
[[ ${MESHD_DNS%:*} == 127.0.0.1 ]] || die "meshd's DNS is on $MESHD_DNS, not loopback"
log "meshd (pid $MESHD_PID) serving http $MESHD_URL, dns $MESHD_DNS"

# Waits until `dig` over TCP at port $1 answers $2 (type $3) with at least $4 records.
wait_records() {
    local port=$1 name=$2 type=$3 want=$4 n=0 i
    for i in $(seq 1 200); do
        n="$(dig @127.0.0.1 -p "$port" +tcp +tries=1 +time=2 +noall +answer "$name" "$type" \
            2>/dev/null | grep -c . || true)"
        ((n >= want)) && return 0
        sleep 0.1
    done
    die "port $port: $name $type has $n records, want $want"
}

# start_nsd ZONEFILE NAME: NSD on a free loopback port serving ZONEFILE as mesh. (sets NSD_PID
# and NSD_PORT). NSD's defaults but for: its own files and port, no privilege drop or chroot,
# response rate limiting off (it would drop most of a benchmark's answers), answers rotated as
# meshd shuffles them, server-count as above.
start_nsd() {
    local dir="$WORK/nsd-$2"
    NSD_PORT="$(free_port)"
    mkdir -p "$dir"
    cp "$1" "$dir/mesh.zone"
    cat >"$dir/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    server-count: $NSD_SERVERS
    username: ""
    chroot: ""
    zonesdir: "$dir"
    database: ""
    zonelistfile: "$dir/zone.list"
    pidfile: "$dir/nsd.pid"
    xfrdfile: "$dir/xfrd.state"
    logfile: "$dir/nsd.log"
    verbosity: 1
    round-robin: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "mesh."
    zonefile: "mesh.zone"
EOF
    nsd-checkconf "$dir/nsd.conf" || die "nsd-checkconf refused $dir/nsd.conf"
    "${SRV_PIN[@]}" "$NSD" -d -c "$dir/nsd.conf" >"$dir/nsd.out" 2>&1 &
    NSD_PID=$!
    PIDS+=("$NSD_PID")
}
stop_nsd() {
    kill -TERM "$NSD_PID" 2>/dev/null || true
    wait "$NSD_PID" 2>/dev/null || true
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
SEQ=0
# run_perf META_JSON SERVER_PIDS PORT [dnsperf args...]: one dnsperf run, its JSON line kept.
run_perf() {
    local meta=$1 pids=$2 port=$3
    shift 3
    SEQ=$((SEQ + 1))
    python3 "$WORK/run.py" "$meta" "$pids" "$WORK/dnsperf.$SEQ.out" \
        "${CLI_PIN[@]}" dnsperf -s 127.0.0.1 -p "$port" -t 5 "$@" | tee -a "$RESULTS"
}

# --- scenario "same records" --------------------------------------------------------------
if [[ $SCENARIO == all || $SCENARIO == same ]]; then
    log "registering $((SERVICES * INSTANCES)) instances of $SERVICES services on $NODES nodes"
    "${CLI_PIN[@]}" "$DNSCHURN" register --url "$MESHD_URL" --file "$WORK/same.regs.jsonl" \
        | tee "$WORK/same.register.json" >&2
    wait_records "$MESHD_PORT" "svc-$((SERVICES - 1)).service.mesh" A "$INSTANCES"

    start_nsd "$WORK/mesh.zone" same
    wait_records "$NSD_PORT" "svc-$((SERVICES - 1)).service.mesh" A "$INSTANCES"
    log "nsd (pid $NSD_PID) serving dns 127.0.0.1:$NSD_PORT, server-count $NSD_SERVERS"

    log "comparing meshd's and NSD's answers for every name of the query file"
    python3 "$WORK/compare.py" "$WORK/same.queries" "meshd=$MESHD_PORT" "nsd=$NSD_PORT" \
        || die "meshd and NSD do not answer the same records (KEEP=1 keeps $WORK)"

    for round in $(seq 1 "$ROUNDS"); do
        order=(meshd nsd)
        ((round % 2 == 0)) && order=(nsd meshd)
        for t in "${order[@]}"; do
            if [[ $t == meshd ]]; then pids=$MESHD_PID port=$MESHD_PORT; else pids=$NSD_PID port=$NSD_PORT; fi
            log "same records: $t, udp, $CLIENTS clients, ${DURATION}s (round $round)"
            run_perf "{\"scenario\":\"same\",\"run\":\"max\",\"target\":\"$t\",\"mode\":\"udp\",\"clients\":$CLIENTS,\"round\":$round}" \
                "$pids" "$port" -d "$WORK/same.queries" -l "$DURATION" -c "$CLIENTS" \
                -T "$THREADS" -q "$OUTSTANDING"
            sleep 1
        done
    done
    if ((LAT_QPS > 0)); then
        for t in meshd nsd; do
            if [[ $t == meshd ]]; then pids=$MESHD_PID port=$MESHD_PORT; else pids=$NSD_PID port=$NSD_PORT; fi
            log "same records: $t, udp, latency at $LAT_QPS queries/s, ${LAT_DURATION}s"
            run_perf "{\"scenario\":\"same\",\"run\":\"latency\",\"target\":\"$t\",\"mode\":\"udp\",\"clients\":$CLIENTS,\"rate\":$LAT_QPS}" \
                "$pids" "$port" -d "$WORK/same.queries" -l "$LAT_DURATION" -c "$CLIENTS" \
                -T "$THREADS" -q "$OUTSTANDING" -Q "$LAT_QPS" -v
            sleep 1
        done
    fi
    stop_nsd
fi

# --- scenario "5,000 instances under churn" -----------------------------------------------
# SRV over TCP is measured with `dnschurn query` (one query in flight per TCP connection), not
# dnsperf: Debian's dnsperf 2.10 reads TCP answers into a 16 KiB buffer, so every answer
# larger than that (here 64 KB) times out in it. A over UDP (truncated to 512 bytes, TC set) is
# measured with dnsperf as above.
if [[ $SCENARIO == all || $SCENARIO == big ]]; then
    reset_big() {
        "${CLI_PIN[@]}" "$DNSCHURN" register --url "$MESHD_URL" --file "$WORK/big.regs.jsonl" \
            | tee -a "$WORK/big.register.json" >&2
    }
    log "registering $BIG instances of big on $BIG_NODES nodes"
    reset_big
    wait_records "$MESHD_PORT" big.service.mesh A 1
    srv_answers="$(dig @127.0.0.1 -p "$MESHD_PORT" +tcp +tries=1 +time=10 +noall +answer \
        _big._tcp.service.mesh SRV | grep -c SRV || true)"
    log "meshd's SRV answer over TCP: $srv_answers of $BIG records (cut at 65,535 bytes)"

    # start_churn NAME: all instances passing again, then health changes for DURATION seconds
    # in the background; end_churn NAME: its JSON line.
    CHURN_PID=""
    start_churn() {
        reset_big
        "${CLI_PIN[@]}" "$DNSCHURN" churn --url "$MESHD_URL" --file "$WORK/big.regs.jsonl" \
            --rate "$CHURN_RATE" --duration "$DURATION" --concurrency "$CHURN_CONCURRENCY" \
            >"$WORK/churn.$1.json" &
        CHURN_PID=$!
        PIDS+=("$CHURN_PID")
    }
    end_churn() {
        wait "$CHURN_PID" || die "the churn generator failed"
        python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); r.update({"scenario": "big", "run": sys.argv[2] + " (churn)"})
print(json.dumps(r))' "$WORK/churn.$1.json" "$1" | tee -a "$RESULTS"
    }
    # srv_tcp RUN TARGET PIDS PORT: SRV over TCP for DURATION seconds.
    srv_tcp() {
        python3 "$WORK/runq.py" \
            "{\"scenario\":\"big\",\"run\":\"$1\",\"target\":\"$2\",\"mode\":\"tcp\",\"clients\":$TCP_CLIENTS}" \
            "$3" "${CLI_PIN[@]}" "$DNSCHURN" query --server "127.0.0.1:$4" \
            --name _big._tcp.service.mesh --qtype SRV --connections "$TCP_CLIENTS" \
            --duration "$DURATION" | tee -a "$RESULTS"
    }
    # a_udp RUN CHURN: A over UDP with dnsperf for DURATION seconds.
    a_udp() {
        run_perf "{\"scenario\":\"big\",\"run\":\"$1\",\"target\":\"meshd\",\"mode\":\"udp\",\"clients\":$CLIENTS,\"churn_per_s\":$2}" \
            "$MESHD_PID" "$MESHD_PORT" -d "$WORK/big.a.queries" -l "$DURATION" -c "$CLIENTS" \
            -T "$THREADS" -q "$OUTSTANDING" -v
    }

    log "big: SRV over TCP, $TCP_CLIENTS connections, ${DURATION}s, no churn"
    srv_tcp srv-tcp meshd "$MESHD_PID" "$MESHD_PORT"
    sleep 1
    log "big: SRV over TCP, $TCP_CLIENTS connections, ${DURATION}s, $CHURN_RATE health changes/s"
    start_churn srv-tcp-churn
    srv_tcp srv-tcp-churn meshd "$MESHD_PID" "$MESHD_PORT"
    end_churn srv-tcp-churn
    sleep 1
    log "big: A over UDP, $CLIENTS clients, ${DURATION}s, no churn"
    reset_big
    a_udp a-udp 0
    sleep 1
    log "big: A over UDP, $CLIENTS clients, ${DURATION}s, $CHURN_RATE health changes/s"
    start_churn a-udp-churn
    a_udp a-udp-churn "$CHURN_RATE"
    end_churn a-udp-churn
    sleep 1

    # Reference: NSD answering a static SRV RRset as large as meshd's TCP answer (the first
    # $srv_answers instances). NSD answers an RRset that does not fit in 65,535 bytes with an
    # empty, truncated answer, so the full 5,000 would not compare.
    if ((srv_answers > 0)); then
        python3 -c 'import json, sys
sys.stdout.write(open(sys.argv[3]).read())
for line in list(open(sys.argv[1]))[: int(sys.argv[2])]:
    r = json.loads(line)
    a, p = r["Service"]["Address"], r["Service"]["Port"]
    h = "".join(f"{int(o):02x}" for o in a.split(".")) + ".addr.dc1.mesh."
    print(f"_big._tcp.service.mesh. 0 IN SRV 1 1 {p} {h}\n{h} 0 IN A {a}")' \
            "$WORK/big.regs.jsonl" "$srv_answers" "$WORK/mesh.zone" >"$WORK/big.zone"
        start_nsd "$WORK/big.zone" big
        wait_records "$NSD_PORT" _big._tcp.service.mesh SRV "$srv_answers"
        log "big: NSD (reference), SRV over TCP, $srv_answers records, $TCP_CLIENTS connections, ${DURATION}s"
        srv_tcp srv-tcp-nsd-same-size nsd "$NSD_PID" "$NSD_PORT"
        stop_nsd
    fi
fi

# --- summary ------------------------------------------------------------------------------
log "load after: $(uptime)"
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def f(x, d=2):
    return "-" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))
summary = {}
same = [r for r in rows if r.get("scenario") == "same" and "qps" in r]
if same:
    print("\n| run | server | QPS | avg ms | stddev ms | p50 ms | p99 ms | max ms | lost | response bytes | server CPU (cores) | CPU µs/query | dnsperf CPU |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in same:
        print(f"| {r['run']}{'' if r['run'] == 'max' else ' @' + str(r.get('rate'))} | {r['target']} | {r['qps']:.0f} | {f(r.get('avg_ms'), 3)} | {f(r.get('stddev_ms'), 3)} "
              f"| {f(r.get('p50_ms'), 3)} | {f(r.get('p99_ms'), 3)} | {f(r.get('max_ms'), 3)} | {r['lost']} | {f(r.get('resp_bytes'))} "
              f"| {f(r.get('server_cpu_cores'))} | {f(r.get('server_cpu_us_per_query'))} | {f(r.get('dnsperf_cpu_cores'))} |")
    def avg(t, k, run="max"):
        v = [r[k] for r in same if r["target"] == t and r["run"] == run and r.get(k) is not None]
        return sum(v) / len(v) if v else None
    m, n = avg("meshd", "qps"), avg("nsd", "qps")
    summary["same"] = {"meshd_qps": m and round(m, 1), "nsd_qps": n and round(n, 1),
                       "qps_ratio_meshd_nsd": round(m / n, 3) if m and n else None,
                       "meshd_avg_ms": avg("meshd", "avg_ms"), "nsd_avg_ms": avg("nsd", "avg_ms"),
                       "meshd_cpu_us_per_query": avg("meshd", "server_cpu_us_per_query"),
                       "nsd_cpu_us_per_query": avg("nsd", "server_cpu_us_per_query")}
    lm, ln = avg("meshd", "p99_ms", "latency"), avg("nsd", "p99_ms", "latency")
    if lm is not None and ln is not None:
        summary["same"].update({"latency_rate": next(r["rate"] for r in same if r["run"] == "latency"),
                                "meshd_p50_ms": avg("meshd", "p50_ms", "latency"), "meshd_p99_ms": lm,
                                "nsd_p50_ms": avg("nsd", "p50_ms", "latency"), "nsd_p99_ms": ln})
big = [r for r in rows if r.get("scenario") == "big"]
if big:
    print("\n| run | server | transport | QPS | avg ms | p50 ms | p99 ms | p99.9 ms | max ms | lost | answers | response bytes | server CPU (cores) | CPU µs/query |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in big:
        if "qps" not in r:
            continue
        lost = r.get("lost", r.get("timeouts", 0))
        print(f"| {r['run']} | {r['target']} | {r['mode']} | {r['qps']:.0f} | {f(r.get('avg_ms'), 3)} | {f(r.get('p50_ms'), 3)} | {f(r.get('p99_ms'), 3)} "
              f"| {f(r.get('p999_ms'), 3)} | {f(r.get('max_ms'), 3)} | {lost} | {f(r.get('answers_avg'), 0)} | {f(r.get('resp_bytes'))} "
              f"| {f(r.get('server_cpu_cores'))} | {f(r.get('server_cpu_us_per_query'), 0)} |")
    for r in big:
        if r.get("op") == "churn":
            print(f"\n{r['run']}: {r['acknowledged']} health changes acknowledged in {r['duration_s']} s "
                  f"({r['changes_per_s']}/s), {r['errors']} errors, {r['late']} late, "
                  f"{r['critical_at_end']}/{r['instances']} critical at the end, change p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    summary["big"] = {r["run"]: {k: r.get(k) for k in ("qps", "avg_ms", "p50_ms", "p99_ms", "max_ms", "lost", "timeouts", "answers_avg", "resp_bytes", "server_cpu_us_per_query", "changes_per_s", "errors")
                                 if r.get(k) is not None} for r in big}
errors = [r for r in rows if r.get("error") or r.get("errors")]
if errors:
    print(f"\nWARNING: {len(errors)} runs reported errors; see the JSON lines above.")
print()
print(json.dumps({"summary": summary}))
EOF

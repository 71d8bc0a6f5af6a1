#!/usr/bin/env bash
# The Debian package's meshd.service run by a real systemd, the way a host runs it.
#
#   tests/systemd/under_systemd.sh target/debian/meshd_<version>_<arch>.deb
#
# `systemd-analyze verify` checks the unit's syntax; only a service manager shows that the unit
# works: that `systemctl start` returns once meshd serves (Type=notify), that meshd runs as the
# meshd user with only CAP_NET_BIND_SERVICE (DNS on port 53), CAP_NET_ADMIN and CAP_BPF (the
# sk_lookup capture of virtual IPs, detached at stop and after a SIGKILL), that the sandbox
# (ProtectSystem=strict, the system call filter, MemoryDenyWriteExecute, ...) lets meshd serve
# the API, DNS and the proxy, that `systemctl reload` applies a new service file without
# dropping a proxied connection and refuses a broken one, that the watchdog fires when meshd
# stops answering, and that `systemctl stop`, a package upgrade and a removal stop it cleanly.
#
# How: systemd 252 boots as PID 1 of a throwaway container made of fresh namespaces (PID,
# mount, network, UTS, IPC, cgroup) and an overlay of / (every write goes to a temp dir; this
# machine's / and network are untouched); the package is installed into it with dpkg, and
# everything below runs inside it through nsenter. The container is killed and its cgroup and
# files removed on exit, also when a check fails. Needs root, util-linux (unshare, nsenter),
# systemd, curl, dig and python3 on this machine.
#
# Exit 0: every check passed, or (said on stdout) this kernel cannot host the container.
set -euo pipefail

deb=${1:?usage: $0 MESHD_DEB}
deb=$(realpath "$deb")
[[ -f "$deb" ]] || {
    echo "error: no package at $deb" >&2
    exit 1
}
if [[ $(id -u) -ne 0 ]]; then
    echo "skipped: needs root (namespaces, an overlay mount, a cgroup)"
    exit 0
fi

started=$SECONDS
step() { printf '  [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
    echo "error: $*" >&2
    if [[ -n "${pid1:-}" ]] && kill -0 "$pid1" 2>/dev/null; then
        echo "--- systemctl status meshd" >&2
        ct systemctl status meshd --no-pager -l >&2 || true
        echo "--- journalctl -u meshd (last 60 lines)" >&2
        ct journalctl -u meshd --no-pager -n 60 >&2 || true
    fi
    exit 1
}

# The container's cgroup: a child of ours on the cgroup v2 hierarchy, which becomes the root of
# its cgroup namespace (systemd then manages that subtree only).
cg2=$(findmnt -n -t cgroup2 -o TARGET | head -n 1 || true)
[[ -n "$cg2" ]] || {
    echo "skipped: no cgroup v2 hierarchy is mounted"
    exit 0
}
own=$(sed -n 's/^0:://p' /proc/self/cgroup)
work=$(mktemp -d /tmp/meshd-under-systemd.XXXXXX)
name=$(basename "$work")
cgroup="$cg2${own%/}/$name"
pid1=
cleanup() {
    set +e
    if [[ -n "$pid1" ]]; then
        kill -KILL "$pid1" 2>/dev/null
        # PID 1's death kills every process of its namespace; wait until the cgroup is empty.
        for _ in $(seq 200); do
            grep -qx 'populated 0' "$cgroup/cgroup.events" 2>/dev/null && break
            sleep 0.05
        done
    fi
    [[ -d "$cgroup" ]] && find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null
    [[ -d "$cgroup" ]] && echo "warning: could not remove the cgroup $cgroup" >&2
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/upper" "$work/ovl-work" "$work/root"
if ! mkdir "$cgroup" 2>/dev/null; then
    echo "skipped: cannot create the cgroup $cgroup"
    exit 0
fi

# Runs a command inside the container (its namespaces and root).
ct() { nsenter --target "$pid1" --mount --uts --ipc --net --pid --root --wd -- "$@"; }

# How many sk_lookup programs are attached to the container's network namespace
# (BPF_PROG_QUERY, as `bpftool net` would say).
programs() {
    ct python3 -c '
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": 321, "aarch64": 280}[os.uname().machine]  # bpf(2)
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
ids = (ctypes.c_uint32 * 64)()
# target_fd, attach_type BPF_SK_LOOKUP, query_flags, attach_flags, prog_ids, prog_cnt
attr = ctypes.create_string_buffer(
    struct.pack("=IIIIQI", fd, 36, 0, 0, ctypes.addressof(ids), 64) + bytes(36))
if libc.syscall(nr, 16, attr, ctypes.sizeof(attr)) != 0:  # BPF_PROG_QUERY
    sys.exit("BPF_PROG_QUERY: " + os.strerror(ctypes.get_errno()))
print(struct.unpack_from("=I", attr, 24)[0])'
}

# Runs a command every 0.1 s, for up to SECONDS, until its output matches the extended regex
# PATTERN; prints the last output (the caller checks it, so a timeout reports what was seen).
poll() { # seconds, pattern, command...
    local secs=$1 pattern=$2 out='' i
    shift 2
    for ((i = 0; i < secs * 10; i++)); do
        out=$("$@" 2>/dev/null || true)
        [[ "$out" =~ $pattern ]] && break
        sleep 0.1
    done
    printf '%s' "$out"
}

# --- the container --------------------------------------------------------------------------

# Runs as PID 1 of the new namespaces: the root file system, the package, then systemd.
cat >"$work/init.sh" <<'EOF_INIT'
set -euo pipefail
w=$1
r=$w/root
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$w/upper,workdir=$w/ovl-work" "$r"
mkdir -p "$r/.host"
# The overlay becomes the root: the container sees nothing of this machine's file systems.
cd "$r"
pivot_root . .host
cd /
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# In the cgroup namespace, this mount's root is the container's own cgroup.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --rbind /.host/dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
cp "/.host$w/meshd.deb" /root/meshd.deb
umount -l /.host
rmdir /.host
ip link set lo up
# A policy-rc.d that forbids service actions (Docker-built images have one that exits 101)
# would keep the maintainer scripts from restarting and stopping meshd: a host has none.
rm -f /usr/sbin/policy-rc.d
# A machine ID of its own (the journal refuses to share the host's).
tr -d - </proc/sys/kernel/random/uuid >/etc/machine-id
# No service manager runs yet: the maintainer scripts create the user and directories only.
dpkg -i /root/meshd.deb >/root/dpkg.log 2>&1 || { cat /root/dpkg.log; exit 1; }
# basic.target: the journal and sockets, none of this machine's own services (an nsd or
# haproxy installed for the benchmarks would start otherwise).
exec /usr/bin/env "container=$(basename "$w")" /lib/systemd/systemd --system \
    --unit=basic.target --log-target=null
EOF_INIT
cp "$deb" "$work/meshd.deb"

step "booting systemd in a container (namespaces, an overlay of /)"
# Into the container's cgroup first; then the namespaces; --fork: the child is PID 1.
# shellcheck disable=SC2016 # $$, $1 and $2 expand in the inner bash.
setsid bash -c 'echo $$ >"$1/cgroup.procs" && exec unshare --cgroup --pid --fork --mount \
    --net --uts --ipc -- bash "$2/init.sh" "$2"' _ "$cgroup" "$work" \
    </dev/null >"$work/boot.log" 2>&1 &
launcher=$!
# PID 1 of the container, as this machine sees it: the systemd with this run's marker.
find_pid1() {
    local f p
    for f in /proc/[0-9]*/environ; do
        p=${f#/proc/}
        p=${p%/environ}
        [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == systemd ]] || continue
        if tr '\0' '\n' <"$f" 2>/dev/null | grep -qxF "container=$name"; then
            echo "$p"
            return
        fi
    done
}
for _ in $(seq 200); do
    pid1=$(find_pid1)
    [[ -n "$pid1" ]] && break
    if ! kill -0 "$launcher" 2>/dev/null; then
        cat "$work/boot.log" 2>/dev/null
        echo "skipped: the container did not start (this kernel or sandbox cannot host it)"
        exit 0
    fi
    sleep 0.1
done
[[ -n "$pid1" ]] || fail "systemd did not start within 20 s: $(cat "$work/boot.log")"
state=$(poll 30 '^(running|degraded)$' ct systemctl is-system-running)
[[ "$state" == running || "$state" == degraded ]] ||
    fail "systemd in the container is '$state' after 30 s"
step "systemd $(ct systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 ($state); the package is installed"

# --- a one-server configuration -------------------------------------------------------------

# A CA and a server certificate (meshctl writes them in the current directory), readable by the
# meshd group through the package's tmpfiles rule; DNS on port 53 through the capability.
ct bash -euo pipefail -c '
    cd /etc/meshd
    meshctl tls ca create >/dev/null
    meshctl tls cert create --server --node s1 >/dev/null
    cat >meshd.toml <<EOF
node_name = "s1"
server = true
bootstrap_expect = 1
data_dir = "/var/lib/meshd"
config_dir = "/etc/meshd/services.d"
bind_addr = "127.0.0.1:8301"
dns_addr = "127.0.0.2:53"
ca_file = "/etc/meshd/mesh-agent-ca.pem"
ca_key_file = "/etc/meshd/mesh-agent-ca-key.pem"
cert_file = "/etc/meshd/dc1-server-mesh-0.pem"
key_file = "/etc/meshd/dc1-server-mesh-0-key.pem"
default_intention_policy = "allow"
drain_timeout = "5s"
EOF
    systemd-tmpfiles --create meshd.conf
    meshd validate --quiet /etc/meshd/meshd.toml
' || fail "cannot write a valid configuration"

# --- start: READY=1 means serving ---------------------------------------------------------

ct timeout 60 systemctl start meshd || fail "systemctl start meshd failed"
# systemctl start returns on READY=1: the API and DNS answer at the first try, no retry.
ct curl -sS --fail --max-time 2 -o /dev/null http://127.0.0.1:8500/v1/status/leader ||
    fail "the API does not answer right after 'systemctl start' returned"
answer=$(ct dig +time=2 +tries=1 +short @127.0.0.2 -p 53 s1.node.mesh A)
[[ "$answer" == 127.0.0.1 ]] || fail "DNS on 127.0.0.2:53 answered '$answer' for s1.node.mesh"
status=$(ct systemctl show meshd -p StatusText --value)
[[ "$status" == serving:* ]] || fail "the unit's status text is '$status'"
step "systemctl start returned with the API and DNS (port 53) answering; Status: $status"

# --- the sandbox ----------------------------------------------------------------------------

main=$(ct systemctl show meshd -p MainPID --value)
proc_status=$(ct cat "/proc/$main/status")
field() { awk -v k="$1:" '$1 == k {print $2}' <<<"$proc_status"; }
uid=$(ct id -u meshd)
[[ "$(field Uid)" == "$uid" ]] || fail "meshd runs as uid $(field Uid), not meshd ($uid)"
# CAP_NET_BIND_SERVICE (bit 10), CAP_NET_ADMIN (12) and CAP_BPF (39): the bounding, effective
# and ambient sets hold those three alone.
for set in CapBnd CapEff CapAmb; do
    [[ "$(field "$set")" == 0000008000001400 ]] ||
        fail "$set is $(field "$set"), expected CAP_NET_BIND_SERVICE, CAP_NET_ADMIN and CAP_BPF (0x8000001400)"
done
[[ "$(field NoNewPrivs)" == 1 ]] || fail "NoNewPrivs is $(field NoNewPrivs)"
[[ "$(field Seccomp)" == 2 ]] || fail "no system call filter (Seccomp: $(field Seccomp))"
# ProtectSystem=strict: in meshd's mount namespace /etc and /usr are read-only even for root;
# the state directory is meshd's.
for dir in /etc/meshd /usr/bin; do
    if ct nsenter --target "$main" --mount -- touch "$dir/.probe" 2>/dev/null; then
        fail "$dir is writable in meshd's sandbox"
    fi
done
owner=$(ct nsenter --target "$main" --mount --root -- stat -c %U /var/lib/meshd)
[[ "$owner" == meshd ]] || fail "/var/lib/meshd belongs to $owner"
step "meshd runs as meshd (uid $uid), capabilities: NET_BIND_SERVICE, NET_ADMIN, BPF only, no_new_privs, seccomp, read-only /etc and /usr"

# Virtual IPs are captured by one sk_lookup program (bpf(2) through the filter, CAP_BPF and
# CAP_NET_ADMIN as the meshd user), into one listener.
metrics() { ct curl -sS --max-time 2 http://127.0.0.1:8500/metrics; }
grep -qx 'meshd_proxy_capture{mode="sk_lookup"} 1' <<<"$(metrics)" ||
    fail "meshd does not capture with sk_lookup: $(metrics | grep -E 'capture|listeners')"
[[ "$(programs)" == 1 ]] || fail "$(programs) sk_lookup programs attached, expected meshd's one"
step "virtual IPs captured with sk_lookup: one program attached in the namespace"

# --- reload: a new service file, a proxied connection across it, a broken file -------------

# An echo server for the service, outside meshd (as an application would run).
ct setsid python3 -c '
import socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 9090), Echo).serve_forever()
' </dev/null >/dev/null 2>&1 &

write_def() { # file, JSON: a service definition, readable by the meshd group
    ct bash -c "cat >/etc/meshd/services.d/$1 && chgrp meshd /etc/meshd/services.d/$1 &&
        chmod 0640 /etc/meshd/services.d/$1" <<<"$2"
}
services() { ct curl -sS --max-time 2 http://127.0.0.1:8500/v1/agent/services; }
write_def echo.json '{"service": {"name": "echo", "port": 9090,
    "check": {"tcp": "127.0.0.1:9090", "interval": "1s"}}}'
ct systemctl reload meshd || fail "systemctl reload (echo.json added) failed"
passing_echo() { # how many instances of echo pass
    ct curl -sS --max-time 2 'http://127.0.0.1:8500/v1/health/service/echo?passing' |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'
}
passing=$(poll 10 '^1$' passing_echo)
[[ "$passing" == 1 ]] || fail "echo.json's service is not passing after the reload: $(services)"
vip=$(ct dig +short @127.0.0.2 -p 53 echo.virtual.mesh A)
[[ "$vip" == 127.100.* ]] || fail "echo.virtual.mesh is '$vip'"
step "reload registered echo.json (passing, virtual IP $vip)"

# One connection through the virtual IP, kept open while a reload adds a second service.
write_def db.json '{"service": {"name": "db", "port": 5432}}'
ct python3 - "$vip" <<'EOF_CONN' || fail "the proxied connection did not survive the reload"
import json, socket, subprocess, sys, time, urllib.request
def round_trip(s, what):
    s.sendall(what)
    got = b""
    while len(got) < len(what):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(f"the connection closed after {len(got)} of {len(what)} bytes")
        got += chunk
    if got != what:
        sys.exit("the echo differs")
s = socket.create_connection((sys.argv[1], 9090), timeout=10)
round_trip(s, b"before the reload" * 1000)
subprocess.run(["systemctl", "reload", "meshd"], check=True)
deadline = time.monotonic() + 10
while "db" not in json.load(urllib.request.urlopen("http://127.0.0.1:8500/v1/agent/services")):
    if time.monotonic() > deadline:
        sys.exit("db.json was not registered by the reload")
    time.sleep(0.05)
round_trip(s, b"after the reload" * 1000)
s.close()
EOF_CONN
step "a connection through the virtual IP kept working across a reload that added db.json"

# A broken file: ExecReload's `meshd validate` fails the reload, meshd keeps its services.
before=$(services)
write_def zz-broken.json '{"service": {"name": "x", "port": "eighty"}}'
if ct systemctl reload meshd 2>/dev/null; then
    fail "systemctl reload succeeded with a broken service file"
fi
[[ "$(ct systemctl is-active meshd)" == active ]] || fail "meshd is not active after the refused reload"
[[ "$(services)" == "$before" ]] || fail "the refused reload changed the services: $(services)"
ct journalctl -u meshd --no-pager | grep -q 'zz-broken.json.*Port' ||
    fail "the journal does not name zz-broken.json and its key"
ct rm /etc/meshd/services.d/zz-broken.json
step "a reload with a broken file failed, named the file and key, and changed nothing"

# --- stop: exit 0 ----------------------------------------------------------------------------

ct timeout 60 systemctl stop meshd || fail "systemctl stop meshd failed"
result=$(ct systemctl show meshd -p Result --value)
code=$(ct systemctl show meshd -p ExecMainStatus --value)
[[ "$result" == success && "$code" == 0 ]] || fail "stop: Result=$result ExecMainStatus=$code"
ct journalctl -u meshd --no-pager | grep -q 'meshd::agent: stopped' ||
    fail "meshd did not log its clean stop"
[[ "$(programs)" == 0 ]] || fail "$(programs) sk_lookup programs left attached after the stop"
step "systemctl stop: meshd exited 0 (Result=success); no sk_lookup program left attached"

# --- a crash: nothing is left attached, and the restart attaches one program again ---------

ct timeout 60 systemctl start meshd || fail "systemctl start meshd (before the crash) failed"
old=$(ct systemctl show meshd -p MainPID --value)
ct systemctl kill -s SIGKILL meshd
# Restart=on-failure waits RestartSec=5s: meanwhile nothing may be attached.
left=$(poll 4 '^0$' programs)
[[ "$left" == 0 ]] || fail "$left sk_lookup programs attached after meshd was SIGKILLed"
restarted() { # the new MainPID, once the restarted meshd is active
    local pid
    pid=$(ct systemctl show meshd -p MainPID --value)
    [[ "$(ct systemctl is-active meshd)" == active && "$pid" != "$old" && "$pid" != 0 ]] &&
        echo "$pid"
}
new=$(poll 30 '^[0-9]+$' restarted)
[[ -n "$new" ]] || fail "Restart= did not bring meshd back after the SIGKILL"
[[ "$(programs)" == 1 ]] || fail "$(programs) sk_lookup programs attached after the restart"
echo_once() {
    ct python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], 9090), timeout=2)
s.sendall(b"again")
print(s.recv(16).decode())' "$vip"
}
[[ "$(poll 10 '^again$' echo_once)" == again ]] ||
    fail "the virtual IP $vip does not answer after the restart"
ct timeout 60 systemctl stop meshd || fail "systemctl stop meshd (after the crash) failed"
step "SIGKILL: no program left attached; the restart (pid $old -> $new) attached one, $vip echoes"

# --- the watchdog: a meshd that stops answering is aborted ---------------------------------

ct mkdir -p /run/systemd/system/meshd.service.d
ct tee /run/systemd/system/meshd.service.d/watchdog.conf >/dev/null <<'EOF_DROPIN'
[Service]
WatchdogSec=2s
TimeoutAbortSec=2s
Restart=no
EOF_DROPIN
ct systemctl daemon-reload
ct timeout 60 systemctl start meshd || fail "systemctl start meshd (WatchdogSec=2s) failed"
sleep 3 # one and a half intervals: the pings keep it alive
[[ "$(ct systemctl is-active meshd)" == active ]] ||
    fail "meshd did not survive 3 s of a 2 s watchdog: $(ct systemctl show meshd -p Result --value)"
main=$(ct systemctl show meshd -p MainPID --value)
ct kill -STOP "$main"
result=$(poll 15 '^watchdog$' ct systemctl show meshd -p Result --value)
[[ "$result" == watchdog ]] || fail "a stopped meshd was not caught by the watchdog (Result=$result)"
ct rm /run/systemd/system/meshd.service.d/watchdog.conf
ct systemctl daemon-reload
ct systemctl reset-failed meshd
step "WatchdogSec=2s: alive while pinging; SIGSTOPped, systemd aborted it (Result=watchdog)"

# --- the package's upgrade restarts a running meshd; its removal stops it ------------------

ct timeout 60 systemctl start meshd || fail "systemctl start meshd (before the upgrade) failed"
old=$(ct systemctl show meshd -p MainPID --value)
ct dpkg -i /root/meshd.deb >"$work/upgrade.log" 2>&1 || fail "reinstalling: $(cat "$work/upgrade.log")"
new=$(ct systemctl show meshd -p MainPID --value)
[[ "$(ct systemctl is-active meshd)" == active && "$new" != "$old" && "$new" != 0 ]] ||
    fail "the upgrade did not restart meshd (MainPID $old -> $new)"
ct dpkg -r meshd >"$work/remove.log" 2>&1 || fail "dpkg -r: $(cat "$work/remove.log")"
[[ "$(ct systemctl is-active meshd || true)" != active ]] || fail "dpkg -r left meshd running"
step "dpkg -i over itself restarted meshd (pid $old -> $new); dpkg -r stopped it"

echo "meshd.service under systemd: every check passed in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Long mode of the linearizability check (issue 14): LIN_RUNS runs of LIN_SECONDS each of the
# Jepsen-style run in tests/src/linrun.rs (three servers in network namespaces, four clients
# each sending every request to a random server, half PUT and half `?consistent` GET over three
# keys, values unique to the run), with faults back to back (1.5 s apart, at least one per
# 7.5 s of the run) cycling through every kind in tests/src/nemesis.rs: SIGKILL of the leader
# (held, or restarted at once) and of a follower, SIGSTOP of the leader past the followers'
# lease and election timeout and of a follower, a link cut, asymmetric partitions (leader
# mute, leader deaf), a split of the leader from one follower, a follower restarted from its
# snapshot, and every server SIGKILLed at once. Each history is checked by
# tests/src/lincheck.rs.
#
# Usage: tests/bench/linearizability.sh          (needs root: network namespaces)
# Env:   LIN_RUNS=10         runs
#        LIN_SECONDS=300     seconds of load per run (and at least seconds/7.5 faults)
#        LIN_SEED=...        seed of the first run (run k uses seed+k); default: the time
#        PROFILE=release     the meshd build the servers run (release or dev)
#        LINCHECK_ARTIFACTS  where a failing run leaves history.jsonl, faults.json,
#                            violation.txt and the servers' logs (default target/lincheck)
#        LINCHECK_SAVE=always  also keep the history of runs that pass
# Stops at the first run that is not linearizable (exit status 1, the artifacts' path printed).
# Prints one JSON line per run, then the totals. The binaries are copied first, so a rebuild
# while it runs changes nothing. Not run by CI (the CI run is the 60 s test
# `kv_is_linearizable_under_faults` in tests/tests/linearizability.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

runs=${LIN_RUNS:-10}
seconds=${LIN_SECONDS:-300}
profile=${PROFILE:-release}

cargo build --profile "$profile" -p meshd -p meshctl
dir=target/$([[ "$profile" == dev ]] && echo debug || echo "$profile")
test_bin=$(cargo test -p tests --test linearizability --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "linearizability" and m.get("executable"):
        print(m["executable"])')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$dir/meshd" "$dir/meshctl" "$work/"
cp "$test_bin" "$work/linearizability"
log=target/lincheck-soak-$(date -u +%Y%m%dT%H%M%SZ).log
mkdir -p target
echo "meshd: $dir/meshd ($profile); $runs runs of $seconds s; log: $log"

status=0
MESHD_BIN="$work/meshd" LIN_RUNS="$runs" LIN_SECONDS="$seconds" \
    "$work/linearizability" --ignored --exact soak --nocapture 2>&1 | tee "$log" || status=$?

python3 - "$log" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"seed"')]
total = lambda k: sum(r[k] for r in runs)
faults = {}
for r in runs:
    for f in r["faults"]:
        faults[f["fault"]] = faults.get(f["fault"], 0) + 1
print(json.dumps({
    "runs": len(runs),
    "linearizable_runs": sum(1 for r in runs if r["check"]["violation"] is None and r["check"]["inconclusive"] is None),
    "ops": total("ops"), "reads_ok": total("reads_ok"), "writes_ok": total("writes_ok"),
    "writes_unknown": total("writes_unknown"), "reads_failed": total("reads_failed"),
    "faults": sum(len(r["faults"]) for r in runs),
    "min_faults_per_run": min((len(r["faults"]) for r in runs), default=0),
    "faults_by_kind": faults,
    "leaderships": total("leaderships"), "snapshot_loads": total("snapshot_loads"), "snapshot_installs": total("snapshot_installs"),
    "seconds": round(total("seconds")), "check_ms_max": max((r["check_ms"] for r in runs), default=0),
}))
PY
exit "$status"

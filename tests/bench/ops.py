#!/usr/bin/env python3
"""Operations benchmark: how long meshd takes to become ready, to reload and to validate, with
N service definition files (each a service with a TTL check), measured through systemd's own
protocol: the script listens on a NOTIFY_SOCKET, as systemd does, and times READY=1 from the
spawn and from a SIGHUP.

Run from the repository root (builds the release meshd first):

    python3 tests/bench/ops.py                 # N = 0 100 1000 5000, 3 rounds each
    SERVICES="0 1000" ROUNDS=5 python3 tests/bench/ops.py

Prints one JSON object per N (medians over the rounds) and a table. No peer is run: Consul is
not packaged for Debian, and nothing else speaks this protocol for the same job.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESHD = os.environ.get("MESHD") or os.path.join(ROOT, "target", "release", "meshd")  # MESHD=path: another build
TIMEOUT = 120.0


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "meshd"], cwd=ROOT, check=True)


def write_definitions(directory, n):
    for i in range(n):
        with open(os.path.join(directory, f"svc-{i:05}.json"), "w") as f:
            json.dump(
                {"service": {"name": f"svc-{i % 500}", "id": f"svc-{i}", "port": 10000 + i % 50000,
                             "tags": ["bench"], "check": {"ttl": "10m"}}},
                f,
            )


class Notify:
    """A NOTIFY_SOCKET: datagrams with their arrival time."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path

    def until(self, line):
        deadline = time.monotonic() + TIMEOUT
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            msg = self.sock.recv(4096).decode()
            if line in msg.splitlines():
                return time.monotonic()

    def close(self):
        self.sock.close()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one_round(n):
    with tempfile.TemporaryDirectory(prefix="meshd-ops-bench-") as tmp:
        defs = os.path.join(tmp, "services.d")
        os.mkdir(defs)
        write_definitions(defs, n)

        validate_s = 0.0
        if n > 0:  # an empty directory is an error for validate
            t = time.monotonic()
            subprocess.run([MESHD, "validate", "--quiet", defs], check=True)
            validate_s = time.monotonic() - t

        notify = Notify(os.path.join(tmp, "notify.sock"))
        env = dict(os.environ, NOTIFY_SOCKET=notify.path)
        args = [MESHD, "agent", "--dev", "--node", "bench", "--data-dir", os.path.join(tmp, "data"),
                "--config-dir", defs, "--http-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0",
                "--bind", "127.0.0.1:0", "--log-level", "warn"]
        start = time.monotonic()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready_s = notify.until("READY=1") - start
            rss = rss_mib(proc.pid)

            t = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            notify.until("RELOADING=1")
            reload_same_s = notify.until("READY=1") - t

            write_definitions_extra = os.path.join(defs, "zz-new.json")
            with open(write_definitions_extra, "w") as f:
                json.dump({"service": {"name": "new", "port": 1}}, f)
            t = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            notify.until("RELOADING=1")
            reload_add_s = notify.until("READY=1") - t

            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            notify.until("STOPPING=1")
            code = proc.wait(timeout=TIMEOUT)
            stop_s = time.monotonic() - t
            if code != 0:
                raise SystemExit(f"meshd exited {code} after SIGTERM")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            notify.close()
    return {"validate_ms": validate_s * 1e3, "ready_ms": ready_s * 1e3,
            "reload_unchanged_ms": reload_same_s * 1e3, "reload_one_added_ms": reload_add_s * 1e3,
            "stop_ms": stop_s * 1e3, "rss_ready_mib": rss}


def main():
    services = [int(x) for x in os.environ.get("SERVICES", "0 100 1000 5000").split()]
    rounds = int(os.environ.get("ROUNDS", "3"))
    build()
    results = []
    for n in services:
        runs = [one_round(n) for _ in range(rounds)]
        med = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
        row = {"bench": "ops", "services": n, "rounds": rounds, **med}
        print(json.dumps(row), flush=True)
        results.append(row)
    cols = ["services", "validate_ms", "ready_ms", "reload_unchanged_ms", "reload_one_added_ms",
            "stop_ms", "rss_ready_mib"]
    print("\n| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    sys.exit(main())

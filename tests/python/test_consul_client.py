"""meshd against a real Consul client library: py-consul (PyPI `py-consul`, `import consul`).

Starts `meshd agent --dev` on a free port with a temp data dir (binary: $MESHD_BIN, else
<workspace>/target/debug/meshd; build it with `cargo build -p meshd`), then registers, lists,
reads health and uses KV through the client exactly as an application would.

Run: pip install py-consul pytest && python -m pytest tests/python -q
"""

from __future__ import annotations

import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

import consul
import pytest

SERVING_PREFIX = "==> meshd serving:"
START_TIMEOUT_S = 30
WORKSPACE = pathlib.Path(__file__).resolve().parents[2]


def meshd_bin() -> pathlib.Path:
    env = os.environ.get("MESHD_BIN")
    candidates = [pathlib.Path(env)] if env else []
    if not env:
        target = os.environ.get("CARGO_TARGET_DIR")
        if target:
            t = pathlib.Path(target)
            candidates.append((t if t.is_absolute() else WORKSPACE / t) / "debug" / "meshd")
        candidates.append(WORKSPACE / "target" / "debug" / "meshd")
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail(
        f"meshd binary not found (looked at {[str(c) for c in candidates]}); "
        "build it with `cargo build -p meshd` or set MESHD_BIN"
    )


class Meshd:
    """One `meshd agent --dev` process; stderr goes to a log file shown on failure."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="meshd-py-")
        self.log_path = os.path.join(self.dir, "meshd.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(meshd_bin()),
                "agent",
                "--dev",
                "--node",
                "py-node",
                "--http-addr",
                "127.0.0.1:0",
                "--data-dir",
                os.path.join(self.dir, "data"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                lines.put(raw.decode(errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        self.fields: dict[str, str] = {}
        while not self.fields:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"meshd did not serve within {START_TIMEOUT_S}s")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._fail(f"meshd exited ({self.proc.wait()}) before serving")
            if line.startswith(SERVING_PREFIX):
                for word in line[len(SERVING_PREFIX) :].split():
                    k, _, v = word.partition("=")
                    self.fields[k] = v
        url = self.fields["http"].removeprefix("http://").rstrip("/")
        host, _, port = url.rpartition(":")
        self.host, self.port = host, int(port)
        self.base = f"http://{host}:{port}"

    def _fail(self, why: str) -> None:
        self.stop()
        log = self.read_log()
        self.cleanup()
        raise RuntimeError(f"{why}\n---- meshd log ----\n{log}")

    def read_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-32768:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=10) as r:
            text = r.read().decode()
        total, found = 0.0, False
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            series = line.split("{", 1)[0].split(" ", 1)[0]
            if series == name:
                found = True
                total += float(line.rsplit(" ", 1)[-1])
        return total if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(what: str, cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.02
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


@pytest.fixture(scope="module")
def meshd(request):
    m = Meshd()
    yield m
    m.stop()
    if getattr(request.session, "meshd_failed", False):
        # Written to the terminal, not captured: the log explains the failure above.
        os.write(2, f"---- meshd log ----\n{m.read_log()}\n---- end of meshd log ----\n".encode())
    m.cleanup()


@pytest.fixture()
def c(meshd) -> consul.Consul:
    return consul.Consul(host=meshd.host, port=meshd.port)


def test_agent_self(c):
    me = c.agent.self()
    assert me["Config"]["NodeName"] == "py-node"
    assert me["Config"]["Datacenter"] == "dc1"


def test_register_list_health(c):
    assert c.agent.service.register(
        "py-web",
        service_id="py-web-1",
        address="127.0.0.1",
        port=8081,
        tags=["blue", "v2"],
        meta={"owner": "py"},
        weights={"Passing": 5, "Warning": 1},
        check=consul.Check.ttl("30s"),
    )
    services = c.agent.services()
    s = services["py-web-1"]
    assert s["Service"] == "py-web"
    assert s["Tags"] == ["blue", "v2"]
    assert s["Meta"] == {"owner": "py"}
    assert s["Port"] == 8081
    assert s["Address"] == "127.0.0.1"
    assert s["Weights"] == {"Passing": 5, "Warning": 1}

    index, catalog = c.catalog.services()
    assert int(index) >= 1
    assert sorted(catalog["py-web"]) == ["blue", "v2"]

    index, nodes = c.catalog.service("py-web")
    assert int(index) >= 1
    assert len(nodes) == 1
    assert nodes[0]["ServiceID"] == "py-web-1"
    assert nodes[0]["ServicePort"] == 8081
    assert nodes[0]["Node"] == "py-node"

    # The TTL check starts critical; pass it through the client.
    checks = c.agent.checks()
    ttl_ids = [cid for cid, chk in checks.items() if chk.get("ServiceID") == "py-web-1"]
    assert len(ttl_ids) == 1, checks
    assert c.agent.check.ttl_pass(ttl_ids[0], "ok from python")

    def passing():
        _, entries = c.health.service("py-web", passing=True)
        return len(entries) == 1

    wait_until("py-web is passing", passing)
    _, entries = c.health.service("py-web", passing=True)
    e = entries[0]
    assert e["Service"]["ID"] == "py-web-1"
    assert e["Node"]["Node"] == "py-node"
    assert any(ch["Status"] == "passing" and ch["ServiceID"] == "py-web-1" for ch in e["Checks"])

    _, tagged = c.health.service("py-web", tag="blue")
    assert len(tagged) == 1
    _, none = c.health.service("py-web", tag="red")
    assert none == []

    assert c.agent.service.deregister("py-web-1")
    _, nodes = c.catalog.service("py-web")
    assert nodes == []


def test_kv_put_get_cas_recurse_delete(c):
    assert c.kv.put("py/a", "alpha")
    assert c.kv.put("py/b", b"\x00\x01binary", flags=9)
    index, item = c.kv.get("py/a")
    assert int(index) >= 1
    assert item["Value"] == b"alpha"
    modify = item["ModifyIndex"]

    _, b = c.kv.get("py/b")
    assert b["Value"] == b"\x00\x01binary"
    assert b["Flags"] == 9

    # cas: create-only, right index, wrong index.
    assert c.kv.put("py/lock", "1", cas=0) is True
    assert c.kv.put("py/lock", "2", cas=0) is False
    assert c.kv.put("py/a", "alpha2", cas=modify) is True
    assert c.kv.put("py/a", "alpha3", cas=modify) is False
    _, item = c.kv.get("py/a")
    assert item["Value"] == b"alpha2"

    _, items = c.kv.get("py/", recurse=True)
    assert [i["Key"] for i in items] == ["py/a", "py/b", "py/lock"]
    _, keys = c.kv.get("py/", keys=True)
    assert keys == ["py/a", "py/b", "py/lock"]

    # A missing key is (index, None), and the index is there (py-consul raises without it).
    index, missing = c.kv.get("py/missing")
    assert missing is None
    assert int(index) >= 1

    assert c.kv.delete("py/b")
    assert c.kv.get("py/b")[1] is None
    assert c.kv.delete("py/", recurse=True)
    assert c.kv.get("py/", recurse=True)[1] is None


def test_blocking_query(c, meshd):
    assert c.kv.put("py-watch/key", "v1")
    index, _ = c.kv.get("py-watch/key")
    baseline = meshd.metric("meshd_api_blocking_queries") or 0.0
    result: dict[str, object] = {}

    def watch():
        t = time.monotonic()
        result["index"], result["item"] = c.kv.get("py-watch/key", index=index, wait="30s")
        result["returned"] = time.monotonic()
        result["took"] = result["returned"] - t

    th = threading.Thread(target=watch)
    th.start()
    wait_until(
        "the blocking query is parked in meshd",
        lambda: (meshd.metric("meshd_api_blocking_queries") or 0.0) >= baseline + 1,
    )
    assert th.is_alive(), "the blocking query returned before the change"
    assert c.kv.put("py-watch/key", "v2")
    written = time.monotonic()
    th.join(timeout=30)
    assert not th.is_alive(), "the blocking query did not return after the change"
    assert int(result["index"]) > int(index)
    assert result["item"]["Value"] == b"v2"
    assert result["returned"] - written < 1.0

    # Health blocking on a service: woken by its own change.
    assert c.agent.service.register("py-block", service_id="py-block-1", port=1)
    index, _ = c.health.service("py-block")
    done: dict[str, object] = {}

    def watch_health():
        done["index"], done["nodes"] = c.health.service("py-block", index=index, wait="30s")

    th = threading.Thread(target=watch_health)
    th.start()
    wait_until(
        "the health query is parked",
        lambda: (meshd.metric("meshd_api_blocking_queries") or 0.0) >= baseline + 1,
    )
    assert c.agent.service.register("py-block", service_id="py-block-1", port=2)
    th.join(timeout=30)
    assert not th.is_alive()
    assert int(done["index"]) > int(index)
    assert done["nodes"][0]["Service"]["Port"] == 2

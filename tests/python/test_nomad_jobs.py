"""The Nomad job specs in nomad/: parsed with python-hcl2 (PyPI `python-hcl2`, `import hcl2`;
written against 8.1.4), checked field by field, and the meshd configuration that the system
job's template renders is checked against meshd itself.

The template's Go-template expressions (`{{ env "..." }}`, `{{ with nomadVar ... }}`) and HCL
interpolations (`${var.x}`) are replaced with sample values (SAMPLE_TEMPLATE_VALUES below); the
result must be TOML whose keys are FileConfig's (meshd/src/config.rs) and, when a meshd binary
is at hand ($MESHD_BIN, else <workspace>/target/debug/meshd) with the `validate` subcommand,
that `meshd validate` accepts.

python-hcl2's output shape varies with its version (blocks wrapped in lists, string values
and block labels with their quotes kept, heredocs kept raw, `__is_block__` markers): the
helpers below normalise all of these.

Run: pip install python-hcl2 pytest && python -m pytest tests/python/test_nomad_jobs.py -q
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import textwrap
import tomllib

import hcl2
import pytest

WORKSPACE = pathlib.Path(__file__).resolve().parents[2]
NOMAD_DIR = WORKSPACE / "nomad"
MESHD_JOB = NOMAD_DIR / "meshd.nomad.hcl"
APP_JOB = NOMAD_DIR / "example-app.nomad.hcl"
CONFIG_RS = WORKSPACE / "meshd" / "src" / "config.rs"
CLI_RS = WORKSPACE / "meshd" / "src" / "cli.rs"

# The Go-template expressions the meshd job's templates use, each with a sample value. An
# expression missing here fails the rendering test: add it with a value meshd would accept.
SAMPLE_TEMPLATE_VALUES = {
    'env "node.unique.name"': "nomad-client-1",
    'env "node.unique.id"': "5d4d9f1a-2c1e-4b7e-9a43-0c1f3b9e2d11",
    'env "attr.unique.network.ip-address"': "10.0.1.7",
    'env "NOMAD_PORT_http"': "8500",
    'env "NOMAD_PORT_dns"': "8600",
    'env "NOMAD_PORT_quic"': "8301",
    'env "NOMAD_TASK_DIR"': "/local",
    'with nomadVar "nomad/jobs/meshd"': "",
    "end": "",
    ".join_token": "sample-join-token-0123456789abcdef",
    ".ca_pem": "-----BEGIN CERTIFICATE-----\nsample\n-----END CERTIFICATE-----",
}

# Nomad's runtime interpolation of task paths, as seen from inside the exec driver's chroot
# (where the templates' destinations are relative to the task dir).
TASK_DIR_VARS = {
    "NOMAD_TASK_DIR": "local",
    "NOMAD_SECRETS_DIR": "secrets",
    "NOMAD_ALLOC_DIR": "alloc",
}


# ---------------------------------------------------------------- python-hcl2 normalisation


def _unquote(s: str) -> str:
    """`"text"` -> `text` (python-hcl2 >= 5 keeps the quotes), undoing \\" and \\\\."""
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        inner = s[1:-1]
        return re.sub(r'\\(["\\])', r"\1", inner)
    return s


_HEREDOC = re.compile(r"\A<<(-?)([A-Za-z_][A-Za-z0-9_]*)\n(.*?)\n?[ \t]*\2[ \t]*\Z", re.S)


def _heredoc(s: str) -> str:
    """A heredoc kept raw (`<<-EOT\\n...\\nEOT`) -> its text; `<<-` strips the common
    indentation, as HCL does."""
    m = _HEREDOC.match(s)
    if not m:
        return s
    indented, body = m.group(1) == "-", m.group(3) + "\n"
    return textwrap.dedent(body) if indented else body


def norm(v):
    """Plain Python values: metadata keys (`__is_block__`, `__comments__`, ...) dropped, keys and
    strings unquoted, heredocs resolved."""
    if isinstance(v, dict):
        return {_unquote(k): norm(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, str):
        return _heredoc(_unquote(v))
    return v


def load(path: pathlib.Path) -> dict:
    with open(path) as f:
        return norm(hcl2.load(f))


def blocks(node: dict, kind: str) -> list[dict]:
    """The bodies of the unlabeled blocks `kind` in `node` (a block may be a dict or a list)."""
    found = node.get(kind, [])
    return found if isinstance(found, list) else [found]


def block(node: dict, kind: str) -> dict:
    found = blocks(node, kind)
    assert len(found) == 1, f"expected one {kind} block, found {len(found)}"
    return found[0]


def labeled(node: dict, kind: str) -> dict[str, dict]:
    """The labeled blocks `kind "label" { ... }` in `node`: label -> body."""
    out: dict[str, dict] = {}
    for b in blocks(node, kind):
        for label, body in b.items():
            assert label not in out, f"two {kind} blocks labeled {label!r}"
            out[label] = body
    return out


def only(node: dict, kind: str) -> tuple[str, dict]:
    found = labeled(node, kind)
    assert len(found) == 1, f"expected one {kind} block, found {sorted(found)}"
    return next(iter(found.items()))


def go_duration(s: str) -> float:
    """Seconds of a Go duration such as `15s`, `1m30s` or `500ms`."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", s)
    assert parts and "".join(n + u for n, u in parts) == s, f"not a Go duration: {s!r}"
    return sum(float(n) * units[u] for n, u in parts)


def interpolate_task_dirs(s: str) -> str:
    return re.sub(r"\$\{(NOMAD_[A-Z_]+)\}", lambda m: TASK_DIR_VARS[m.group(1)], s)


# ---------------------------------------------------------------- meshd's own sources


def file_config_keys() -> set[str]:
    """The field names of `pub struct FileConfig` in meshd/src/config.rs: the TOML keys."""
    text = CONFIG_RS.read_text()
    m = re.search(r"pub struct FileConfig \{(.*?)\n\}", text, re.S)
    assert m, "FileConfig not found in config.rs"
    keys = set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))
    assert {"node_name", "data_dir", "retry_join", "join_token"} <= keys, keys
    return keys


def agent_flags() -> set[str]:
    """The long flags of `meshd agent` (AgentArgs in meshd/src/cli.rs)."""
    text = CLI_RS.read_text()
    m = re.search(r"pub struct AgentArgs \{(.*?)\n\}", text, re.S)
    assert m, "AgentArgs not found in cli.rs"
    flags = set()
    for attr, field in re.findall(r"#\[arg\((.*?)\)\]\s*pub (\w+):", m.group(1), re.S):
        named = re.search(r'long\s*=\s*"([^"]+)"', attr)
        if named:
            flags.add(named.group(1))
        elif re.search(r"\blong\b", attr):
            flags.add(field.replace("_", "-"))
    assert {"config", "config-dir", "data-dir"} <= flags, flags
    return flags


def meshd_bin() -> pathlib.Path | None:
    env = os.environ.get("MESHD_BIN")
    if env:
        return pathlib.Path(env) if pathlib.Path(env).is_file() else None
    candidates = []
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        t = pathlib.Path(target)
        candidates.append((t if t.is_absolute() else WORKSPACE / t) / "debug" / "meshd")
    candidates.append(WORKSPACE / "target" / "debug" / "meshd")
    return next((c for c in candidates if c.is_file()), None)


# ---------------------------------------------------------------- the meshd job


@pytest.fixture(scope="module")
def meshd_spec() -> dict:
    return load(MESHD_JOB)


@pytest.fixture(scope="module")
def meshd_job(meshd_spec) -> dict:
    name, job = only(meshd_spec, "job")
    assert name == "meshd"
    return job


@pytest.fixture(scope="module")
def meshd_group(meshd_job) -> dict:
    return only(meshd_job, "group")[1]


@pytest.fixture(scope="module")
def meshd_task(meshd_group) -> dict:
    return only(meshd_group, "task")[1]


def config_template(task: dict) -> dict:
    """The template that renders the file given to `--config`."""
    args = block(task, "config")["args"]
    path = interpolate_task_dirs(args[args.index("--config") + 1])
    matching = [t for t in blocks(task, "template") if t.get("destination") == path]
    assert len(matching) == 1, f"no template renders --config {path!r}"
    return matching[0]


def hcl_variable_defaults(spec: dict) -> dict:
    return {name: body.get("default") for name, body in labeled(spec, "variable").items()}


def render(data: str, variables: dict) -> str:
    """The template's text with HCL interpolations (done by `nomad job run`) and Go-template
    actions (done on the client) replaced by sample values."""

    def hcl(m: re.Match) -> str:
        expr = m.group(1).strip()
        fn = re.fullmatch(r"jsonencode\(var\.(\w+)\)", expr)
        if fn:
            return json.dumps(variables[fn.group(1)])
        ref = re.fullmatch(r"var\.(\w+)", expr)
        assert ref, f"unexpected HCL interpolation ${{{expr}}} in the template"
        return str(variables[ref.group(1)])

    text = re.sub(r"(?<!\$)\$\{([^}]*)\}", hcl, data).replace("$${", "${")
    assert "%{" not in text, "HCL template directives are not handled here"

    unknown = []

    def action(m: re.Match) -> str:
        expr = m.group(1).strip()
        if expr not in SAMPLE_TEMPLATE_VALUES:
            unknown.append(expr)
            return ""
        return SAMPLE_TEMPLATE_VALUES[expr]

    text = re.sub(r"\{\{-?\s*(.*?)\s*-?\}\}", action, text)
    assert not unknown, f"template expressions without a sample value: {unknown}"
    return text


@pytest.fixture(scope="module")
def rendered_config(meshd_spec, meshd_task) -> str:
    data = config_template(meshd_task)["data"]
    return render(data, hcl_variable_defaults(meshd_spec))


def test_meshd_job_is_a_system_job(meshd_job):
    assert meshd_job["type"] == "system"
    assert meshd_job.get("datacenters"), "datacenters must be set (\"*\": all)"


def test_meshd_task_runs_the_packaged_binary_as_agent(meshd_task):
    assert meshd_task["driver"] in ("exec", "raw_exec")
    config = block(meshd_task, "config")
    assert config["command"] == "/usr/bin/meshd"
    args = config["args"]
    assert args[:2] == ["agent", "--config"], args
    known = agent_flags()
    for a in args[1:]:
        if a.startswith("--"):
            assert a[2:].split("=")[0] in known, f"meshd agent has no flag {a}"
    assert "--config-dir" in args


def test_meshd_uses_host_networking_with_static_ports(meshd_group):
    network = block(meshd_group, "network")
    assert network["mode"] == "host"
    ports = {label: body.get("static") for label, body in labeled(network, "port").items()}
    assert ports == {"http": 8500, "dns": 8600, "quic": 8301}


def test_meshd_data_dir_is_on_the_host_volume(meshd_group, meshd_task, rendered_config):
    volumes = labeled(meshd_group, "volume")
    mounts = blocks(meshd_task, "volume_mount")
    assert len(mounts) == 1
    mount = mounts[0]
    volume = volumes[mount["volume"]]
    assert volume["type"] == "host"
    assert volume["source"] == "meshd-data"
    assert volume.get("read_only", False) is False
    assert mount.get("read_only", False) is False
    assert tomllib.loads(rendered_config)["data_dir"] == mount["destination"]


def test_meshd_restart_policy_keeps_retrying(meshd_group):
    restart = block(meshd_group, "restart")
    assert restart["mode"] == "delay"
    assert restart["attempts"] > 0
    assert go_duration(restart["delay"]) > 0
    assert go_duration(restart["interval"]) > go_duration(restart["delay"])


def test_meshd_is_stopped_with_sigterm_after_draining(meshd_task, rendered_config):
    assert meshd_task["kill_signal"] == "SIGTERM"
    drain = go_duration(tomllib.loads(rendered_config)["drain_timeout"])
    kill = go_duration(meshd_task["kill_timeout"])
    assert drain == 15 and kill == 30
    assert kill > drain, "kill_timeout must leave meshd time to drain"


def test_meshd_config_template_reloads_with_sighup(meshd_task):
    template = config_template(meshd_task)
    assert template["change_mode"] == "signal"
    assert template["change_signal"] == "SIGHUP"
    assert "nomadVar" in template["data"] and ".join_token" in template["data"]
    # Every file meshd reads (the config and the CA certificate it names) reloads the same way.
    for t in blocks(meshd_task, "template"):
        if t["destination"].endswith((".toml", ".pem", ".json")):
            assert (t["change_mode"], t.get("change_signal")) == ("signal", "SIGHUP"), t


def test_meshd_ca_file_is_rendered_by_a_template(meshd_task, rendered_config):
    ca_file = tomllib.loads(rendered_config)["ca_file"]
    # /local inside the task's chroot is the template destination local/.
    destinations = {"/" + t["destination"] for t in blocks(meshd_task, "template")}
    assert ca_file in destinations


def test_meshd_registers_itself_with_nomad_not_with_itself(meshd_group, meshd_task):
    services = blocks(meshd_group, "service") + blocks(meshd_task, "service")
    assert len(services) == 1
    service = services[0]
    assert service["provider"] == "nomad"
    assert service["port"] == "http"
    # The API listens on loopback; the check inherits the service's address.
    assert service["address"] == "127.0.0.1"
    check = block(service, "check")
    assert check["type"] == "http"
    assert check["path"] in ("/v1/agent/self", "/v1/status/leader")
    assert go_duration(check["timeout"]) < go_duration(check["interval"])


def test_rendered_config_has_only_keys_meshd_knows(rendered_config):
    config = tomllib.loads(rendered_config)
    unknown = set(config) - file_config_keys()
    assert not unknown, f"keys meshd's FileConfig does not have: {sorted(unknown)}"


def test_rendered_config_values(meshd_spec, rendered_config, meshd_group):
    config = tomllib.loads(rendered_config)
    ip = SAMPLE_TEMPLATE_VALUES['env "attr.unique.network.ip-address"']
    network = block(meshd_group, "network")
    ports = {label: body["static"] for label, body in labeled(network, "port").items()}
    assert config["node_name"] == SAMPLE_TEMPLATE_VALUES['env "node.unique.name"']
    assert config["http_addr"] == f"127.0.0.1:{ports['http']}"
    assert config["dns_addr"] == f"127.0.0.1:{ports['dns']}"
    assert config["bind_addr"] == f"{ip}:{ports['quic']}"
    assert config["advertise_addr"] == ip
    assert config["retry_join"] == hcl_variable_defaults(meshd_spec)["servers"]
    assert config["join_token"] == SAMPLE_TEMPLATE_VALUES[".join_token"]
    assert config.get("server", False) is False


def test_meshd_validate_accepts_the_rendered_config(rendered_config, tmp_path):
    binary = meshd_bin()
    if binary is None:
        pytest.skip("no meshd binary (set MESHD_BIN or build target/debug/meshd)")
    probe = subprocess.run(
        [str(binary), "validate", "--help"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0 or "meshd validate" not in probe.stdout:
        pytest.skip(f"{binary} has no `validate` subcommand: {probe.stderr.strip()[:200]}")

    good = tmp_path / "meshd.toml"
    good.write_text(rendered_config)
    r = subprocess.run(
        [str(binary), "validate", str(good)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, (
        f"meshd validate rejected the rendered config:\n{r.stderr}\n---\n{rendered_config}"
    )

    # The same check notices a key meshd does not know: the test above is not vacuous.
    bad = tmp_path / "bad.toml"
    bad.write_text(rendered_config.rstrip("\n") + '\nno_such_key = "x"\n')
    r = subprocess.run(
        [str(binary), "validate", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 1 and "no_such_key" in r.stderr, r.stderr


# ---------------------------------------------------------------- the example application


@pytest.fixture(scope="module")
def app_job() -> dict:
    name, job = only(load(APP_JOB), "job")
    assert name == "web"
    return job


@pytest.fixture(scope="module")
def app_group(app_job) -> dict:
    return only(app_job, "group")[1]


def app_service(group: dict) -> dict:
    services = blocks(group, "service")
    for task in labeled(group, "task").values():
        services += blocks(task, "service")
    assert len(services) == 1
    return services[0]


def test_app_is_a_service_job(app_job):
    assert app_job["type"] == "service"


def test_app_service_registers_through_consul_api(app_group):
    service = app_service(app_group)
    assert service["provider"] == "consul"
    assert service["name"] == "web"
    assert service["tags"], "tags make the registration's Tags"
    # `meta { ... }` is a block; `meta = { ... }` would be a map attribute.
    meta = service.get("meta")
    meta = block(service, "meta") if isinstance(meta, list) else meta
    assert meta and all(isinstance(v, str) for v in meta.values()), meta
    network_ports = labeled(block(app_group, "network"), "port")
    assert service["port"] in network_ports


def test_app_service_has_an_http_check(app_group):
    check = block(app_service(app_group), "check")
    assert check["type"] == "http"
    assert check["path"].startswith("/")
    interval, timeout = go_duration(check["interval"]), go_duration(check["timeout"])
    assert 0 < timeout < interval


def test_app_task_serves_on_its_port(app_group):
    task = only(app_group, "task")[1]
    config = block(task, "config")
    if task["driver"] == "exec":
        assert config["command"] == "/usr/bin/python3"
        assert "${NOMAD_PORT_http}" in config["args"]
    else:
        assert task["driver"] == "docker"
        assert config.get("image")

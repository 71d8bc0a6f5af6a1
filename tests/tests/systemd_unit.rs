//! The systemd files in `systemd/`: the unit passes `systemd-analyze verify` with the binary it
//! names present (checked in a scratch root with `--root`), declares what meshd relies on
//! (Type=notify, the reload command, the state directory, the sandbox), documents every
//! directive; the sysusers and tmpfiles snippets create the user and the directories with
//! their modes; and the example configuration passes `meshd validate`.
//!
//! Needs `systemd-analyze`, `systemd-sysusers` and `systemd-tmpfiles` (the `systemd` package,
//! which .ci/run installs) and the debug meshd (`cargo build -p meshd`).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::binary::{meshd_bin, workspace_root};

fn systemd_dir() -> PathBuf {
    workspace_root().join("systemd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One `Key=Value` line of a unit file.
#[derive(Debug)]
struct Directive {
    section: String,
    key: String,
    value: String,
    /// 0-based index of the line in the file.
    line: usize,
}

/// The directives of a unit file, in order (no line continuations: the unit has none).
fn directives(text: &str) -> Vec<Directive> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("meshd.service line {}: not Key=Value: {raw}", i + 1));
        out.push(Directive {
            section: section.clone(),
            key: k.trim().to_string(),
            value: v.trim().to_string(),
            line: i,
        });
    }
    out
}

/// The values of every `[Service]` key (a key given twice has two values).
fn service_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in directives(text) {
        if d.section == "Service" {
            map.entry(d.key).or_default().push(d.value);
        }
    }
    map
}

fn unit_text() -> String {
    read(&systemd_dir().join("meshd.service"))
}

fn output_text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is the systemd package installed?)"))
}

fn is_root() -> bool {
    read(Path::new("/proc/self/status"))
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0")
}

/// A Go/systemd duration made only of whole seconds and minutes ("45s", "1m30s"), in seconds.
fn seconds(s: &str) -> u64 {
    let mut total = 0;
    let mut num = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => num.push(c),
            's' | 'm' => {
                let n: u64 = num
                    .parse()
                    .unwrap_or_else(|_| panic!("duration {s:?}: expected whole seconds/minutes"));
                total += if c == 'm' { n * 60 } else { n };
                num.clear();
            }
            _ => panic!("duration {s:?}: expected whole seconds/minutes"),
        }
    }
    assert!(num.is_empty(), "duration {s:?}: a number without a unit");
    total
}

/// A `key = "value"` line of the example TOML, uncommented.
fn toml_string(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("systemd/meshd.toml sets no {key}"))
}

#[test]
fn unit_declares_what_meshd_relies_on() {
    let text = unit_text();
    let keys = service_keys(&text);
    let one = |k: &str| -> &str {
        match keys.get(k).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("[Service] {k}=: expected exactly one value, found {other:?}"),
        }
    };

    // The readiness protocol meshd speaks (sd_notify from its main process).
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/meshd agent --config /etc/meshd/meshd.toml"
    );
    // Reload: SIGHUP to meshd, after a check of the files that makes a broken one fail it.
    let reload = keys.get("ExecReload").expect("ExecReload=");
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/kill -HUP $MAINPID"),
        "ExecReload= ends with the SIGHUP: {reload:?}"
    );
    for r in &reload[..reload.len() - 1] {
        assert!(
            r.starts_with("/usr/bin/meshd validate"),
            "ExecReload= before the SIGHUP only validates: {r}"
        );
    }
    assert_eq!(one("WatchdogSec"), "30s");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("LimitNOFILE"), "1048576");
    assert_eq!(one("User"), "meshd");
    assert_eq!(one("Group"), "meshd");
    assert_eq!(one("StateDirectory"), "meshd");
    // ConfigurationDirectory= would make /etc/meshd writable under ProtectSystem=strict (the
    // TLS keys and the join token are root's to write); tmpfiles creates it instead.
    assert!(
        !keys.contains_key("ConfigurationDirectory"),
        "ConfigurationDirectory= mounts /etc/meshd writable into the sandbox"
    );

    // systemd must not SIGKILL meshd while it drains: TimeoutStopSec above drain_timeout.
    let example = read(&systemd_dir().join("meshd.toml"));
    let drain = seconds(&toml_string(&example, "drain_timeout"));
    let stop = seconds(one("TimeoutStopSec"));
    assert!(
        stop > drain,
        "TimeoutStopSec ({stop}s) must exceed drain_timeout ({drain}s)"
    );
    // The example's directories: the unit's StateDirectory, and /etc/meshd (tmpfiles).
    assert_eq!(toml_string(&example, "data_dir"), "/var/lib/meshd");
    assert!(toml_string(&example, "config_dir").starts_with("/etc/meshd/"));

    // The sandbox.
    for (k, v) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(one(k), v, "[Service] {k}=");
    }
    // The service set, plus bpf(2) alone (the virtual-IP capture program), nothing else of
    // @privileged.
    assert_eq!(
        keys.get("SystemCallFilter"),
        Some(&vec!["@system-service".to_string(), "bpf".to_string()]),
        "[Service] SystemCallFilter="
    );
    // Exactly what sk_lookup capture (CAP_BPF, CAP_NET_ADMIN) and ports below 1024 (DNS on
    // 53: CAP_NET_BIND_SERVICE) need, the same in both sets.
    assert_eq!(
        keys.get("CapabilityBoundingSet"),
        keys.get("AmbientCapabilities"),
        "CapabilityBoundingSet= and AmbientCapabilities= go together"
    );
    assert_eq!(
        keys.get("CapabilityBoundingSet"),
        Some(&vec![
            "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_BPF".to_string()
        ]),
        "[Service] CapabilityBoundingSet="
    );
    // /proc/net/tcp{,6}, which the proxy reads to find a caller's user, must stay visible.
    assert!(
        !keys.contains_key("ProcSubset"),
        "ProcSubset=pid would hide /proc/net from the proxy"
    );
    assert!(
        !keys.contains_key("PrivateNetwork"),
        "meshd serves the host's network"
    );
}

/// Every run of directives is preceded by a comment saying why.
#[test]
fn every_directive_is_explained() {
    let text = unit_text();
    let lines: Vec<&str> = text.lines().collect();
    let mut undocumented = Vec::new();
    let mut previous_directive: Option<usize> = None;
    for d in directives(&text) {
        let continues_a_run = previous_directive == Some(d.line.wrapping_sub(1));
        previous_directive = Some(d.line);
        if continues_a_run {
            continue;
        }
        let above = d.line.checked_sub(1).map(|i| lines[i].trim());
        if !above.is_some_and(|l| l.starts_with('#')) {
            undocumented.push(format!("line {}: {}={}", d.line + 1, d.key, d.value));
        }
    }
    assert!(
        undocumented.is_empty(),
        "directives without a comment above them:\n{}",
        undocumented.join("\n")
    );
}

/// A scratch root for `systemd-analyze verify --root`: the unit, and the host's targets it
/// refers to (sysinit.target, network-online.target, multi-user.target, ...).
fn verify_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir units");
    std::fs::copy(
        systemd_dir().join("meshd.service"),
        units.join("meshd.service"),
    )
    .expect("copy the unit");
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .expect("no /usr/lib/systemd/system on this host: install the systemd package");
    for entry in std::fs::read_dir(host_units).expect("read the host's units") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "target") {
            let dest = units.join(path.file_name().expect("file name"));
            // fs::copy follows symlinks (default.target -> graphical.target); a dangling alias
            // fails to copy, and is not one meshd.service refers to.
            if !dest.exists() {
                let _ = std::fs::copy(&path, &dest);
            }
        }
    }
    root
}

fn verify(root: &Path) -> Output {
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("meshd.service"))
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let root = verify_root();

    // Without /usr/bin/meshd under the root, verify must fail on it: proof that --root is
    // honoured and the ExecStart= binary is checked.
    let missing = verify(root.path());
    let text = output_text(&missing);
    assert!(
        !missing.status.success() && text.contains("/usr/bin/meshd"),
        "verify without the binary should fail on /usr/bin/meshd:\n{text}"
    );

    // With the binary in place (a hard link of the debug build, a copy across file systems;
    // not a symlink: verify resolves it inside the root).
    let bin_dir = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir usr/bin");
    let bin = bin_dir.join("meshd");
    let meshd = meshd_bin();
    if std::fs::hard_link(&meshd, &bin).is_err() {
        std::fs::copy(&meshd, &bin).expect("copy meshd into the scratch root");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let ok = verify(root.path());
    let text = output_text(&ok);
    // verify exits 0 after some complaints (an unknown directive, a bad value): any output is
    // a failure.
    assert!(
        ok.status.success() && ok.stdout.is_empty() && ok.stderr.is_empty(),
        "systemd-analyze verify --root meshd.service:\n{text}"
    );
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_directories() {
    let root = tempfile::tempdir().expect("temp dir");
    let r = root.path();
    for (src, dir) in [
        ("meshd.sysusers", "usr/lib/sysusers.d"),
        ("meshd.tmpfiles", "usr/lib/tmpfiles.d"),
    ] {
        std::fs::create_dir_all(r.join(dir)).expect("mkdir");
        std::fs::copy(systemd_dir().join(src), r.join(dir).join("meshd.conf")).expect("copy");
    }
    // As the package installs them: the configuration root:root 0640, and a key as meshctl
    // writes one (0600), which meshd could not read.
    std::fs::create_dir_all(r.join("etc/meshd")).expect("mkdir etc/meshd");
    let toml = r.join("etc/meshd/meshd.toml");
    std::fs::copy(systemd_dir().join("meshd.toml"), &toml).expect("copy meshd.toml");
    std::fs::set_permissions(&toml, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let key = r.join("etc/meshd/dc1-server-mesh-0-key.pem");
    std::fs::write(&key, "not a key").expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let root_arg = format!("--root={}", r.display());
    let o = run(Command::new("systemd-sysusers")
        .arg(&root_arg)
        .arg("meshd.conf"));
    assert!(o.status.success(), "systemd-sysusers:\n{}", output_text(&o));
    let passwd = read(&r.join("etc/passwd"));
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("meshd:"))
        .unwrap_or_else(|| panic!("no meshd user in {passwd}"))
        .split(':')
        .collect();
    assert_eq!(entry[4], "meshd service mesh");
    assert_eq!(entry[5], "/var/lib/meshd", "home: the data dir");
    let (uid, gid): (u32, u32) = (entry[2].parse().unwrap(), entry[3].parse().unwrap());
    assert!(
        read(&r.join("etc/group")).contains(&format!("meshd:x:{gid}:")),
        "no meshd group"
    );

    if !is_root() {
        eprintln!("skipping the tmpfiles part: chown needs root");
        return;
    }
    let o = run(Command::new("systemd-tmpfiles")
        .arg(&root_arg)
        .arg("--create")
        .arg("meshd.conf"));
    assert!(o.status.success(), "systemd-tmpfiles:\n{}", output_text(&o));
    for (path, mode, owner, group) in [
        ("etc/meshd", 0o750, 0, gid),
        ("etc/meshd/services.d", 0o750, 0, gid),
        ("etc/meshd/meshd.toml", 0o640, 0, gid),
        ("etc/meshd/dc1-server-mesh-0-key.pem", 0o640, 0, gid),
        ("var/lib/meshd", 0o750, uid, gid),
    ] {
        let m = std::fs::metadata(r.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (mode, owner, group),
            "/{path}: (mode, uid, gid)"
        );
    }
}

/// `meshd validate` on the example, as the package installs it. Its config_dir,
/// /etc/meshd/services.d, must be a directory (the package's tmpfiles.d creates it): on a host
/// without it the check runs on a copy whose config_dir is an empty scratch directory.
#[test]
fn example_config_validates() {
    let example = systemd_dir().join("meshd.toml");
    let text = read(&example);
    let config_dir_line = "config_dir = \"/etc/meshd/services.d\"";
    assert_eq!(
        text.lines().filter(|l| *l == config_dir_line).count(),
        1,
        "systemd/meshd.toml: expected the line {config_dir_line}"
    );
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = if Path::new("/etc/meshd/services.d").is_dir() {
        example.clone()
    } else {
        let services = scratch.path().join("services.d");
        std::fs::create_dir(&services).expect("mkdir services.d");
        let copy = scratch.path().join("meshd.toml");
        let rewritten = text.replace(
            config_dir_line,
            &format!("config_dir = {:?}", services.display().to_string()),
        );
        std::fs::write(&copy, rewritten).expect("write the copy");
        copy
    };
    let o = run(Command::new(meshd_bin()).arg("validate").arg(&file));
    assert!(
        o.status.success(),
        "meshd validate {}:\n{}",
        file.display(),
        output_text(&o)
    );
}

/// The commented-out keys of the example (the server's, the optional ones) are real keys with
/// valid values: uncommented, the only errors left are about the TLS files that do not exist
/// here.
#[test]
fn example_commented_keys_are_known() {
    let text = read(&systemd_dir().join("meshd.toml"));
    let scratch = tempfile::tempdir().expect("temp dir");
    let services = scratch.path().join("services.d");
    std::fs::create_dir(&services).expect("mkdir services.d");
    let mut uncommented = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        // `#key = value`, not prose (`# text`).
        let key_line = line
            .strip_prefix('#')
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "));
        let line = match key_line {
            Some(l) => {
                count += 1;
                l.to_string()
            }
            None => line.to_string(),
        };
        let line = if line.starts_with("config_dir = ") {
            format!("config_dir = {:?}", services.display().to_string())
        } else {
            line
        };
        uncommented.push(line);
    }
    assert!(count >= 5, "expected commented-out keys, found {count}");
    let file = scratch.path().join("all-keys.toml");
    std::fs::write(&file, uncommented.join("\n")).expect("write");
    let o = run(Command::new(meshd_bin()).arg("validate").arg(&file));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    for e in &errors {
        assert!(
            e.contains("No such file or directory") && e.contains("/etc/meshd/"),
            "an error other than a missing TLS file: {e}\n{}",
            output_text(&o)
        );
    }
}

//! Hosts on one machine: one network namespace per host, joined by a Linux bridge.
//!
//! [`Net::new`] builds, for `n` hosts:
//!
//! - a bridge `mb<id>` in the root namespace, with the root's own mesh address (`.1`);
//! - per host `i`, a namespace `mn<id>h<i>` with `lo` up and two links:
//!   - **mesh**: a veth pair, `mv<id>h<i>` on the bridge and `mesh0` in the namespace with the
//!     host's mesh address (`10.A.B.<11+i>/24`). meshd binds QUIC there and advertises it;
//!     [`Net::cut`] takes it down, [`Net::partition`] moves it to a second bridge.
//!   - **control**: a veth pair straight between the root namespace (`mc<id>h<i>`) and the
//!     namespace (`ctl0`), its own /30 in a second subnet (`10.A+64.B.4i+1` root side,
//!     `.4i+2` host side). The test reaches the host's HTTP API over it whatever the faults on
//!     the mesh. Hosts cannot reach each other over it: the namespaces have no default route
//!     and the root namespace does not forward.
//!
//! `<id>` is the test process's pid (base 36) and a per-process counter, so concurrent tests
//! (nextest runs each in its own process) never share a name. The subnets are derived from the
//! same numbers and checked against the addresses and routes already present.
//!
//! Dropping a [`Net`] SIGKILLs every process left in its namespaces and deletes the namespaces,
//! the veths and the bridges, also while the test panics. [`Net::new`] also removes what an
//! earlier test process that died without cleaning up (SIGKILLed on a timeout) left behind.
//!
//! Processes run in a host with `ip netns exec NS PROGRAM ...` ([`Net::command`]): `ip` execs
//! the program in place, so the child's pid is the program's and a SIGKILL reaches it.
//! [`Net::in_host`] runs a closure on a thread that entered a host's namespace, for sockets made
//! by the test itself.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where `ip netns` keeps its namespace files.
const NETNS_DIR: &str = "/var/run/netns";

/// Most hosts one [`Net`] holds (the control /30s of one /24).
pub const MAX_HOSTS: usize = 60;

/// The interface name of the mesh link inside each host.
pub const MESH_IF: &str = "mesh0";
/// The interface name of the control link inside each host.
pub const CONTROL_IF: &str = "ctl0";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One host: its namespace and addresses.
#[derive(Clone, Debug)]
pub struct Host {
    /// The network namespace name.
    pub ns: String,
    /// The host's address on the mesh (bridge) network.
    pub mesh_ip: Ipv4Addr,
    /// The host's address on its control link; the test talks HTTP to it here.
    pub control_ip: Ipv4Addr,
    /// The root namespace's address on this host's control link.
    pub root_control_ip: Ipv4Addr,
    /// The root-side end of the mesh veth (a bridge port).
    mesh_root_if: String,
    /// The root-side end of the control veth.
    control_root_if: String,
}

/// A set of hosts in network namespaces on a bridge. Dropping it removes everything.
pub struct Net {
    id: String,
    bridge: String,
    /// The second bridge that [`Net::partition`] moves hosts to.
    side_bridge: String,
    side_bridge_up: bool,
    root_mesh_ip: Ipv4Addr,
    mesh_prefix: (u8, u8),
    hosts: Vec<Host>,
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// Runs `program ARGS`, failing with its stderr when it exits non-zero.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `n` in base 36 (short names: Linux interface names have at most 15 characters).
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// The pid encoded in a name `<prefix><pid36>x...`, if it has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid36, tail) = rest.split_once('x')?;
    let (counter, host) = match tail.split_once('h') {
        Some((c, h)) => (c, Some(h)),
        None => (tail, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(counter) || !host.is_none_or(digits) {
        return None;
    }
    u32::from_str_radix(pid36, 36).ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of the processes in namespace `ns` (empty when it does not exist).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process in namespace `ns`.
fn kill_netns_processes(ns: &str) {
    for pid in netns_pids(ns) {
        if pid != std::process::id() {
            sigkill(pid);
        }
    }
}

/// Sends signal `sig` to `pid` (errors, such as a process that already exited, are ignored).
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Sends SIGKILL to `pid`.
pub fn sigkill(pid: u32) {
    send_signal(pid, libc::SIGKILL);
}

/// Names of the network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Names of the links in the root namespace (`ip -o link`), without the `@peer` suffix.
pub fn link_list() -> Vec<String> {
    ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

/// Removes namespaces and links left by test processes that no longer exist.
fn clean_stale() {
    for ns in netns_list() {
        if let Some(pid) = owner_pid(&ns, "mn") {
            if !process_alive(pid) {
                kill_netns_processes(&ns);
                let _ = ip(&["netns", "delete", &ns]);
            }
        }
    }
    for link in link_list() {
        for prefix in ["mb", "mq", "mv", "mc"] {
            if let Some(pid) = owner_pid(&link, prefix) {
                if !process_alive(pid) {
                    let _ = ip(&["link", "delete", &link]);
                }
            }
        }
    }
}

/// Picks the two /24s (mesh `10.a.b.0`, control `10.a+64.b.0`) for this net: derived from the
/// pid and counter, skipping any already present in the root namespace's addresses or routes.
fn pick_subnets(pid: u32, counter: u32) -> anyhow::Result<(u8, u8)> {
    let used = format!(
        "{}\n{}",
        ip(&["-4", "-o", "addr", "show"])?,
        ip(&["-4", "route", "show", "table", "all"])?
    );
    let start = (pid.wrapping_mul(16).wrapping_add(counter)) % 16_384;
    for step in 0..16_384u32 {
        let slot = (start + step * 97) % 16_384;
        let a = 64 + (slot / 256) as u8;
        let b = (slot % 256) as u8;
        let mesh = format!("10.{a}.{b}.");
        let control = format!("10.{}.{b}.", a + 64);
        if !used.contains(&mesh) && !used.contains(&control) {
            return Ok((a, b));
        }
    }
    bail!("no free 10.64-191.x.0/24 subnet pair for a test network")
}

impl Net {
    /// Creates the bridge and `hosts` namespaces with their links.
    pub fn new(hosts: usize) -> anyhow::Result<Net> {
        if hosts == 0 || hosts > MAX_HOSTS {
            bail!("a test network has 1 to {MAX_HOSTS} hosts, not {hosts}");
        }
        clean_stale();
        let pid = std::process::id();
        let counter = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}x{}", base36(u64::from(pid)), counter);
        let (a, b) = pick_subnets(pid, counter)?;
        let mut net = Net {
            bridge: format!("mb{id}"),
            side_bridge: format!("mq{id}"),
            side_bridge_up: false,
            root_mesh_ip: Ipv4Addr::new(10, a, b, 1),
            mesh_prefix: (a, b),
            hosts: Vec::new(),
            id,
        };
        // From here on, Drop cleans up whatever was made when a step fails.
        net.build(hosts)?;
        Ok(net)
    }

    fn build(&mut self, hosts: usize) -> anyhow::Result<()> {
        let (a, b) = self.mesh_prefix;
        // Left over by an earlier process with this pid: start clean.
        let _ = ip(&["link", "delete", &self.bridge]);
        let _ = ip(&["link", "delete", &self.side_bridge]);
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.root_mesh_ip),
            "dev",
            &self.bridge,
        ])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for i in 0..hosts {
            let host = Host {
                ns: format!("mn{}h{i}", self.id),
                mesh_ip: Ipv4Addr::new(10, a, b, 11 + i as u8),
                control_ip: Ipv4Addr::new(10, a + 64, b, 4 * i as u8 + 2),
                root_control_ip: Ipv4Addr::new(10, a + 64, b, 4 * i as u8 + 1),
                mesh_root_if: format!("mv{}h{i}", self.id),
                control_root_if: format!("mc{}h{i}", self.id),
            };
            if netns_list().contains(&host.ns) {
                kill_netns_processes(&host.ns);
                let _ = ip(&["netns", "delete", &host.ns]);
            }
            let _ = ip(&["link", "delete", &host.mesh_root_if]);
            let _ = ip(&["link", "delete", &host.control_root_if]);
            ip(&["netns", "add", &host.ns])?;
            self.hosts.push(host.clone());
            let ns = host.ns.as_str();
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Mesh link: into the bridge.
            ip(&[
                "link",
                "add",
                &host.mesh_root_if,
                "type",
                "veth",
                "peer",
                "name",
                MESH_IF,
                "netns",
                ns,
            ])?;
            ip(&["link", "set", &host.mesh_root_if, "master", &self.bridge])?;
            ip(&["link", "set", &host.mesh_root_if, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.mesh_ip),
                "dev",
                MESH_IF,
            ])?;
            ip(&["-n", ns, "link", "set", MESH_IF, "up"])?;
            // Control link: root <-> host, a /30.
            ip(&[
                "link",
                "add",
                &host.control_root_if,
                "type",
                "veth",
                "peer",
                "name",
                CONTROL_IF,
                "netns",
                ns,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", host.root_control_ip),
                "dev",
                &host.control_root_if,
            ])?;
            ip(&["link", "set", &host.control_root_if, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/30", host.control_ip),
                "dev",
                CONTROL_IF,
            ])?;
            ip(&["-n", ns, "link", "set", CONTROL_IF, "up"])?;
        }
        Ok(())
    }

    /// The unique part of this net's names (`<pid36>x<counter>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts (never, once built).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`; panics when out of range.
    pub fn host(&self, i: usize) -> &Host {
        self.hosts
            .get(i)
            .unwrap_or_else(|| panic!("host {i} of a {}-host net", self.hosts.len()))
    }

    /// Every host.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The root namespace's address on the mesh bridge (for benchmarks reaching the mesh).
    pub fn root_mesh_ip(&self) -> Ipv4Addr {
        self.root_mesh_ip
    }

    /// `ip netns exec NS program`: a command that runs `program` in host `i`. The spawned
    /// child's pid is `program`'s (ip execs it in place).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns")
            .arg("exec")
            .arg(&self.host(i).ns)
            .arg(program);
        cmd
    }

    /// Runs `program ARGS` in host `i` to completion.
    pub fn exec(&self, i: usize, program: &str, args: &[&str]) -> std::io::Result<Output> {
        self.command(i, program).args(args).output()
    }

    /// Runs `f` on a thread that entered host `i`'s network namespace. Sockets `f` creates
    /// belong to that namespace, and stay there when used from other threads afterwards.
    pub fn in_host<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.host(i).ns, f)
    }

    /// Takes host `i`'s mesh link down (both ends): it can reach no other host, and no other
    /// host it. Its control link stays up.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        let h = self.host(i);
        ip(&["link", "set", &h.mesh_root_if, "down"])?;
        ip(&["-n", &h.ns, "link", "set", MESH_IF, "down"])?;
        Ok(())
    }

    /// Brings host `i`'s mesh link back up (both ends).
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        let h = self.host(i);
        ip(&["-n", &h.ns, "link", "set", MESH_IF, "up"])?;
        ip(&["link", "set", &h.mesh_root_if, "up"])?;
        Ok(())
    }

    /// Drops every packet host `from` sends to host `to` over the mesh (a blackhole route in
    /// `from`), while `to` still reaches `from`: one direction of an asymmetric partition.
    pub fn block(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let dst = format!("{}/32", self.host(to).mesh_ip);
        ip(&["-n", &self.host(from).ns, "route", "add", "blackhole", &dst])?;
        Ok(())
    }

    /// Undoes [`Net::block`].
    pub fn unblock(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let dst = format!("{}/32", self.host(to).mesh_ip);
        ip(&["-n", &self.host(from).ns, "route", "del", "blackhole", &dst])?;
        Ok(())
    }

    /// Splits the mesh in two: the hosts in `b` move to a second bridge, where they reach each
    /// other but none of the others (`a` and any host in neither list stay with the root's
    /// mesh address). `a` names the other side for readability; the lists must be disjoint.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        if let Some(x) = a.iter().find(|x| b.contains(x)) {
            bail!("host {x} is on both sides of a partition");
        }
        if !self.side_bridge_up {
            let _ = ip(&["link", "delete", &self.side_bridge]);
            ip(&["link", "add", &self.side_bridge, "type", "bridge"])?;
            ip(&["link", "set", &self.side_bridge, "up"])?;
            self.side_bridge_up = true;
        }
        for &i in b {
            let port = self.host(i).mesh_root_if.clone();
            ip(&["link", "set", &port, "master", &self.side_bridge])?;
        }
        for &i in a {
            let port = self.host(i).mesh_root_if.clone();
            ip(&["link", "set", &port, "master", &self.bridge])?;
        }
        Ok(())
    }

    /// Undoes [`Net::partition`]: every host's mesh link back on the main bridge.
    pub fn heal_partition(&mut self) -> anyhow::Result<()> {
        for h in &self.hosts {
            ip(&["link", "set", &h.mesh_root_if, "master", &self.bridge])?;
        }
        Ok(())
    }

    /// Whether a UDP datagram sent from `from` reaches `to_ip` bound in `to` within `timeout`
    /// (`None`: the root namespace). Retries every 100 ms; a send error (no route, link down)
    /// counts as not delivered yet.
    pub fn udp_delivers(
        &self,
        from: Option<usize>,
        to: Option<usize>,
        to_ip: Ipv4Addr,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        let bind = |host: Option<usize>, addr: SocketAddr| -> anyhow::Result<UdpSocket> {
            let make = move || UdpSocket::bind(addr);
            let sock = match host {
                Some(i) => self.in_host(i, make)?,
                None => make(),
            };
            sock.with_context(|| format!("bind UDP {addr}"))
        };
        let rx = bind(to, SocketAddr::from((to_ip, 0)))?;
        let tx = bind(from, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        let dest = rx.local_addr()?;
        rx.set_read_timeout(Some(Duration::from_millis(100)))?;
        let token = format!("probe {} {:?}->{dest}", self.id, from);
        let start = Instant::now();
        let mut buf = [0u8; 256];
        while start.elapsed() < timeout {
            let _ = tx.send_to(token.as_bytes(), dest);
            let deadline = Instant::now() + Duration::from_millis(100);
            while Instant::now() < deadline {
                match rx.recv_from(&mut buf) {
                    Ok((n, _)) if &buf[..n] == token.as_bytes() => return Ok(true),
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(false)
    }

    /// Whether host `a` and host `b` reach each other's mesh address over UDP, both ways.
    pub fn mesh_connected(&self, a: usize, b: usize, timeout: Duration) -> anyhow::Result<bool> {
        Ok(
            self.udp_delivers(Some(a), Some(b), self.host(b).mesh_ip, timeout)?
                && self.udp_delivers(Some(b), Some(a), self.host(a).mesh_ip, timeout)?,
        )
    }

    /// Whether any namespace or link of this net still exists.
    pub fn leftovers(id: &str) -> Vec<String> {
        let mut out: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&format!("mn{id}h")))
            .collect();
        for l in link_list() {
            let mine = ["mb", "mq", "mv", "mc"]
                .iter()
                .any(|p| l == format!("{p}{id}") || l.starts_with(&format!("{p}{id}h")));
            if mine {
                out.push(l);
            }
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_netns_processes(&h.ns);
        }
        for h in &self.hosts {
            let _ = ip(&["link", "delete", &h.mesh_root_if]);
            let _ = ip(&["link", "delete", &h.control_root_if]);
            let _ = ip(&["netns", "delete", &h.ns]);
        }
        let _ = ip(&["link", "delete", &self.bridge]);
        if self.side_bridge_up {
            let _ = ip(&["link", "delete", &self.side_bridge]);
        }
    }
}

/// Runs `f` on a scoped thread that entered network namespace `ns` (`/var/run/netns/NS`).
#[allow(unsafe_code)]
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns only reads the descriptor, which `file` keeps open for the call;
            // it changes the network namespace of this (new, scoped) thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(anyhow::Error::from(std::io::Error::last_os_error())
                    .context(format!("setns into {ns}")));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        let id = format!("{}x{}", base36(4_194_304), 999);
        assert!(format!("mv{id}h59").len() <= 15, "{id}");
        assert_eq!(owner_pid(&format!("mn{id}h3"), "mn"), Some(4_194_304));
        assert_eq!(owner_pid("mesh0", "mn"), None);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}

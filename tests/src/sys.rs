//! Process-level facts the scale tests need: the open-file limit, a process's open file
//! descriptors and listening sockets, the `sk_lookup` programs attached in a network
//! namespace, values from Prometheus text, and resident memory ([`rss_kib`], [`RssSampler`]:
//! the most a process held while a transfer ran).

use std::path::PathBuf;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children inherit it) and
/// returns the soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> std::io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass, which lives on our
    // stack for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = want;
    }
    Ok(lim.rlim_cur)
}

/// How many file descriptors process `pid` has open (Linux, `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> std::io::Result<usize> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    Ok(std::fs::read_dir(dir)?.count())
}

/// Sets process `pid`'s `RLIMIT_NOFILE` (soft and hard) to `limit`, with util-linux's
/// `prlimit`, as an operator would.
pub fn set_nofile_limit(pid: u32, limit: u64) -> std::io::Result<()> {
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "prlimit --pid={pid} --nofile={limit}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The IPv4 addresses and ports process `pid`'s network namespace listens on for TCP (from
/// `/proc/PID/net/tcp`, which shows that process's namespace).
pub fn tcp_listeners(pid: u32) -> std::io::Result<Vec<std::net::SocketAddrV4>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st ...; st 0A is LISTEN.
        if cols.len() < 4 || cols[3] != "0A" {
            continue;
        }
        let Some((ip, port)) = cols[1].split_once(':') else {
            continue;
        };
        let (Ok(ip), Ok(port)) = (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16))
        else {
            continue;
        };
        // The kernel prints the address's network-order bytes as one native-endian word.
        out.push(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(ip.to_ne_bytes()),
            port,
        ));
    }
    Ok(out)
}

/// How many eBPF `sk_lookup` programs are attached to network namespace `ns` (`None`: this
/// thread's), by `BPF_PROG_QUERY`, as `bpftool net` would list them. Needs `CAP_NET_ADMIN`.
pub fn sk_lookup_programs(ns: Option<&str>) -> anyhow::Result<u32> {
    match ns {
        Some(ns) => crate::netns::in_netns(ns, query_sk_lookup)?.map_err(Into::into),
        None => query_sk_lookup().map_err(Into::into),
    }
}

#[allow(unsafe_code)]
fn query_sk_lookup() -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    // `/proc/thread-self`: the namespace of this thread, which `in_netns` moved.
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let mut ids = [0u32; 64];
    // The `query` member of `union bpf_attr` (include/uapi/linux/bpf.h), zero-padded.
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: [u32; 9],
    }
    let mut q = Query {
        target_fd: netns.as_raw_fd() as u32,
        attach_type: 36, // BPF_SK_LOOKUP
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: [0; 9],
    };
    // SAFETY: bpf(BPF_PROG_QUERY) reads `q` and writes `q.prog_cnt` and up to `prog_cnt`
    // entries of `ids`; both live on this stack frame across the call, and the size passed is
    // `q`'s.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            16, // BPF_PROG_QUERY
            &mut q as *mut Query,
            std::mem::size_of::<Query>() as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(q.prog_cnt)
}

/// The value of metric `name` in Prometheus text exposition, summed over its label sets;
/// `None` when no sample of that name is present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        if series != name {
            continue;
        }
        let rest = match rest.strip_prefix('{') {
            Some(r) => match r.find('}') {
                Some(end) => &r[end + 1..],
                None => continue,
            },
            None => rest,
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Samples the RSS of some processes every 100 ms until dropped, keeping each one's maximum.
pub struct RssSampler {
    max: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let max = std::sync::Arc::new(std::sync::Mutex::new(vec![0u64; pids.len()]));
        let m = max.clone();
        let task = tokio::spawn(async move {
            loop {
                for (i, pid) in pids.iter().enumerate() {
                    let kib = rss_kib(*pid).unwrap_or(0);
                    let mut m = m.lock().expect("RSS maxima");
                    m[i] = m[i].max(kib);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        RssSampler { max, task }
    }

    /// The largest RSS (KiB) seen of each process, in the order given.
    pub fn max_kib(&self) -> Vec<u64> {
        self.max.lock().expect("RSS maxima").clone()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metric_values() {
        let text = "# HELP meshd_api_blocking_queries Waiting blocking queries.\n\
                    # TYPE meshd_api_blocking_queries gauge\n\
                    meshd_api_blocking_queries 3\n\
                    meshd_api_blocking_queries_total 9\n\
                    meshd_api_requests_total{route=\"/v1/kv\",code=\"200\"} 2\n\
                    meshd_api_requests_total{route=\"/v1/agent\",code=\"200\"} 5\n";
        assert_eq!(metric_value(text, "meshd_api_blocking_queries"), Some(3.0));
        assert_eq!(metric_value(text, "meshd_api_requests_total"), Some(7.0));
        assert_eq!(metric_value(text, "nope"), None);
    }

    #[test]
    fn counts_own_fds() {
        let n = open_fds(std::process::id()).expect("read /proc/self/fd");
        assert!(n >= 3, "{n}");
    }
}

//! Process-level facts the scale tests need: the open-file limit, a process's open file
//! descriptors, and values from Prometheus text.

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

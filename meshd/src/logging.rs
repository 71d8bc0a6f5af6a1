//! Structured logging with `tracing`: human-readable or JSON lines on stderr, a filter that a
//! reload can change, and the most recent lines kept in memory for `GET /v1/agent/logs`
//! (which `meshctl debug` collects).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer as _, Registry};

/// Lines kept for `/v1/agent/logs`.
pub const RECENT_LINES: usize = 2000;

/// Crates whose own logs stay at warn unless the level names them: openraft logs every vote
/// at info, hickory every DNS request, quinn and rustls every packet and handshake at debug.
const QUIET: [&str; 9] = [
    "openraft",
    "hickory_server",
    "hickory_proto",
    "hickory_net",
    "hickory_resolver",
    "quinn",
    "quinn_proto",
    "quinn_udp",
    "rustls",
];

/// The filter for a `log_level` (validated with the config).
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    let mut spec = level.to_string();
    for quiet in QUIET {
        if !level.contains(quiet) {
            spec.push_str(&format!(",{quiet}=warn"));
        }
    }
    EnvFilter::try_new(&spec).map_err(|e| e.to_string())
}

/// The installed logger: changes its level, reads its recent lines.
#[derive(Clone)]
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    recent: Recent,
}

impl Logging {
    /// Replaces the filter (a reload's `log_level`).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let f = filter(level)?;
        self.filter.reload(f).map_err(|e| e.to_string())
    }

    /// The last `n` lines, oldest first.
    pub fn recent(&self, n: usize) -> Vec<String> {
        let lines = self.recent.0.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = lines.len().saturating_sub(n);
        lines.iter().skip(skip).cloned().collect()
    }
}

/// A bounded ring of formatted lines.
#[derive(Clone, Default)]
struct Recent(Arc<Mutex<VecDeque<String>>>);

impl Write for Recent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for line in text.lines().filter(|l| !l.is_empty()) {
            if lines.len() == RECENT_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_string());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber. `level` was validated with the config.
pub fn init(level: &str, json: bool) -> Logging {
    let initial = filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter_layer, handle) = reload::Layer::new(initial);
    let recent = Recent::default();
    let ring = recent.clone();
    let ring_writer = move || ring.clone();
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    let memory = tracing_subscriber::fmt::layer()
        .with_writer(ring_writer)
        .with_ansi(false)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter_layer);
    if json {
        registry
            .with(stderr.json().flatten_event(true).boxed())
            .with(memory.json().flatten_event(true).boxed())
            .init();
    } else {
        registry.with(stderr.boxed()).with(memory.boxed()).init();
    }
    Logging {
        filter: handle,
        recent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines() {
        let mut r = Recent::default();
        for i in 0..RECENT_LINES + 5 {
            r.write_all(format!("line {i}\n").as_bytes())
                .expect("write");
        }
        let lines = r.0.lock().expect("lock");
        assert_eq!(lines.len(), RECENT_LINES);
        assert_eq!(lines.front().map(String::as_str), Some("line 5"));
    }

    #[test]
    fn quiet_crates_stay_at_warn_unless_named() {
        assert!(filter("debug")
            .expect("valid")
            .to_string()
            .contains("quinn=warn"));
        assert!(!filter("debug,quinn=trace")
            .expect("valid")
            .to_string()
            .contains("quinn=warn"));
        assert!(filter("debug,[").is_err());
    }
}

//! Structured logging with `tracing`: human-readable or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` was validated with the config.
pub fn init(level: &str, json: bool) {
    // openraft logs every vote and role change at info; keep it at warn unless asked for.
    // hickory-server logs every DNS request at info; keep it at warn unless asked for.
    // quinn and rustls log per packet and per handshake at debug, drowning meshd's own lines.
    let mut spec = level.to_string();
    for quiet in [
        "openraft",
        "hickory_server",
        "hickory_proto",
        "hickory_net",
        "hickory_resolver",
        "quinn",
        "quinn_proto",
        "quinn_udp",
        "rustls",
    ] {
        if !level.contains(quiet) {
            spec.push_str(&format!(",{quiet}=warn"));
        }
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

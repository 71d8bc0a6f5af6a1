//! Structured logging with `tracing`: human-readable or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` was validated with the config.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

//! meshd: one daemon per host — registry server, Consul-compatible HTTP API, health checks.
//!
//! `main` parses and validates the configuration (nothing is bound before it is valid),
//! installs logging, and hands over to [`agent::run`].

// One module makes system calls that have no safe wrapper: proxy/capture/sk_lookup.rs (bpf(2)),
// which allows unsafe code for itself alone and says why each block is sound.
#![deny(unsafe_code)]

mod agent;
mod api;
mod checks;
mod cli;
mod cluster;
mod config;
mod definitions;
mod dns;
mod local;
mod logging;
mod notify;
mod proxy;
mod read_index;
mod reload;
mod store;
mod transport;
mod validate;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the data plane allocates and frees small buffers and
/// futures per request across threads, where glibc's arenas spent 5–8 % of meshd's samples
/// (tests/bench/RESULTS.md has the A/B).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Agent(args) => {
            let cfg = match config::build(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("meshd: invalid configuration: {e}");
                    return std::process::ExitCode::from(64);
                }
            };
            let logging = logging::init(&cfg.log_level, cfg.log_json);
            // One crypto provider for every TLS user (reqwest's HTTPS checks today).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all().thread_name("meshd");
            if let Some(n) = cfg.worker_threads {
                builder.worker_threads(n);
            }
            // Lets quinn batch tunnel writes into fewer datagrams (see .cargo/config.toml).
            #[cfg(tokio_unstable)]
            builder.disable_lifo_slot();
            let runtime = match builder.build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("meshd: cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(cfg, *args, Some(logging))) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "meshd stopped on an error");
                    eprintln!("meshd: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        cli::Command::Validate(args) => validate::main(&args),
    }
}

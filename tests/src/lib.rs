//! End-to-end test harness for meshd: starts the real `meshd agent --dev` binary on port 0 with a
//! temp data dir and talks to it over HTTP, the way a user or a Consul client does.
//!
//! Nothing here mocks meshd: faults come from the harness (SIGKILL, restart on the same data dir,
//! a health-check target whose answer can be switched, thousands of raw sockets).
//!
//! # Layout
//! - [`binary`]: where the meshd binary is (`MESHD_BIN`, else the workspace's target dir).
//! - [`meshd`]: [`Meshd`], one running agent: start, SIGKILL, restart, its log on failure.
//! - [`http`]: [`Api`], a small async HTTP client returning status, headers and body.
//! - [`wait`]: [`wait_until`] / [`wait_for`], polling a condition with a deadline (never a bare
//!   sleep as synchronization).
//! - [`check_target`]: [`TestHttpServer`], a loopback HTTP server whose status can be switched
//!   (200/429/500/hang) for health-check tests.
//! - [`raw`]: hand-written HTTP/1.1 over tokio `TcpStream`, cheap enough for 10,000 connections.
//! - [`sys`]: file-descriptor limits and counts, Prometheus text parsing.
//! - [`dump`]: a full catalog dump, to prove that rejected input changed nothing.
//! - [`netns`]: [`netns::Net`], hosts in network namespaces on a bridge (a mesh link that a
//!   test cuts or partitions, a control link the test talks HTTP over), removed on drop.
//! - [`mesh`]: data-plane test servers (named HTTP, echo) and clients inside a namespace.
//! - [`l7`]: [`l7::L7Mesh`], the layer-7 tests' cluster: `api` v1/v2 instances of the L7
//!   backend (`src/bin/l7backend.rs`), config entries, curl batches inside a namespace, the
//!   Python gRPC/WebSocket peers (`tests/python-tools/`), RSS sampling.
//! - [`pattern`]: the deterministic byte stream the L7 backend serves and the tests upload.
//! - [`meshctl`]: running the built meshctl against an agent and checking its output.
//! - [`cluster`]: [`cluster::Cluster`], servers and agents with their TLS files and configs,
//!   one per namespace: start, SIGKILL, restart, cut, leave, and helpers for their APIs.
//! - [`lincheck`]: the linearizability checker (per-key registers, Wing & Gong search with
//!   memoization, histories split at quiescent points), with its self-tests.
//! - [`nemesis`]: faults for a running cluster (SIGKILL, SIGSTOP, link cuts, asymmetric
//!   partitions, restarts from a snapshot), each applied, held and healed.
//! - [`linrun`]: a Jepsen-style run: clients on random servers, the nemesis, the check, and the
//!   history saved when it fails (`tests/linearizability.rs`, `bench/linearizability.sh`).
//!
//! The integration tests are in `tests/tests/*.rs` (`cluster_*.rs`: multi-host, run as root), the Consul-client test in `tests/python/`,
//! and the registration benchmark in `tests/bench/` (tool: `src/bin/regbench.rs`).
#![deny(unsafe_code)]

pub mod binary;
pub mod check_target;
pub mod cluster;
pub mod dig;
pub mod dump;
pub mod http;
pub mod l7;
pub mod lincheck;
pub mod linrun;
pub mod mesh;
pub mod meshctl;
pub mod meshd;
pub mod nemesis;
pub mod netns;
pub mod pattern;
pub mod raw;
pub mod sys;
pub mod wait;

pub use check_target::TestHttpServer;
pub use http::{Api, Resp};
pub use meshd::{Meshd, MeshdOptions};
pub use wait::{wait_for, wait_until};

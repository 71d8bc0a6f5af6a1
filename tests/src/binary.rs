//! Locating the meshd binary under test.
//!
//! Order: `MESHD_BIN`; then `meshd` beside the running test executable's profile directory
//! (`target/<profile>/deps/..`, so `cargo test --release` tests the release build); then
//! `$CARGO_TARGET_DIR/debug/meshd`; then `<workspace>/target/debug/meshd`.

use std::path::{Path, PathBuf};

/// Environment variable naming the meshd binary to test.
pub const MESHD_BIN_ENV: &str = "MESHD_BIN";

/// Every place looked at, in order.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(MESHD_BIN_ENV) {
        out.push(PathBuf::from(p));
        // An explicit choice is the only candidate: testing another binary by accident is worse
        // than failing.
        return out;
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test-binary>
        if let Some(deps) = exe.parent() {
            if deps.file_name().is_some_and(|n| n == "deps") {
                if let Some(profile) = deps.parent() {
                    out.push(profile.join("meshd"));
                }
            }
        }
    }
    let workspace = workspace_root();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace.join(t)
        } else {
            t
        };
        out.push(t.join("debug").join("meshd"));
    }
    out.push(workspace.join("target").join("debug").join("meshd"));
    out
}

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The meshd binary to test; panics with what to do when there is none.
pub fn meshd_bin() -> PathBuf {
    let cands = candidates();
    for c in &cands {
        if c.is_file() {
            return c.clone();
        }
    }
    let list: Vec<String> = cands.iter().map(|c| c.display().to_string()).collect();
    panic!(
        "meshd binary not found (looked at: {}). Build it first with `cargo build -p meshd`, \
         or point {MESHD_BIN_ENV} at one.",
        list.join(", ")
    );
}

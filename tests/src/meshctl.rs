//! Running the built `meshctl` against an agent, bounded, and checking what it printed and its
//! exit code.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::cluster::meshctl_bin;
use crate::Api;

/// Bound of one meshctl run.
const MESHCTL_TIMEOUT: Duration = Duration::from_secs(60);

/// One meshctl run.
pub struct Ctl {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn describe(&self) -> String {
        format!(
            "`meshctl {}` exited {:?}\nstdout: {}\nstderr: {}",
            self.args,
            self.code,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }

    /// Panics unless it exited `code`; returns stdout.
    pub fn expect(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        &self.stdout
    }

    /// Panics unless it failed (exit 1) with one `Error:` line containing `want`.
    pub fn expect_error(&self, want: &str) {
        self.expect(1);
        let err = self.stderr.trim();
        assert!(
            err.starts_with("Error: ") && !err.contains('\n') && err.contains(want),
            "wanted one error line naming {want:?}: {}",
            self.describe()
        );
    }
}

/// Runs the built meshctl against `api`, with `stdin` as its input.
pub async fn meshctl_with(api: &Api, args: &[&str], stdin: Option<&str>) -> Ctl {
    let bin = meshctl_bin();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--http-addr")
        .arg(api.base())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
    }
    let out = tokio::time::timeout(MESHCTL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`meshctl {}` ran over {MESHCTL_TIMEOUT:?}", args.join(" ")))
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    Ctl {
        args: args.join(" "),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn meshctl(api: &Api, args: &[&str]) -> Ctl {
    meshctl_with(api, args, None).await
}

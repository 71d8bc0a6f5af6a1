//! Waiting on a condition with a deadline.
//!
//! Tests synchronize on observable state (an endpoint's answer, a metric), polled here, never on
//! a bare sleep. The poll interval starts at 20 ms and grows to 250 ms.

use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_millis(250);

/// Polls `cond` until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it returns `Some(value)` and returns the value; panics naming `what`
/// after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut poll = FIRST_POLL;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(poll.min(timeout - elapsed)).await;
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// Like [`wait_until`], but returns whether the condition held in time instead of panicking.
pub async fn poll_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut poll = FIRST_POLL;
    loop {
        if cond().await {
            return true;
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return false;
        }
        tokio::time::sleep(poll.min(timeout - elapsed)).await;
        poll = (poll * 2).min(MAX_POLL);
    }
}

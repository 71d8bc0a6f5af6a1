//! Coalescing of read-index requests: concurrent consistent reads share one leadership check
//! (one quorum round on the leader, one RPC from a follower or an agent) instead of one each.
//!
//! Linearizability is kept: a caller is only ever answered by a check that started after it
//! asked. Callers that arrive while a check runs wait for the next one, which starts as soon as
//! the running one ends and answers all of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use registry::ReadError;
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<u64, String>>;
/// One leadership check: the read index, or why there is none.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send>> + Send + Sync>;

#[derive(Default)]
struct Queue {
    running: bool,
    waiting: Vec<Waiter>,
}

/// Shared by every reader of one store.
#[derive(Clone)]
pub struct ReadIndex {
    queue: Arc<Mutex<Queue>>,
    check: Check,
}

impl ReadIndex {
    pub fn new(check: Check) -> ReadIndex {
        ReadIndex {
            queue: Arc::default(),
            check,
        }
    }

    /// The read index of a check that started after this call.
    pub async fn get(&self) -> Result<u64, ReadError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        match rx.await {
            Ok(r) => r.map_err(ReadError::Raft),
            Err(_) => Err(ReadError::Raft("the read-index check was dropped".into())),
        }
    }

    /// Runs checks until nobody waits: each answers the callers queued before it started.
    async fn run(self) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let result = (self.check)().await;
            for w in batch {
                let _ = w.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_checks_that_started_after_them() {
        let checks = Arc::new(AtomicU64::new(0));
        let counter = checks.clone();
        let ri = ReadIndex::new(Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(n)
            })
        }));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let ri = ri.clone();
            tasks.push(tokio::spawn(async move { ri.get().await }));
        }
        for t in tasks {
            let index = t.await.expect("task").expect("index");
            assert!(index >= 1);
        }
        let n = checks.load(Ordering::SeqCst);
        assert!(n <= 3, "1000 concurrent reads took {n} checks");
        // A caller after those is answered by a new check.
        assert_eq!(ri.get().await.expect("index"), n + 1);
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let ri = ReadIndex::new(Arc::new(|| {
            Box::pin(async { Err("no quorum".to_string()) })
        }));
        let e = ri.get().await.expect_err("fails");
        assert!(e.to_string().contains("no quorum"), "{e}");
    }
}

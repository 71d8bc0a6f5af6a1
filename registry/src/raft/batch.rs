//! Group commit of writes: concurrent [`Registry::write`](super::Registry::write) calls share
//! one Raft log entry.
//!
//! Every write becomes a job on a queue. A task takes everything queued (up to
//! [`MAX_BATCH`]) and submits it as one entry — the command itself when it is alone, else a
//! [`Command::Batch`] — with a bounded number of entries in Raft at once ([`max_in_flight`]).
//! A lone writer pays nothing extra; under load, Raft's per-entry cost (log append, disk sync,
//! replication, apply, notification) is paid once per batch instead of once per write. Each
//! write still gets its own response; all writes of a batch share its log index.
//!
//! How many entries may be in flight ([`max_in_flight`]): [`MAX_IN_FLIGHT`] (2: one being
//! made durable while the next fills) as a rule. A cluster's entry waits for a follower's round
//! trip and disk sync as well as the leader's own, several times a sync: while few writes are
//! outstanding (in flight plus queued) that latency bounds throughput, so up to
//! [`MAX_IN_FLIGHT_LIGHT`] entries overlap; with many, fuller entries pay the per-entry cost
//! fewer times. A single server's entry is done at its own sync, so 2 keep its disk busy.
//! (`tests/bench/cluster.sh`, 3 servers: with 2 entries always, 16 writers made 5 writes per
//! entry and lost to etcd; with 4 always, 64 writers made 12 per entry instead of 20 and lost.
//! `registration.sh`, one server: 4 at 16 writers gave 0.85× etcd's writes/s, 2 gave 0.97×.)

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::types::Raft;
use crate::command::{Command, Response};

/// Most writes one log entry carries.
pub(crate) const MAX_BATCH: usize = 512;
/// Most log entries of this queue in Raft at once on a single server, or in a cluster under
/// load: one being made durable while the next fills.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Most log entries in Raft at once in a cluster while few writes are outstanding.
pub(crate) const MAX_IN_FLIGHT_LIGHT: usize = 4;
/// Outstanding writes (in flight and queued) up to which the load counts as light.
const LIGHT_LOAD: usize = 32;

/// How many entries may be in Raft at once with `outstanding` writes in flight or queued and
/// `voters` voting servers.
fn max_in_flight(outstanding: usize, voters: usize) -> usize {
    if voters > 1 && outstanding <= LIGHT_LOAD {
        MAX_IN_FLIGHT_LIGHT
    } else {
        MAX_IN_FLIGHT
    }
}
/// Queue length; writers wait beyond it (backpressure).
const QUEUE: usize = 8192;

/// Why a batched write failed; cloneable, since every write of a batch gets it.
#[derive(Clone, Debug)]
pub(crate) enum BatchError {
    ForwardToLeader {
        leader_id: Option<u64>,
        leader_node: Option<BasicNode>,
    },
    Raft(String),
    Stopped,
    Fatal(String),
}

impl From<RaftError<u64, ClientWriteError<u64, BasicNode>>> for BatchError {
    fn from(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> BatchError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                BatchError::ForwardToLeader {
                    leader_id: f.leader_id,
                    leader_node: f.leader_node,
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                BatchError::Raft(e.to_string())
            }
            RaftError::Fatal(Fatal::Stopped) => BatchError::Stopped,
            RaftError::Fatal(e) => BatchError::Fatal(e.to_string()),
        }
    }
}

type Reply = oneshot::Sender<Result<(u64, Response), BatchError>>;

struct Job {
    cmd: Command,
    reply: Reply,
}

/// The queue's sending side; the task ends when it is dropped.
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    pub fn start(raft: Raft) -> (Batcher, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Batcher { tx }, tokio::spawn(run(raft, rx)))
    }

    /// Writes `cmd`; returns its log index and response once it is committed and applied.
    pub async fn write(&self, cmd: Command) -> Result<(u64, Response), BatchError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { cmd, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut in_flight = JoinSet::new();
    // Writes in the entries of `in_flight`.
    let mut writes_in_flight = 0usize;
    loop {
        let voters = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        let limit = max_in_flight(writes_in_flight + rx.len(), voters);
        tokio::select! {
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                writes_in_flight -= done.unwrap_or(0);
            }
            n = rx.recv_many(&mut jobs, MAX_BATCH), if in_flight.len() < limit => {
                if n == 0 {
                    break;
                }
                writes_in_flight += jobs.len();
                let jobs = std::mem::take(&mut jobs);
                let count = jobs.len();
                let raft = raft.clone();
                in_flight.spawn(async move {
                    commit(raft, jobs).await;
                    count
                });
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn commit(raft: Raft, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            let res = raft
                .client_write(job.cmd)
                .await
                .map(|r| (r.log_id.index, r.data))
                .map_err(BatchError::from);
            let _ = job.reply.send(res);
        }
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<Reply>) =
        jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
    let count = cmds.len();
    tracing::trace!(count, "writing a batch");
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(r) => match r.data {
            Response::Batch(responses) if responses.len() == count => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok((r.log_id.index, response)));
                }
            }
            other => {
                let e = BatchError::Fatal(format!(
                    "a batch of {count} writes was answered with {other:?}"
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            let e = BatchError::from(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_entries_overlap_only_in_a_cluster_while_few_writes_wait() {
        assert_eq!(max_in_flight(1, 3), MAX_IN_FLIGHT_LIGHT);
        assert_eq!(max_in_flight(LIGHT_LOAD, 3), MAX_IN_FLIGHT_LIGHT);
        assert_eq!(max_in_flight(LIGHT_LOAD + 1, 3), MAX_IN_FLIGHT);
        assert_eq!(max_in_flight(1, 1), MAX_IN_FLIGHT);
        assert_eq!(max_in_flight(LIGHT_LOAD + 1, 1), MAX_IN_FLIGHT);
        const { assert!(MAX_IN_FLIGHT < MAX_IN_FLIGHT_LIGHT) };
    }
}

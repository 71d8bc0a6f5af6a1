//! Faults injected into a running [`Cluster`] of three servers, Jepsen's nemesis: each is
//! applied, held, and healed by [`inject`], which returns what it did for the fault timeline.
//!
//! | fault | what happens |
//! |---|---|
//! | `kill-leader` / `kill-follower` | SIGKILL, restarted on the same data dir after the hold |
//! | `restart-leader` | SIGKILL of the leader, restarted at once: back before a follower stands |
//! | `pause-leader` | SIGSTOP past the followers' lease and election timeout, then SIGCONT: a leader that wakes up believing it still leads |
//! | `cut-link` | one server's mesh link down (both ways) |
//! | `leader-mute` | the leader's packets to both followers dropped; it still hears them (asymmetric) |
//! | `leader-deaf` | both followers' packets to the leader dropped; it still reaches them (asymmetric) |
//! | `split-pair` | the leader and one follower cannot reach each other; both reach the third |
//! | `pause-follower` | SIGSTOP of a follower for 3 s: its requests in flight finish late |
//! | `kill-all` | every server SIGKILLed at once and restarted after 2 s: only what a majority made durable survives |
//! | `snapshot-restart` | a follower SIGKILLed while the log moves past it (the servers run with a small snapshot threshold), so it restarts from its stored snapshot and catches up with the leader's |

use std::time::Duration;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::netns;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    KillLeader,
    RestartLeader,
    KillFollower,
    PauseLeader,
    CutLink,
    LeaderMute,
    LeaderDeaf,
    SplitPair,
    SnapshotRestart,
    PauseFollower,
    KillAll,
}

impl Fault {
    /// The fault named `name` (as [`Fault::name`] spells it).
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Every kind, in the order a schedule cycles through them.
    pub const ALL: [Fault; 11] = [
        Fault::KillLeader,
        Fault::RestartLeader,
        Fault::PauseLeader,
        Fault::CutLink,
        Fault::KillFollower,
        Fault::LeaderMute,
        Fault::SplitPair,
        Fault::SnapshotRestart,
        Fault::LeaderDeaf,
        Fault::PauseFollower,
        Fault::KillAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::RestartLeader => "restart-leader",
            Fault::KillFollower => "kill-follower",
            Fault::PauseLeader => "pause-leader",
            Fault::CutLink => "cut-link",
            Fault::LeaderMute => "leader-mute",
            Fault::LeaderDeaf => "leader-deaf",
            Fault::SplitPair => "split-pair",
            Fault::SnapshotRestart => "snapshot-restart",
            Fault::PauseFollower => "pause-follower",
            Fault::KillAll => "kill-all",
        }
    }

    /// How long the fault is held before it is healed. A follower waits for the leader's
    /// lease (`election_timeout_max`, 2 s) plus an election timeout (1-2 s) after the last
    /// heartbeat before it stands: faults meant to replace the leader are held 6 s, long enough
    /// for the others to elect one (a leader killed for 3 s comes back, from its committed
    /// vote, as the leader of the same term before anyone stood).
    pub fn hold(self) -> Duration {
        match self {
            Fault::KillLeader | Fault::PauseLeader | Fault::LeaderMute | Fault::LeaderDeaf => {
                Duration::from_secs(6)
            }
            Fault::CutLink | Fault::SplitPair => Duration::from_secs(5),
            Fault::SnapshotRestart => Duration::from_secs(4),
            Fault::KillFollower | Fault::PauseFollower => Duration::from_secs(3),
            Fault::KillAll => Duration::from_secs(2),
            Fault::RestartLeader => Duration::ZERO,
        }
    }
}

/// What one fault did, on the history's clock (milliseconds since the run began).
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    pub fault: Fault,
    /// The servers it hit, by name.
    pub victims: Vec<String>,
    /// The leader when it began (a server name), if one was known.
    pub leader: Option<String>,
    pub start_ms: u64,
    pub healed_ms: u64,
}

/// Applies `fault`, holds it, heals it. `leader` is the current leader's index, if known;
/// `pick` chooses among candidates (the caller's seeded randomness). `clock_ms` reads the
/// history's clock.
pub async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    leader: Option<usize>,
    pick: &mut dyn FnMut(usize) -> usize,
    clock_ms: &dyn Fn() -> u64,
) -> anyhow::Result<Injected> {
    let n = cluster.servers().len();
    let leader_or_any = leader.unwrap_or_else(|| pick(n));
    let others: Vec<usize> = (0..n).filter(|&i| i != leader_or_any).collect();
    let follower = others[pick(others.len())];
    let name = |c: &Cluster, i: usize| c.server(i).name().to_string();
    let leader_name = leader.map(|l| name(cluster, l));
    let start_ms = clock_ms();
    let victims: Vec<usize> = match fault {
        Fault::KillLeader
        | Fault::RestartLeader
        | Fault::PauseLeader
        | Fault::LeaderMute
        | Fault::LeaderDeaf => vec![leader_or_any],
        Fault::KillFollower | Fault::SnapshotRestart | Fault::PauseFollower => vec![follower],
        Fault::CutLink => vec![pick(n)],
        Fault::KillAll => (0..n).collect(),
        Fault::SplitPair => vec![leader_or_any, follower],
    };
    for &v in &victims {
        cluster
            .server(v)
            .note(&format!("nemesis: {}", fault.name()));
    }
    match fault {
        Fault::KillLeader | Fault::RestartLeader | Fault::KillFollower | Fault::SnapshotRestart => {
            let v = victims[0];
            cluster.server_mut(v).kill9();
            tokio::time::sleep(fault.hold()).await;
            cluster.server_mut(v).restart().await;
        }
        Fault::KillAll => {
            for &v in &victims {
                cluster.server_mut(v).kill9();
            }
            tokio::time::sleep(fault.hold()).await;
            for &v in &victims {
                cluster.server_mut(v).restart().await;
            }
        }
        Fault::PauseLeader | Fault::PauseFollower => {
            let v = victims[0];
            let pid = cluster
                .server(v)
                .pid()
                .ok_or_else(|| anyhow::anyhow!("{} is not running", name(cluster, v)))?;
            netns::send_signal(pid, libc::SIGSTOP);
            tokio::time::sleep(fault.hold()).await;
            netns::send_signal(pid, libc::SIGCONT);
        }
        Fault::CutLink => {
            let v = victims[0];
            cluster.cut_server(v);
            tokio::time::sleep(fault.hold()).await;
            cluster.heal_server(v);
        }
        Fault::LeaderMute | Fault::LeaderDeaf => {
            let l = victims[0];
            let host = |c: &Cluster, i: usize| c.server(i).host();
            let pairs: Vec<(usize, usize)> = others
                .iter()
                .map(|&o| {
                    let (a, b) = (host(cluster, l), host(cluster, o));
                    if fault == Fault::LeaderMute {
                        (a, b)
                    } else {
                        (b, a)
                    }
                })
                .collect();
            for &(a, b) in &pairs {
                cluster.net().block(a, b)?;
            }
            tokio::time::sleep(fault.hold()).await;
            for &(a, b) in &pairs {
                cluster.net().unblock(a, b)?;
            }
        }
        Fault::SplitPair => {
            let (a, b) = (
                cluster.server(victims[0]).host(),
                cluster.server(victims[1]).host(),
            );
            cluster.net().block(a, b)?;
            cluster.net().block(b, a)?;
            tokio::time::sleep(fault.hold()).await;
            cluster.net().unblock(a, b)?;
            cluster.net().unblock(b, a)?;
        }
    }
    for &v in &victims {
        cluster
            .server(v)
            .note(&format!("nemesis: {} healed", fault.name()));
    }
    Ok(Injected {
        fault,
        victims: victims.iter().map(|&v| name(cluster, v)).collect(),
        leader: leader_name,
        start_ms,
        healed_ms: clock_ms(),
    })
}

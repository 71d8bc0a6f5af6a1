//! The change feed: the most recent applied commands, each with its Raft log index, kept in
//! memory so agents' watch streams can follow the registry.
//!
//! A reader holds the index its local state reflects and asks for the commands after it; it
//! replays them with [`State::apply`](crate::State::apply) on its own state and reaches exactly
//! the server's state (commands are deterministic). The feed keeps at most `max_entries`
//! commands: a reader that fell behind the oldest one kept (or that starts from nothing) gets a
//! [`FeedGap`] and must load a full snapshot instead.
//!
//! Invariant: every command with an index in `(floor, applied]` is kept. Log entries that carry
//! no command (blank and membership entries) only advance `applied`.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::command::Command;

/// How many commands a feed keeps unless told otherwise.
pub const DEFAULT_FEED_ENTRIES: usize = 65_536;

/// One recorded command and the log index it was applied at.
pub type FeedEntry = (u64, Arc<Command>);

/// A reader asked for changes the feed no longer keeps (or never had).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "changes after index {from} are no longer kept (oldest kept after {floor}); a full snapshot is needed"
)]
pub struct FeedGap {
    /// The index the reader asked to resume from.
    pub from: u64,
    /// The feed's floor: it can serve readers at this index or later.
    pub floor: u64,
}

/// The recent commands of the log, oldest first.
#[derive(Debug)]
pub struct Feed {
    /// Every command after this index is kept.
    floor: u64,
    /// Index of the last log entry pushed.
    applied: u64,
    entries: VecDeque<FeedEntry>,
    max_entries: usize,
}

impl Feed {
    /// An empty feed that records everything after `floor` (the index of the state it starts
    /// from), keeping at most `max_entries` commands.
    pub fn new(floor: u64, max_entries: usize) -> Feed {
        Feed {
            floor,
            applied: floor,
            entries: VecDeque::new(),
            max_entries,
        }
    }

    /// Records the log entry at `index`, called for every applied entry in log order: `Some`
    /// for a command, `None` for an entry without one (it only advances `applied`). The oldest
    /// commands beyond `max_entries` are dropped and the floor rises to the last one dropped.
    /// An index at or below `applied` was recorded already and is ignored.
    pub fn push(&mut self, index: u64, cmd: Option<Arc<Command>>) {
        if index <= self.applied {
            return;
        }
        self.applied = index;
        if let Some(cmd) = cmd {
            self.entries.push_back((index, cmd));
        }
        while self.entries.len() > self.max_entries {
            match self.entries.pop_front() {
                Some((evicted, _)) => self.floor = evicted,
                None => break,
            }
        }
        if self.max_entries == 0 {
            // Nothing is kept: only readers that are up to date can be served.
            self.floor = self.applied;
        }
    }

    /// Forgets every command, after the state was replaced by a snapshot taken at `floor`.
    pub fn reset(&mut self, floor: u64) {
        self.entries.clear();
        self.floor = floor;
        self.applied = floor;
    }

    /// Index of the last log entry recorded.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The lowest index a reader may resume from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// How many commands are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The commands with `from < index <= applied`, oldest first, at most `max` of them, and
    /// the index they bring a reader at `from` to: the last returned command's index when `max`
    /// cut the answer short, else `applied` (a reader already at or past `applied` gets nothing
    /// and stays at `from`). Several commands may share an index only if pushed so, which
    /// [`push`](Feed::push) prevents.
    ///
    /// `Err(FeedGap)` when `from < floor`: some of those commands are no longer kept.
    pub fn since(&self, from: u64, max: usize) -> Result<(Vec<FeedEntry>, u64), FeedGap> {
        if from < self.floor {
            return Err(FeedGap {
                from,
                floor: self.floor,
            });
        }
        if from >= self.applied {
            return Ok((Vec::new(), from));
        }
        let start = self.entries.partition_point(|(i, _)| *i <= from);
        let available = self.entries.len() - start;
        let out: Vec<FeedEntry> = self
            .entries
            .iter()
            .skip(start)
            .take(max)
            .map(|(i, c)| (*i, c.clone()))
            .collect();
        let reached = if out.len() < available {
            out.last().map(|(i, _)| *i).unwrap_or(from)
        } else {
            self.applied
        };
        Ok((out, reached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> Option<Arc<Command>> {
        Some(Arc::new(Command::KvDelete {
            key: key.into(),
            recurse: false,
            cas: None,
        }))
    }

    fn indexes(v: &[FeedEntry]) -> Vec<u64> {
        v.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn since_returns_commands_after_from_and_reaches_applied() {
        let mut f = Feed::new(10, 100);
        f.push(11, kv("a"));
        f.push(12, None);
        f.push(13, kv("b"));
        f.push(14, None);
        assert_eq!(f.applied(), 14);
        assert_eq!(f.len(), 2);
        let (cmds, to) = f.since(10, 100).expect("kept");
        assert_eq!(indexes(&cmds), vec![11, 13]);
        assert_eq!(to, 14);
        let (cmds, to) = f.since(11, 100).expect("kept");
        assert_eq!(indexes(&cmds), vec![13]);
        assert_eq!(to, 14);
        let (cmds, to) = f.since(13, 100).expect("kept");
        assert!(cmds.is_empty());
        assert_eq!(to, 14);
        let (cmds, to) = f.since(14, 100).expect("kept");
        assert!(cmds.is_empty());
        assert_eq!(to, 14);
        // A reader ahead of this feed stays where it is.
        let (cmds, to) = f.since(20, 100).expect("kept");
        assert!(cmds.is_empty());
        assert_eq!(to, 20);
    }

    #[test]
    fn since_below_floor_is_a_gap() {
        let f = Feed::new(10, 100);
        assert!(matches!(
            f.since(9, 10),
            Err(FeedGap { from: 9, floor: 10 })
        ));
        let err = f.since(3, 10).expect_err("gap");
        assert!(err.to_string().contains("after index 3"), "{err}");
    }

    #[test]
    fn max_cuts_the_answer_at_the_last_returned_command() {
        let mut f = Feed::new(0, 100);
        for i in 1..=5 {
            f.push(i, kv("k"));
        }
        f.push(6, None);
        let (cmds, to) = f.since(0, 2).expect("kept");
        assert_eq!(indexes(&cmds), vec![1, 2]);
        assert_eq!(to, 2);
        let (cmds, to) = f.since(to, 3).expect("kept");
        assert_eq!(indexes(&cmds), vec![3, 4, 5]);
        assert_eq!(to, 6);
        let (cmds, to) = f.since(2, 0).expect("kept");
        assert!(cmds.is_empty());
        assert_eq!(to, 2);
    }

    #[test]
    fn eviction_raises_the_floor() {
        let mut f = Feed::new(0, 3);
        for i in 1..=5 {
            f.push(i, kv("k"));
        }
        assert_eq!(f.len(), 3);
        assert_eq!(f.floor(), 2);
        assert!(f.since(1, 10).is_err());
        let (cmds, to) = f.since(2, 10).expect("kept");
        assert_eq!(indexes(&cmds), vec![3, 4, 5]);
        assert_eq!(to, 5);
    }

    #[test]
    fn zero_capacity_serves_only_readers_that_are_up_to_date() {
        let mut f = Feed::new(0, 0);
        f.push(1, kv("k"));
        f.push(2, None);
        assert_eq!(f.floor(), 2);
        assert!(f.since(1, 10).is_err());
        assert_eq!(f.since(2, 10).expect("kept").1, 2);
    }

    #[test]
    fn reset_forgets_everything() {
        let mut f = Feed::new(0, 10);
        f.push(1, kv("k"));
        f.reset(50);
        assert_eq!((f.floor(), f.applied(), f.len()), (50, 50, 0));
        assert!(f.since(10, 10).is_err());
        // Entries at or below applied are not recorded twice.
        f.push(50, kv("k"));
        assert!(f.is_empty());
        f.push(51, kv("k"));
        assert_eq!(indexes(&f.since(50, 10).expect("kept").0), vec![51]);
    }
}

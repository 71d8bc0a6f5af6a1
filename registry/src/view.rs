//! An agent's local view of the registry: a [`State`] rebuilt from a server's snapshot and kept
//! current by replaying the same commands the servers applied, at the same indexes, so it
//! reaches exactly the servers' state. Agents serve `?stale` reads, DNS and proxy decisions
//! from it without a network round trip.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use tokio::sync::watch;

use crate::command::Command;
use crate::state::{State, StateImage};

/// The local view; cheap to clone.
#[derive(Clone)]
pub struct View {
    state: Arc<RwLock<State>>,
    applied: Arc<watch::Sender<u64>>,
}

impl Default for View {
    fn default() -> Self {
        View::new()
    }
}

impl View {
    pub fn new() -> View {
        View {
            state: Arc::default(),
            applied: Arc::new(watch::channel(0).0),
        }
    }

    /// The view, read-locked. Never hold the guard across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of the index the view reflects.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The Raft index the view reflects.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Replaces the view with a server's state image at `index`.
    pub fn load(&self, image: StateImage, index: u64) {
        let state = State::from_image(image);
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        self.applied.send_replace(index);
    }

    /// Applies the commands a server applied after the view's index, then moves the view to
    /// `upto`. Commands at or below the current index are skipped (a resent delta).
    pub fn apply(&self, entries: &[(u64, Command)], upto: u64) {
        let current = self.applied();
        if entries.iter().any(|(i, _)| *i > current) {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            for (index, cmd) in entries.iter().filter(|(i, _)| *i > current) {
                state.apply(*index, cmd);
            }
        }
        if upto > current {
            self.applied.send_replace(upto);
        }
    }

    /// Waits until the view reflects `index`; false on timeout.
    pub async fn wait_for(&self, index: u64, timeout: std::time::Duration) -> bool {
        wait_index(self.subscribe(), index, timeout).await
    }
}

/// Waits until an applied-index channel reaches `index`; false on timeout or when its sender
/// is gone.
pub(crate) async fn wait_index(
    mut rx: watch::Receiver<u64>,
    index: u64,
    timeout: std::time::Duration,
) -> bool {
    tokio::time::timeout(timeout, rx.wait_for(|a| *a >= index))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false)
}

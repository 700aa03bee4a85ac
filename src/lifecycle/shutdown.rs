//! The shutdown coordinator: one cancellation token and one task tracker for the whole daemon.
//!
//! Every long-running task is spawned through [`Shutdown::spawn`], so none is detached: at
//! shutdown the coordinator knows how many are left and can wait for them under a deadline.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by everything that must stop with the daemon. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh coordinator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a tracked task on the current tokio runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// A child token: cancelled with the daemon, or on its own (e.g. one listener).
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Completes when shutdown begins.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begins shutdown: every task watching the token sees it.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Number of tracked tasks still running.
    pub fn remaining(&self) -> usize {
        self.tracker.len()
    }

    /// Waits for every tracked task, up to `deadline`. Returns how many were still running.
    pub async fn wait(&self, deadline: Duration) -> usize {
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

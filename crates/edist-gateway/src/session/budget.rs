//! Byte budgets: what a session (and all sessions of a gateway together) may hold on its way to
//! the fabric; a queued packet holds its part until its lane has written it (backpressure).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte budget: queued packets hold part of it until their lane has written them.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, u32::MAX as usize);
        Budget { sem: Arc::new(Semaphore::new(total)), total }
    }

    /// Takes `n` bytes, waiting while the budget is used up. A packet larger than the whole
    /// budget takes all of it, so it still passes, alone.
    pub(super) async fn take(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().acquire_many_owned(n.clamp(1, self.total) as u32).await.ok()
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.total - self.sem.available_permits()
    }
}

/// What a queued packet holds of the session's and the gateway's budgets.
pub(super) type Held = (OwnedSemaphorePermit, OwnedSemaphorePermit);

//! Demand reads go first: a fetch some reader waits for is counted while it
//! waits (unless the block is being fetched already), and a background
//! fetch (prefetch) starts only while none is.
//! Whole-block loads in flight are known too, so that a read of part of a
//! block being fetched whole waits for that fetch instead of issuing a
//! second one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::id::BlockId;

#[derive(Debug, Default)]
pub(super) struct Demand {
    waiting: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One reader waiting; dropped when it has its bytes (or an error).
pub(super) struct Waiting<'a>(&'a Demand);

impl Demand {
    pub fn enter(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// Returns once no reader waits on a fetch.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: a reader leaving between the
            // check and the await still wakes this one.
            notified.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Blocks being loaded whole right now.
#[derive(Debug, Default)]
pub(super) struct Loading(Mutex<HashSet<BlockId>>);

/// A whole-block load under way; dropped when it ends.
pub(super) struct Load<'a>(&'a Loading, BlockId);

impl Loading {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<BlockId>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, id: BlockId) -> Load<'_> {
        self.set().insert(id);
        Load(self, id)
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.set().contains(id)
    }
}

impl Drop for Load<'_> {
    fn drop(&mut self) {
        self.0.set().remove(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_waits_until_no_reader_does() {
        let d = std::sync::Arc::new(Demand::default());
        let reader = d.enter();
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.idle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "ran while a reader waited");
        drop(reader);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken once the reader left")
            .unwrap();
    }
}

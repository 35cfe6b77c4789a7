//! What keeps a garbage collection from taking what a request is making,
//! without a lock over either: requests that make things a collection
//! sweeps (blocks, index blobs, layers, merged views, snapshot state) do
//! so inside a [`Window`], naming each thing they make or reuse; while any
//! window is open or a collection runs, those names are kept, and the
//! collection sweeps nothing named since it began.
//!
//! Why that suffices: a thing made inside a window is referenced by a
//! record before the window closes. A collection that read the records
//! after that sees it live; one that read them before began while the
//! window was open (or before it opened), so the name was kept.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_snapshots::tonic::async_trait;
use slayerfs_chunkstore::{BlockStore, ObjectKey, StoreError};

/// Something a collection may sweep.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Swept {
    /// A block or index blob in the node's own store.
    Object(ObjectKey),
    /// A loaded layer, by index digest.
    Layer(String),
    /// A merged view, by chain key.
    View(String),
    /// A snapshot's state (upper records, state directory), by id.
    State(u64),
}

#[derive(Default)]
struct State {
    windows: usize,
    collecting: bool,
    named: HashSet<Swept>,
    /// What a collection is removing right now (outside the lock).
    sweeping: Option<Swept>,
}

#[derive(Default)]
pub(crate) struct Barrier {
    state: Mutex<State>,
    /// Signalled when a sweep ends.
    swept: Condvar,
}

/// An open window; closes when dropped.
pub(crate) struct Window {
    barrier: Arc<Barrier>,
}

impl Barrier {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a window: from now until it closes, what is named is kept
    /// from a collection.
    pub(crate) fn open(self: &Arc<Self>) -> Window {
        self.state().windows += 1;
        Window {
            barrier: self.clone(),
        }
    }

    /// Names something made or reused (before it is made); waits while a
    /// collection is removing that very thing (it is then made again).
    pub(crate) fn name(&self, what: Swept) {
        let mut s = self.state();
        while s.sweeping.as_ref() == Some(&what) {
            s = self.swept.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.windows > 0 || s.collecting {
            s.named.insert(what);
        }
    }

    /// A collection begins: nothing named from now on is forgotten until
    /// [`Self::end_collection`].
    pub(crate) fn begin_collection(&self) {
        self.state().collecting = true;
    }

    pub(crate) fn end_collection(&self) {
        let mut s = self.state();
        s.collecting = false;
        s.forget_if_quiet();
    }

    /// Runs `sweep` unless `what` was named since the collection began;
    /// a request naming that thing meanwhile waits for the sweep to end
    /// (it then makes it again), requests naming anything else do not.
    pub(crate) fn sweep<R>(&self, what: &Swept, sweep: impl FnOnce() -> R) -> Option<R> {
        {
            let mut s = self.state();
            if s.named.contains(what) {
                return None;
            }
            s.sweeping = Some(what.clone());
        }
        let r = sweep();
        self.state().sweeping = None;
        self.swept.notify_all();
        Some(r)
    }
}

impl State {
    fn forget_if_quiet(&mut self) {
        if self.windows == 0 && !self.collecting {
            self.named = HashSet::new();
        }
    }
}

impl Window {
    pub(crate) fn name(&self, what: Swept) {
        self.barrier.name(what);
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let mut s = self.barrier.state();
        s.windows = s.windows.saturating_sub(1);
        s.forget_if_quiet();
    }
}

/// The node's own store, naming every object it is asked about or given
/// (a block found present is reused just as surely as one written).
#[derive(Debug)]
pub(crate) struct NamingStore {
    pub(crate) inner: Arc<dyn BlockStore>,
    pub(crate) barrier: Arc<Barrier>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Barrier")
    }
}

#[async_trait]
impl BlockStore for NamingStore {
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        self.inner.get(key).await
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<slayerfs_chunkstore::RangeRead, StoreError> {
        self.inner.get_range(key, range).await
    }

    async fn list_traces(
        &self,
        chain: &slayerfs_chunkstore::ChainDigest,
    ) -> Result<Vec<slayerfs_chunkstore::TraceDigest>, StoreError> {
        self.inner.list_traces(chain).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        self.barrier.name(Swept::Object(*key));
        self.inner.exists(key).await
    }

    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError> {
        self.barrier.name(Swept::Object(*key));
        self.inner.put_replacing(key, data).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_in_a_window_or_during_a_collection_is_not_swept() {
        let b = Arc::new(Barrier::default());
        let x = Swept::Layer("x".into());
        // Nothing open: naming keeps nothing.
        b.name(x.clone());
        b.begin_collection();
        assert_eq!(b.sweep(&x, || 1), Some(1));
        b.end_collection();

        // Named in a window opened before the collection began.
        let w = b.open();
        w.name(x.clone());
        b.begin_collection();
        assert_eq!(b.sweep(&x, || 1), None);
        drop(w);
        // Still kept: the collection runs.
        assert_eq!(b.sweep(&x, || 1), None);
        b.end_collection();

        // Named after the collection began, in a window.
        b.begin_collection();
        let w = b.open();
        w.name(x.clone());
        drop(w);
        assert_eq!(b.sweep(&x, || 1), None);
        assert_eq!(b.sweep(&Swept::State(3), || 2), Some(2));
        b.end_collection();

        // During a sweep, naming something else goes on; naming the thing
        // swept waits for the sweep.
        b.begin_collection();
        let y = Swept::View("y".into());
        let started = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            let b2 = &b;
            let started = &started;
            let waiter = scope.spawn(move || {
                started.wait();
                let t0 = std::time::Instant::now();
                b2.name(Swept::View("y".into()));
                t0.elapsed()
            });
            b.sweep(&y, || {
                started.wait();
                b.name(Swept::View("other".into()));
                std::thread::sleep(std::time::Duration::from_millis(200));
            });
            let waited = waiter.join().unwrap();
            assert!(
                waited >= std::time::Duration::from_millis(150),
                "{waited:?}"
            );
        });
        b.end_collection();

        // Quiet again: forgotten.
        b.begin_collection();
        assert_eq!(b.sweep(&x, || 1), Some(1));
        b.end_collection();
    }
}

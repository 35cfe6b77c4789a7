//! Per-name locks: a request holds the snapshots it changes (and shared
//! work it does, such as building one chain's merged view or pulling one
//! layer), never the whole node, so a long Commit or a slow pull stalls
//! only what waits on the same names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// What a lock is taken on. The kinds never collide: snapshot keys cannot
/// hold a NUL, the others start with one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum LockName {
    /// A snapshot key (or a name a Commit is about to take).
    Snapshot(String),
    /// The merged view of a chain of layers, by chain key.
    View(String),
}

/// Locks by name, made when first wanted and dropped when no one holds or
/// waits for them.
#[derive(Default)]
pub(crate) struct Locks {
    held: Mutex<HashMap<LockName, Arc<tokio::sync::Mutex<()>>>>,
}

/// The locks a request holds, released when dropped.
pub(crate) struct Held<'a> {
    locks: &'a Locks,
    guards: Vec<(LockName, OwnedMutexGuard<()>)>,
}

impl Locks {
    /// Takes every lock in `names`, in one order whoever asks, so two
    /// requests wanting the same two names cannot deadlock.
    pub(crate) async fn lock(&self, mut names: Vec<LockName>) -> Held<'_> {
        names.sort();
        names.dedup();
        let mut guards = Vec::with_capacity(names.len());
        for name in names {
            let lock = self.map().entry(name.clone()).or_default().clone();
            guards.push((name, lock.lock_owned().await));
        }
        Held {
            locks: self,
            guards,
        }
    }

    /// The lock on one snapshot key.
    pub(crate) async fn snapshot(&self, key: &str) -> Held<'_> {
        self.lock(vec![LockName::Snapshot(key.to_string())]).await
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<LockName, Arc<tokio::sync::Mutex<()>>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        for (name, guard) in self.guards.drain(..) {
            drop(guard);
            // Only the map's own reference left: no one holds or waits.
            if map.get(&name).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_name_waits_other_names_do_not_and_nothing_is_kept() {
        let locks = Arc::new(Locks::default());
        let a = locks.snapshot("a").await;
        // Another name is free.
        let b = tokio::time::timeout(Duration::from_secs(1), locks.snapshot("b")).await;
        assert!(b.is_ok(), "a lock on b waited for a");
        drop(b);
        // The same name waits.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _a = l2.snapshot("a").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "two holders of a");
        drop(a);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0, "locks kept after use");
    }

    #[tokio::test]
    async fn names_are_taken_in_one_order() {
        let locks = Arc::new(Locks::default());
        let names = |x: &str, y: &str| {
            vec![
                LockName::Snapshot(x.to_string()),
                LockName::Snapshot(y.to_string()),
            ]
        };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let l = locks.clone();
            let (x, y) = if i % 2 == 0 { ("p", "q") } else { ("q", "p") };
            let n = names(x, y);
            tasks.push(tokio::spawn(async move {
                let _held = l.lock(n).await;
                tokio::task::yield_now().await;
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("deadlock")
                .unwrap();
        }
    }
}

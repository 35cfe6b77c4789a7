//! Garbage collection: freeing what no snapshot needs any more.
//!
//! Removing a snapshot drops its record, its mount and its upper at once;
//! what it may share with others is collected here, by mark and sweep with
//! no lock that requests wait for: the mark reads the records as they are,
//! and the sweep leaves whatever a request named since the collection
//! began (see [`super::barrier`]), so a Commit writing blocks or a Prepare
//! pulling a layer meanwhile loses nothing:
//! - layers no committed snapshot (nor the empty base) is made of, and
//!   their index blobs;
//! - merged views no active or view snapshot stands on, except those of
//!   committed snapshots without children (the tops of images, where the
//!   next container will stand) and the base layer's;
//! - upper records and state directories without a snapshot (left by a
//!   removal a crash interrupted);
//! - blocks no slice of a layer or an upper points at.
//!
//! containerd calls Cleanup after its own garbage collection removed
//! snapshots; a Remove of a committed snapshot also schedules a collection.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use slayerfs_chunkstore::{BlockId, ObjectKey};
use slayerfs_layerfs::store::merged::{chain_key, chains, remove_chain};
use slayerfs_layerfs::store::upper::Upper;
use slayerfs_proto::store::SnapshotKind;

use super::background;
use super::barrier::Swept;
use super::error::{internal, Result};
use super::SlayerSnapshotter;
use crate::daemon::records::Snapshot;
use crate::fusemount::{detach, mounted_device};

/// What one collection freed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub layers: usize,
    pub views: usize,
    pub uppers: usize,
    pub state_dirs: usize,
    pub blocks: usize,
    pub indexes: usize,
    /// Temporary files of writes a dead process abandoned.
    pub abandoned_writes: usize,
    /// Disk space of the removed blocks, index blobs and abandoned writes.
    pub bytes: u64,
}

impl SlayerSnapshotter {
    /// Collects garbage now.
    pub async fn collect_garbage(self: &Arc<Self>) -> Result<GcReport> {
        let _one = self.collecting.lock().await;
        let this = self.clone();
        self.barrier.begin_collection();
        // At background priority: a collection is never what a node waits for.
        let report = background::run_alone("collecting", move || this.collect_now()).await;
        self.barrier.end_collection();
        let report = report.map_err(internal)?.map_err(internal)?;
        crate::metrics::daemon::events().collected(report.bytes);
        if report != GcReport::default() {
            tracing::info!(?report, "garbage collected");
        }
        Ok(report)
    }

    /// Schedules a collection in the background, unless one is pending.
    pub(super) fn schedule_gc(self: &Arc<Self>) {
        if self.gc_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        self.runtime.spawn(async move {
            // Cleared before collecting: a removal while this one runs
            // schedules the next.
            this.gc_pending.store(false, Ordering::Release);
            if let Err(e) = this.collect_garbage().await {
                tracing::warn!(error = %e, "background garbage collection");
            }
        });
    }

    fn collect_now(&self) -> anyhow::Result<GcReport> {
        let mut report = GcReport::default();
        // The records as they are now; requests go on changing them, so
        // everything below works from this one reading (see the barrier for
        // what they make meanwhile).
        let snaps = self.records.all()?;
        let by_key: HashMap<&str, &Snapshot> = snaps.iter().map(|s| (s.key.as_str(), s)).collect();
        let parents: HashSet<&str> = snaps.iter().map(|s| s.parent.as_str()).collect();

        let mut live_layers: HashSet<String> = HashSet::new();
        live_layers.insert(self.base.record.index_digest.clone());
        // The view of the base layer alone (under every snapshot without a
        // parent) is tiny and always wanted again.
        let mut live_views: HashSet<String> = HashSet::new();
        live_views.insert(chain_key(std::slice::from_ref(&self.base)));
        let mut live_ids: HashSet<u64> = HashSet::new();
        for s in &snaps {
            let stands_on = match s.kind {
                SnapshotKind::Committed => {
                    live_layers.insert(s.layer.clone());
                    if parents.contains(s.key.as_str()) {
                        continue;
                    }
                    &s.key
                }
                _ => {
                    live_ids.insert(s.id);
                    &s.parent
                }
            };
            // A chain that cannot be worked out stops the collection: what
            // is live must be known before anything is deleted.
            let chain = self
                .chain_in(&by_key, stands_on)
                .with_context(|| format!("the layers under snapshot {}", s.key))?;
            // (None: a parent removed while the records were read, so the
            // snapshot standing on it was removed before it: nothing to keep.)
            if let Some(chain) = chain {
                live_views.insert(chain_key(&chain));
            }
        }

        let barrier = &self.barrier;
        for view in chains(&self.layers)? {
            if live_views.contains(&view.key) {
                continue;
            }
            let swept = barrier.sweep(&Swept::View(view.key.clone()), || {
                remove_chain(&self.layers, &view.key)
            });
            if swept.transpose()? == Some(true) {
                report.views += 1;
            }
        }
        for layer in self.layers.layers()? {
            if live_layers.contains(&layer.record.index_digest) {
                continue;
            }
            let digest = layer.record.index_digest.parse()?;
            let name = Swept::Layer(layer.record.index_digest.clone());
            let swept = barrier.sweep(&name, || self.layers.remove_layer(&digest));
            if swept.transpose()? == Some(true) {
                report.layers += 1;
            }
        }
        for id in Upper::ids(&self.db)? {
            if live_ids.contains(&id.0) {
                continue;
            }
            let swept = barrier.sweep(&Swept::State(id.0), || Upper::destroy(&self.db, id));
            if swept.transpose()?.is_some() {
                report.uppers += 1;
            }
        }
        report.state_dirs = self.sweep_state_dirs(&live_ids)?;

        let mut blocks: HashSet<BlockId> = HashSet::new();
        self.layers.blocks_in_use(&mut blocks)?;
        Upper::blocks_in_use(&self.db, &mut blocks)?;
        for key in self.local.list()? {
            let garbage = match &key {
                ObjectKey::Block(id) => !blocks.contains(id),
                ObjectKey::Index(d) => !live_layers.contains(&d.to_string()),
                // Kilobytes, and worth keeping for the image's next pull.
                ObjectKey::Trace(..) => false,
            };
            if !garbage {
                continue;
            }
            let Some(bytes) = barrier
                .sweep(&Swept::Object(key), || self.local.remove(&key))
                .transpose()?
            else {
                continue;
            };
            report.bytes += bytes;
            match key {
                ObjectKey::Block(_) => report.blocks += 1,
                ObjectKey::Index(_) => report.indexes += 1,
                ObjectKey::Trace(..) => {}
            }
        }
        let (abandoned, bytes) = self.local.remove_abandoned_writes()?;
        report.abandoned_writes = abandoned;
        report.bytes += bytes;
        self.db.flush()?;
        Ok(report)
    }

    /// The layers under a snapshot standing on `parent`, bottom first, from
    /// one reading of the records; `None` if a parent is not in it.
    fn chain_in(
        &self,
        records: &HashMap<&str, &Snapshot>,
        parent: &str,
    ) -> Result<Option<Vec<slayerfs_layerfs::store::layers::Layer>>> {
        let mut layers = Vec::new();
        let mut key = parent;
        while !key.is_empty() {
            let Some(snap) = records.get(key) else {
                return Ok(None);
            };
            layers.push(self.layer_of(snap)?);
            key = &snap.parent;
        }
        layers.push(self.base.clone());
        layers.reverse();
        Ok(Some(layers))
    }

    /// Removes `snapshots/<id>` directories of no active or view snapshot.
    fn sweep_state_dirs(&self, live: &HashSet<u64>) -> anyhow::Result<usize> {
        let dir = self.root.join("snapshots");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let id = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok());
            if id.is_some_and(|id| live.contains(&id)) {
                continue;
            }
            let remove = || -> anyhow::Result<bool> {
                let fs = e.path().join("fs");
                if mounted_device(&fs).is_some() {
                    detach(&fs);
                }
                // Never delete through a mount that would not go.
                if mounted_device(&fs).is_some() {
                    tracing::warn!(path = %fs.display(), "left in place: still mounted");
                    return Ok(false);
                }
                let path = e.path();
                if e.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("removing {}", path.display()))?;
                Ok(true)
            };
            let removed = match id {
                // A snapshot's state a request may be making right now.
                Some(id) => self.barrier.sweep(&Swept::State(id), remove),
                None => Some(remove()),
            };
            if removed.transpose()? == Some(true) {
                n += 1;
            }
        }
        Ok(n)
    }
}

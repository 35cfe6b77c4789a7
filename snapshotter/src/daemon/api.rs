//! The snapshots API: each gRPC call of containerd's snapshots service as
//! an operation on a [`SlayerSnapshotter`], one tracing span per call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Snapshotter, Usage};
use futures_util::FutureExt;
use slayerfs_layerfs::store::upper::{Upper, UpperId};
use slayerfs_proto::store::SnapshotKind;

use crate::metrics;
use tracing::Instrument;

use super::barrier::Swept;
use super::error::{internal, Result, ServiceError};
use super::remote::LazyLayer;
use super::{import_reader, info_of, SlayerSnapshotter};
use crate::daemon::filters::Filter;
use crate::daemon::locks::LockName;
use crate::daemon::records::RecordError;

type InfoStream = tokio_stream::Iter<std::vec::IntoIter<std::result::Result<Info, ServiceError>>>;

impl SlayerSnapshotter {
    async fn do_stat(self: &Arc<Self>, key: String) -> Result<Info> {
        Ok(info_of(&self.records.get(&key)?))
    }

    async fn do_update(
        self: &Arc<Self>,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info> {
        let labels: BTreeMap<String, String> = info.labels.into_iter().collect();
        let snap = self
            .records
            .update(&info.name, &labels, &fieldpaths.unwrap_or_default())?;
        Ok(info_of(&snap))
    }

    async fn do_usage(self: &Arc<Self>, key: String) -> Result<Usage> {
        let snap = self.records.get(&key)?;
        let (inodes, size) = match snap.kind {
            // A committed snapshot's layer; the blocks may be shared with
            // other layers, so this is what it holds, not what it alone uses.
            SnapshotKind::Committed => {
                let layer = self.layer_of(&snap)?;
                self.layers.usage(layer.id).map_err(internal)?
            }
            // An active snapshot's upper: its records and its data on disk.
            _ => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    Upper::usage(
                        &this.db,
                        UpperId(snap.id),
                        &this.state_dir(snap.id).join("upper"),
                    )
                })
                .await
                .map_err(internal)?
                .map_err(internal)?
            }
        };
        Ok(Usage {
            inodes: i64::try_from(inodes).unwrap_or(i64::MAX),
            size: i64::try_from(size).unwrap_or(i64::MAX),
        })
    }

    async fn do_mounts(self: &Arc<Self>, key: String) -> Result<Vec<Mount>> {
        // Under the snapshot's lock: a concurrent Remove must not find the
        // mount half made, nor leave one behind.
        let _held = self.locks.snapshot(&key).await;
        let snap = self.records.get(&key)?;
        if snap.kind == SnapshotKind::Committed {
            return Err(ServiceError::FailedPrecondition(format!(
                "snapshot {key} is committed: only active and view snapshots have mounts"
            )));
        }
        self.ensure_mounted(&snap).await?;
        Ok(self.bind_mount(&snap))
    }

    async fn do_prepare(
        self: &Arc<Self>,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        tracing::debug!(labels = ?labels.keys().collect::<Vec<_>>(), "prepare");
        if let Some(lazy) = LazyLayer::from_labels(&labels)? {
            self.prefetch_indexes(&lazy, &labels);
            match self.pull_lazily(&lazy, &parent, &labels).await {
                // What containerd's unpacker waits for: the layer is there,
                // under the chain id it asked for.
                Ok(()) => {
                    return Err(RecordError::AlreadyExists(format!(
                        "target snapshot {}",
                        lazy.target
                    ))
                    .into())
                }
                Err(e) => tracing::warn!(
                    target = lazy.target,
                    index = %lazy.index,
                    error = %e,
                    "lazy pull failed; preparing the layer for unpacking instead"
                ),
            }
        }
        self.create(key, parent, labels, SnapshotKind::Active).await
    }

    async fn do_view(
        self: &Arc<Self>,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(key, parent, labels, SnapshotKind::View).await
    }

    async fn do_commit(
        self: &Arc<Self>,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let _held = self
            .locks
            .lock(vec![
                LockName::Snapshot(key.clone()),
                LockName::Snapshot(name.clone()),
            ])
            .await;
        let snap = self.records.get(&key)?;
        if snap.kind != SnapshotKind::Active {
            return Err(ServiceError::FailedPrecondition(format!(
                "snapshot {key} is not active: only an active snapshot can be committed"
            )));
        }
        if self.records.get(&name).is_ok() {
            return Err(RecordError::AlreadyExists(name).into());
        }
        self.ensure_mounted(&snap).await?;
        let rootfs = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&snap.id)
            .map(|h| h.rootfs.clone())
            .ok_or_else(|| internal(anyhow::anyhow!("snapshot {key} is not mounted")))?;
        // The changes stream through a pipe from the diff writer into the
        // layer importer.
        let (reader, writer) = std::io::pipe().map_err(internal)?;
        let started = std::time::Instant::now();
        let diff = tokio::task::spawn_blocking(move || rootfs.write_diff(writer));
        // The blocks and the layer are made before the record names them;
        // the active snapshot's state goes only after its record, and no
        // collection may take it in between (a collection that read the
        // records just after the commit removed the upper under the mount,
        // and the Commit failed unmounting it).
        let window = self.barrier.open();
        window.name(Swept::State(snap.id));
        let layer = import_reader(reader, &self.blocks, &self.layers, Some(&window)).await;
        let stats = diff.await.map_err(internal)?.map_err(internal)?;
        let layer = layer?;
        tracing::info!(
            entries = stats.entries,
            file_bytes = stats.file_bytes,
            seconds = started.elapsed().as_secs_f64(),
            layer = layer.record.index_digest,
            "changes written out as a layer"
        );
        self.records.commit(
            &name,
            &key,
            &layer.record.index_digest,
            labels.into_iter().collect(),
        )?;
        // containerd's unpacker names its snapshots `extract-…`; other
        // commits are a container's changes (`docker commit`, a build).
        if key.contains("extract-") {
            metrics::daemon::events().pulled(metrics::daemon::Pulled::Unpacked);
        }
        let dropped = self.drop_state_blocking(snap.id).await;
        drop(window);
        dropped
    }

    async fn do_remove(self: &Arc<Self>, key: String) -> Result<()> {
        let _held = self.locks.snapshot(&key).await;
        let snap = self.records.get(&key)?;
        if !self.records.children(&key)?.is_empty() {
            return Err(RecordError::FailedPrecondition(format!(
                "snapshot {key} has children; remove them first"
            ))
            .into());
        }
        self.drop_state_blocking(snap.id).await?;
        self.records.remove(&key)?;
        if snap.kind == SnapshotKind::Committed {
            // Its layer and blocks may be shared; a collection works it out.
            self.schedule_gc();
        }
        Ok(())
    }

    async fn do_list(self: &Arc<Self>, filters: Vec<String>) -> Result<InfoStream> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ServiceError::InvalidArgument)?;
        let infos: Vec<std::result::Result<Info, ServiceError>> = self
            .records
            .all()?
            .iter()
            .filter(|s| filters.is_empty() || filters.iter().any(|f| f.matches(s)))
            .map(|s| Ok(info_of(s)))
            .collect();
        Ok(tokio_stream::iter(infos))
    }
}

/// Runs one request; a panic in it is logged and answered `Internal`
/// instead of taking the connection down. Each would be a defect: none is
/// known, and whatever shape a request has it gets a status code.
async fn guarded<T>(request: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match std::panic::AssertUnwindSafe(request).catch_unwind().await {
        Ok(answer) => answer,
        Err(panic) => {
            let what = slayerfs_chunkstore::panic_text(panic.as_ref());
            tracing::error!(panic = %what, "a request panicked; the daemon goes on");
            Err(internal(anyhow::anyhow!("the request panicked: {what}")))
        }
    }
}

/// The snapshots API over a [`SlayerSnapshotter`], one span per call.
pub struct Service(pub Arc<SlayerSnapshotter>);

#[containerd_snapshots::tonic::async_trait]
impl Snapshotter for Service {
    type Error = ServiceError;
    type InfoStream = InfoStream;

    async fn stat(&self, key: String) -> Result<Info> {
        let span = tracing::debug_span!("stat", key);
        guarded(self.0.do_stat(key).instrument(span)).await
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info> {
        let span = tracing::info_span!("update", key = info.name);
        guarded(self.0.do_update(info, fieldpaths).instrument(span)).await
    }

    async fn usage(&self, key: String) -> Result<Usage> {
        let span = tracing::debug_span!("usage", key);
        guarded(self.0.do_usage(key).instrument(span)).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>> {
        let span = tracing::debug_span!("mounts", key);
        guarded(self.0.do_mounts(key).instrument(span)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let span = tracing::info_span!("prepare", key, parent);
        guarded(self.0.do_prepare(key, parent, labels).instrument(span)).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let span = tracing::info_span!("view", key, parent);
        guarded(self.0.do_view(key, parent, labels).instrument(span)).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let span = tracing::info_span!("commit", name, key);
        guarded(self.0.do_commit(name, key, labels).instrument(span)).await
    }

    async fn remove(&self, key: String) -> Result<()> {
        let span = tracing::info_span!("remove", key);
        guarded(self.0.do_remove(key).instrument(span)).await
    }

    /// containerd's Cleanup: collect garbage now.
    async fn clear(&self) -> Result<()> {
        let span = tracing::info_span!("cleanup");
        guarded(self.0.collect_garbage().instrument(span))
            .await
            .map(|_| ())
    }

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<InfoStream> {
        let span = tracing::debug_span!("list");
        guarded(self.0.do_list(filters).instrument(span)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_request_is_answered_internal() {
        let r: Result<()> = guarded(async { panic!("boom {}", 7) }).await;
        let status = containerd_snapshots::tonic::Status::from(r.unwrap_err());
        assert_eq!(status.code(), containerd_snapshots::tonic::Code::Internal);
        assert!(status.message().contains("boom 7"), "{}", status.message());
        let ok: Result<u8> = guarded(async { Ok(3) }).await;
        assert_eq!(ok.unwrap(), 3);
    }
}

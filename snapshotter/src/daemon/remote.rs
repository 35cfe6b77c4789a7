//! Lazy pull: a Prepare whose labels name a converted layer is answered by
//! committing that layer from its index alone.
//!
//! containerd's unpacker (pull, CRI, nerdctl) calls Prepare for each layer
//! with `containerd.io/snapshot.ref` = the layer's chain id and the layer
//! descriptor's `containerd.io/snapshot/*` annotations as labels. When those
//! carry our index annotation, the index blob is fetched from the shared
//! store, verified against its digest, loaded, and a committed snapshot is
//! recorded under the chain id; Prepare then answers AlreadyExists, and
//! containerd finds the snapshot by its `snapshot.ref` label and neither
//! downloads nor unpacks the layer. File data is fetched block by block on
//! first read. Anything that goes wrong falls back to an ordinary Prepare.

use std::collections::HashMap;
use std::sync::Arc;

use slayerfs_chunkstore::{fetch_index, IndexDigest, ObjectKey};
use slayerfs_layerfs::index::{decode_index, ValidIndex};
use slayerfs_proto::store::SnapshotKind;

use super::barrier::Swept;
use super::error::{internal, Result, ServiceError};
use super::SlayerSnapshotter;
use crate::daemon::records::RecordError;
use crate::image::converted::ANNOTATION_INDEX;
use crate::image::registry::fetch_index_blob;
use crate::metrics::daemon::{events, Fallback, Pulled};

/// The label containerd sets to the chain id a Prepare is unpacking.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// The label CRI sets to the image's layer digests (comma-separated; for a
/// converted image, the index digests).
pub const LABEL_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// The label CRI (and `slayerfs pull`) sets to the image reference.
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";

/// Index fetches running ahead of their Prepare at once.
const PREFETCH_PARALLEL: usize = 4;

/// What a Prepare asks to pull lazily: the chain id to commit and the
/// layer's index digest.
pub(super) struct LazyLayer {
    pub target: String,
    pub index: IndexDigest,
}

impl LazyLayer {
    /// The lazy layer `labels` ask for, if any. A malformed index label is
    /// an error (the image is ours, but broken).
    pub fn from_labels(labels: &HashMap<String, String>) -> Result<Option<Self>> {
        let (Some(target), Some(index)) = (labels.get(LABEL_TARGET), labels.get(ANNOTATION_INDEX))
        else {
            return Ok(None);
        };
        let index = index
            .parse()
            .map_err(|e| ServiceError::InvalidArgument(format!("label {ANNOTATION_INDEX}: {e}")))?;
        Ok(Some(LazyLayer {
            target: target.clone(),
            index,
        }))
    }
}

impl SlayerSnapshotter {
    /// Commits `layer` as snapshot `layer.target` on `parent` from its
    /// index. Ok when the snapshot exists afterwards (also when it already
    /// did); nothing is recorded on failure.
    pub(super) async fn pull_lazily(
        self: &Arc<Self>,
        layer: &LazyLayer,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        if self.lazy_target_exists(layer, parent)? {
            events().pulled(Pulled::Present);
            return Ok(());
        }
        // Fetched and decoded outside the target's lock: a slow or dead
        // store holds up this Prepare only.
        let started = std::time::Instant::now();
        // Prefetched (or kept from an earlier pull) here, else from the
        // shared store; verified either way.
        let blob = self
            .find_index(layer, labels)
            .await
            .inspect_err(|_| events().fell_back(Fallback::IndexUnavailable))?;
        let bytes = blob.len();
        let index = tokio::task::spawn_blocking({
            let blob = blob.clone();
            move || decode_index(&blob)
        })
        .await
        .map_err(internal)?
        .map_err(|e| {
            events().fell_back(Fallback::IndexInvalid);
            internal(anyhow::anyhow!("layer index {}: {e}", layer.index))
        })?;
        // Whatever fails from here is this node's own doing.
        let recorded = self
            .record_lazy(layer, parent, labels, blob, index)
            .await
            .inspect_err(|_| events().fell_back(Fallback::Local))?;
        if !recorded {
            events().pulled(Pulled::Present);
            return Ok(());
        }
        events().pulled(Pulled::Lazy);
        tracing::info!(
            target = layer.target,
            index = %layer.index,
            index_bytes = bytes,
            seconds = started.elapsed().as_secs_f64(),
            "layer pulled lazily"
        );
        Ok(())
    }

    /// Records `layer` from its verified index: the index copy, the layer,
    /// the snapshot; then starts what is known to be read first. False
    /// when another Prepare recorded it first.
    async fn record_lazy(
        self: &Arc<Self>,
        layer: &LazyLayer,
        parent: &str,
        labels: &HashMap<String, String>,
        blob: Vec<u8>,
        index: ValidIndex,
    ) -> Result<bool> {
        // One pull of a target at a time.
        let _held = self.locks.snapshot(&layer.target).await;
        // Another Prepare for the same layer may have been quicker.
        if self.lazy_target_exists(layer, parent)? {
            return Ok(false);
        }
        // The index copy and the layer are made before the record names
        // them.
        let window = self.barrier.open();
        window.name(Swept::Layer(layer.index.to_string()));
        // A copy of the index stays here: the layer's records can be
        // rebuilt and collected without the shared store.
        self.blocks
            .put_if_absent(&ObjectKey::Index(layer.index), blob)
            .await
            .map_err(internal)?;
        // The files the image reads first, within a quarter of the memory
        // cache: fetched once the layer is recorded.
        let first = super::first_reads::listed_blocks(&index, self.cache.memory_bytes() / 4);
        let loaded = super::load_layer(self.layers.clone(), layer.index, index)
            .await
            .map_err(internal)?
            .map_err(internal)?;
        self.records.create_committed(
            &layer.target,
            parent,
            &loaded.record.index_digest,
            labels.clone().into_iter().collect(),
        )?;
        super::first_reads::fetch(
            &self.runtime,
            self.cache.clone(),
            first,
            self.reading.timeout,
        );
        // What earlier starts of the image (if this is its top) read first.
        self.prefetch_traced(&layer.target);
        Ok(true)
    }

    /// The layer's index blob, verified: kept here (prefetched, or from an
    /// earlier pull), else from the shared store, else from the image's
    /// registry (the layer of a converted image is its index) when the
    /// labels name the image.
    async fn find_index(
        &self,
        layer: &LazyLayer,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<u8>> {
        // A prefetch of this index under way is waited for (briefly), not
        // raced: the bytes would move twice.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.is_prefetching(&layer.index) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if let Ok(blob) = fetch_index(self.blocks.as_ref(), &layer.index).await {
            return Ok(blob);
        }
        let from_store = match fetch_index(self.shared.as_ref(), &layer.index).await {
            Ok(blob) => return Ok(blob),
            Err(e) => e,
        };
        let Some(image) = labels.get(LABEL_IMAGE_REF) else {
            return Err(internal(from_store));
        };
        fetch_index_blob(image, &self.registry, &layer.index.to_string())
            .await
            .map_err(|e| {
                internal(anyhow::anyhow!(
                    "layer index {}: {from_store}; from {image}: {e}",
                    layer.index
                ))
            })
    }

    fn is_prefetching(&self, d: &IndexDigest) -> bool {
        self.prefetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(d)
    }

    /// Whether the layer's snapshot is there already (on this parent); an
    /// error if its name is taken by something else.
    fn lazy_target_exists(&self, layer: &LazyLayer, parent: &str) -> Result<bool> {
        match self.records.get(&layer.target) {
            Ok(s) if s.kind == SnapshotKind::Committed && s.parent == parent => Ok(true),
            Ok(_) => Err(RecordError::AlreadyExists(format!(
                "{} (not the committed snapshot of this layer)",
                layer.target
            ))
            .into()),
            Err(RecordError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches, in the background, the indexes of the image's other layers
    /// that are not here yet (named by CRI's `cri.image-layers` label), so
    /// their Prepares find them locally.
    pub(super) fn prefetch_indexes(
        self: &Arc<Self>,
        current: &LazyLayer,
        labels: &HashMap<String, String>,
    ) {
        let Some(list) = labels.get(LABEL_IMAGE_LAYERS) else {
            return;
        };
        // The current layer's index is this Prepare's to fetch.
        let digests: Vec<IndexDigest> = list
            .split(',')
            .filter_map(|d| d.trim().parse().ok())
            .filter(|d| *d != current.index)
            .collect();
        let mut wanted = Vec::new();
        {
            let mut inflight = self.prefetching.lock().unwrap_or_else(|p| p.into_inner());
            for d in digests {
                if inflight.insert(d) {
                    wanted.push(d);
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        let this = self.clone();
        self.runtime.spawn(async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(wanted)
                .for_each_concurrent(PREFETCH_PARALLEL, |d| {
                    let this = this.clone();
                    async move {
                        if !matches!(this.blocks.exists(&ObjectKey::Index(d)).await, Ok(true)) {
                            match fetch_index(this.shared.as_ref(), &d).await {
                                Ok(blob) => {
                                    if let Err(e) = this.blocks.put_if_absent(&ObjectKey::Index(d), blob).await {
                                        tracing::debug!(index = %d, error = %e, "keeping a prefetched index");
                                    }
                                }
                                // Not ours (a layer that was never converted) or
                                // unreachable: its own Prepare will say.
                                Err(e) => tracing::debug!(index = %d, error = %e, "prefetching an index"),
                            }
                        }
                        this.prefetching
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&d);
                    }
                })
                .await;
        });
    }
}

//! Learned prefetch: the first start of an image on this node records what
//! its container reads in its first seconds, names it by path and stores
//! it under the image's chain id beside the layer indexes — in the shared
//! store, so every node benefits, merged with the traces already there
//! (each stored trace is named by its digest, so nodes writing at once
//! never clash; the ones a merge took in are removed), or on this node
//! when the shared store takes no writes. A lazy pull of an image with a
//! trace fetches the blocks it names, a few at a time and only while no
//! read waits on the store, within a share of the memory cache. A trace
//! that is corrupt, stale or hostile costs that bandwidth and a log line.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use slayerfs_chunkstore::{fetch_trace, BlockStore, ChainDigest, ObjectKey, TraceDigest};
use slayerfs_config::TraceConfig;
use slayerfs_layerfs::store::layers::Layer;
use slayerfs_layerfs::store::merged::MergedView;
use slayerfs_layerfs::trace::{
    blocks_to_fetch, decode_trace, encode_trace, merge, name_reads, Recorder, RecorderLimits, Trace,
};
use slayerfs_proto::store::SnapshotKind;

use super::records::Snapshot;
use super::SlayerSnapshotter;
use crate::image::converted::ANNOTATION_INDEX;

/// What the daemon knows of traces.
pub(super) struct Traces {
    pub config: TraceConfig,
    /// Images whose start this process recorded (or is recording).
    recorded: Mutex<HashSet<ChainDigest>>,
}

impl Traces {
    pub fn new(config: TraceConfig) -> Self {
        Traces {
            config,
            recorded: Mutex::default(),
        }
    }
}

/// A stored trace and where it was found.
struct Found {
    shared: bool,
    digest: TraceDigest,
    trace: Trace,
}

impl SlayerSnapshotter {
    /// A recorder for the first mount of an active snapshot of a lazily
    /// pulled image in this process's life, if traces are on.
    pub(super) fn recorder_for(&self, snap: &Snapshot) -> Option<(ChainDigest, Arc<Recorder>)> {
        let cfg = &self.traces.config;
        if !cfg.enabled || snap.kind != SnapshotKind::Active {
            return None;
        }
        let chain: ChainDigest = snap.parent.parse().ok()?;
        if !self.has_lazy_layer(&snap.parent) {
            return None;
        }
        if !lock(&self.traces.recorded).insert(chain) {
            return None;
        }
        let limits = RecorderLimits {
            window: Duration::from_millis(cfg.window_ms),
            max_files: cfg.max_files,
            max_ranges: cfg.max_ranges_per_file,
        };
        Some((chain, Arc::new(Recorder::new(limits))))
    }

    /// Whether a layer under `parent` was pulled lazily (its blocks are
    /// fetched on read, so a trace is worth having).
    fn has_lazy_layer(&self, parent: &str) -> bool {
        let mut key = parent.to_string();
        while !key.is_empty() {
            let Ok(snap) = self.records.get(&key) else {
                return false;
            };
            if snap.labels.contains_key(ANNOTATION_INDEX) {
                return true;
            }
            key = snap.parent;
        }
        false
    }

    /// Once `recorder`'s window closes: the reads named on the view of
    /// `layers`, merged with the image's stored traces, stored.
    pub(super) fn store_when_recorded(
        self: &Arc<Self>,
        chain: ChainDigest,
        recorder: Arc<Recorder>,
        layers: Vec<Layer>,
    ) {
        let this = self.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep_until(recorder.until().into()).await;
            let reads = recorder.finish();
            if reads.is_empty() {
                return;
            }
            let db = this.layers.clone();
            let named = tokio::task::spawn_blocking(move || {
                let view = MergedView::open(&db, &layers)?;
                name_reads(&view, reads)
            })
            .await;
            let new = match named {
                Ok(Ok(t)) if !t.files.is_empty() => t,
                Ok(Ok(_)) => return,
                Ok(Err(e)) => return tracing::warn!(chain = %chain, error = %e, "naming a recorded start's reads"),
                Err(e) => return tracing::warn!(chain = %chain, error = %e, "naming a recorded start's reads"),
            };
            this.store_trace(chain, new).await;
        });
    }

    async fn store_trace(&self, chain: ChainDigest, new: Trace) {
        let found = self.find_traces(&chain).await;
        let mut all = vec![new];
        all.extend(found.iter().map(|f| f.trace.clone()));
        let merged = merge(&all, self.traces.config.max_files);
        let blob = encode_trace(&merged);
        let digest = TraceDigest::of(&blob);
        let key = ObjectKey::Trace(chain, digest);
        let (files, bytes) = (merged.files.len(), merged.bytes());
        let mut shared = false;
        if self.traces.config.share {
            match self.shared.put_if_absent(&key, blob.clone()).await {
                Ok(_) => shared = true,
                Err(e) => {
                    tracing::info!(chain = %chain, error = %e, "the shared store takes no trace; keeping it on this node")
                }
            }
        }
        if !shared {
            if let Err(e) = self.local.put_if_absent(&key, blob).await {
                return tracing::warn!(chain = %chain, error = %e, "keeping a trace");
            }
        }
        // What the new trace took in goes; a trace written meanwhile by
        // another node stays, to be merged by the next.
        for f in found
            .iter()
            .filter(|f| f.digest != digest && f.shared == shared)
        {
            let store: &dyn BlockStore = if f.shared {
                self.shared.as_ref()
            } else {
                &self.local
            };
            if let Err(e) = store.delete(&ObjectKey::Trace(chain, f.digest)).await {
                tracing::debug!(trace = %f.digest, error = %e, "removing a merged trace");
            }
        }
        tracing::info!(
            chain = %chain,
            trace = %digest,
            files,
            bytes,
            merged = found.len(),
            store = if shared { self.shared.location() } else { self.local.location() },
            "trace of a start stored"
        );
    }

    /// The image's traces, here and in the shared store; any that cannot
    /// be read or fail their checks are skipped, with a log line.
    async fn find_traces(&self, chain: &ChainDigest) -> Vec<Found> {
        let mut out = Vec::new();
        let places: [(bool, &dyn BlockStore); 2] =
            [(false, &self.local), (true, self.shared.as_ref())];
        for (shared, store) in places {
            let listed = match store.list_traces(chain).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(chain = %chain, error = %e, "listing traces");
                    continue;
                }
            };
            for digest in listed {
                let trace = match fetch_trace(store, chain, &digest).await {
                    Ok(blob) => decode_trace(&blob).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match trace {
                    Ok(trace) => out.push(Found {
                        shared,
                        digest,
                        trace,
                    }),
                    Err(e) => tracing::warn!(
                        chain = %chain,
                        trace = %digest,
                        store = store.location(),
                        error = %e,
                        "ignoring a trace"
                    ),
                }
            }
        }
        out
    }

    /// After the lazy pull of `target`: if it is the top of an image with
    /// a trace, the blocks the trace names are fetched in the background.
    pub(super) fn prefetch_traced(self: &Arc<Self>, target: &str) {
        if !self.traces.config.enabled {
            return;
        }
        let Ok(chain) = target.parse::<ChainDigest>() else {
            return;
        };
        let Ok(layers) = self.chain(target) else {
            return;
        };
        let this = self.clone();
        self.runtime.spawn(async move {
            let started = std::time::Instant::now();
            let found = this.find_traces(&chain).await;
            if found.is_empty() {
                return;
            }
            let traces: Vec<Trace> = found.into_iter().map(|f| f.trace).collect();
            let trace = merge(&traces, this.traces.config.max_files);
            let budget = this.cache.memory_bytes() / 4;
            let db = this.layers.clone();
            let planned = tokio::task::spawn_blocking(move || {
                let view = MergedView::open(&db, &layers)?;
                blocks_to_fetch(&view, &trace, budget)
            })
            .await;
            let planned = match planned {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return tracing::warn!(chain = %chain, error = %e, "planning a trace's prefetch"),
                Err(e) => return tracing::warn!(chain = %chain, error = %e, "planning a trace's prefetch"),
            };
            let timeout = this.reading.timeout;
            let fetched = std::sync::atomic::AtomicUsize::new(0);
            let fetched_parts = std::sync::atomic::AtomicUsize::new(0);
            let (count, ranges) = (planned.blocks.len(), planned.parts.len());
            let jobs = planned
                .blocks
                .into_iter()
                .map(Job::Whole)
                .chain(planned.parts.into_iter().map(Job::Part));
            futures_util::stream::iter(jobs)
                .for_each_concurrent(this.traces.config.parallel, |job| {
                    let (cache, fetched, fetched_parts) =
                        (this.cache.clone(), &fetched, &fetched_parts);
                    async move {
                        let (id, done, result) = match &job {
                            Job::Whole(id) => (*id, fetched, tokio::time::timeout(timeout, cache.prefetch(id)).await),
                            Job::Part(p) => {
                                let Some(digests) = p.digests() else { return };
                                let got = cache.prefetch_range(&p.id, p.range.clone(), digests);
                                (p.id, fetched_parts, tokio::time::timeout(timeout, got).await)
                            }
                        };
                        match result {
                            Ok(Ok(true)) => {
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Ok(Ok(false)) => {}
                            Ok(Err(e)) => tracing::debug!(block = %id, error = %e, "prefetching a traced block"),
                            Err(_) => tracing::debug!(block = %id, "prefetching a traced block timed out"),
                        }
                    }
                })
                .await;
            tracing::info!(
                chain = %chain,
                files = planned.files,
                missing = planned.missing,
                blocks = count,
                fetched = fetched.into_inner(),
                ranges,
                ranges_fetched = fetched_parts.into_inner(),
                seconds = started.elapsed().as_secs_f64(),
                "prefetched the blocks a trace names"
            );
        });
    }
}

/// One fetch of a trace's prefetch.
enum Job {
    Whole(slayerfs_chunkstore::BlockId),
    Part(slayerfs_layerfs::trace::PartFetch),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

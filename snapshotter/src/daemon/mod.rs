//! The containerd snapshots service: snapshot records, their filesystems
//! and their lifecycle under one root directory.
//!
//! A committed snapshot is a layer: its changes, written out as an OCI layer
//! tar and imported like any layer, in the layer store and a local block
//! directory. An active snapshot is the merged view of its parent chain's
//! layers (over an empty base layer) with an upper layer of its own, served
//! through FUSE at `<root>/snapshots/<id>/fs`; a view is the same without
//! an upper. Mounts are bind mounts of that directory.
//!
//! Mounts outlive the daemon: each connection waits in an fd store while
//! no daemon runs, and the next start takes it over ([`connections`]), so
//! a restart, a crash or an upgrade ends no container's filesystem.
//!
//! Layout under the root: `db` (sled: snapshot records, layers, merged
//! views, upper layers), `tables` (the record files of layers and merged
//! views), `blocks` (blocks of committed layers),
//! `snapshots/<id>/{fs,upper,fuse-init}`, `cache` (disk block cache),
//! `fdholder.*` (the fd holder's socket, lock and log), `listing-seed`.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind};
use slayerfs_chunkstore::{
    BlockCache, BlockStore, CacheOptions, IndexDigest, LocalStore, ObjectKey, WriterOptions,
};
use slayerfs_config::Config;
use slayerfs_fdstore::FdStore;
use slayerfs_layerfs::build::{convert_layer, Expected};
use slayerfs_layerfs::fuse::connection::{Connection, SavedInit};
use slayerfs_layerfs::fuse::{ListingSeed, MountOptions};
use slayerfs_layerfs::index::ValidIndex;
use slayerfs_layerfs::rootfs::{ReadOptions, Rootfs, Served};
use slayerfs_layerfs::store::layers::{Layer, LayerDb};
use slayerfs_layerfs::store::merged::{chain_key, MergedView};
use slayerfs_layerfs::store::upper::{Upper, UpperId};
use slayerfs_layerfs::store::StoreError;
use slayerfs_proto::store::SnapshotKind;

use crate::daemon::records::{Records, Snapshot};
use crate::fusemount::{detach, mounted_device, MountHandle};
use barrier::{Barrier, NamingStore, Swept};
use locks::{LockName, Locks};

pub mod api;
mod background;
mod barrier;
mod connections;
mod error;
pub mod filters;
mod first_reads;
mod gc;
mod heap;
mod locks;
mod observed;
pub mod records;
pub mod remote;
mod traces;

pub use api::Service;
pub use error::ServiceError;
use error::{internal, Result};
pub use gc::GcReport;

/// The snapshotter.
pub struct SlayerSnapshotter {
    root: PathBuf,
    db: sled::Db,
    records: Records,
    layers: Arc<LayerDb>,
    blocks: Arc<dyn BlockStore>,
    /// The same store as `blocks`, for listing and deleting.
    local: LocalStore,
    /// The store images were converted into (read only here).
    shared: Arc<dyn BlockStore>,
    /// How to reach registries, for indexes missing from the stores.
    registry: crate::image::registry::RegistryOptions,
    cache: Arc<BlockCache>,
    base: Layer,
    runtime: tokio::runtime::Handle,
    reading: ReadOptions,
    mounts: Mutex<HashMap<u64, MountHandle>>,
    /// Per-snapshot (and per-view) locks: a request waits only for others
    /// on the same names.
    locks: Locks,
    /// Keeps what requests are making from a collection running meanwhile.
    barrier: Arc<Barrier>,
    /// One collection at a time.
    collecting: tokio::sync::Mutex<()>,
    /// A background garbage collection is scheduled.
    gc_pending: AtomicBool,
    /// Index digests being prefetched.
    prefetching: Mutex<std::collections::HashSet<IndexDigest>>,
    /// Keeps every mounted snapshot's FUSE connection while no daemon runs.
    fds: Mutex<FdStore>,
    listing_seed: ListingSeed,
    traces: traces::Traces,
}

fn kind_of(k: SnapshotKind) -> Kind {
    match k {
        SnapshotKind::View => Kind::View,
        SnapshotKind::Active => Kind::Active,
        SnapshotKind::Committed => Kind::Committed,
        SnapshotKind::Unspecified => Kind::Unknown,
    }
}

pub(crate) fn info_of(s: &Snapshot) -> Info {
    Info {
        kind: kind_of(s.kind),
        name: s.key.clone(),
        parent: s.parent.clone(),
        labels: s.labels.clone().into_iter().collect(),
        created_at: s.created,
        updated_at: s.updated,
    }
}

/// An uncompressed tar with no entries.
fn empty_tar() -> Vec<u8> {
    vec![0u8; 1024]
}

impl SlayerSnapshotter {
    /// Opens (creating) the state under `root`, takes over the connections
    /// `fds` holds from an earlier process, and mounts every other active
    /// and view snapshot again (detaching what a dead process left).
    pub async fn open(
        root: &Path,
        config: &Config,
        shared: Arc<dyn BlockStore>,
        fds: FdStore,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(root.join("snapshots"))
            .with_context(|| format!("creating {}", root.display()))?;
        crate::fusemount::ensure_fusectl();
        let db = sled::Config::new()
            .path(root.join("db"))
            .cache_capacity(config.snapshotter.db_cache_bytes)
            .open()
            .context("opening the database")?;
        let records = Records::open(&db)?.keeping_room_in(&root.join("db"));
        let layers = Arc::new(LayerDb::from_db(db.clone(), &root.join("tables"))?);
        layers.recover()?;
        let local = LocalStore::open(&root.join("blocks"))?;
        let barrier = Arc::new(Barrier::default());
        let blocks: Arc<dyn BlockStore> = Arc::new(NamingStore {
            inner: Arc::new(local.clone()),
            barrier: barrier.clone(),
        });
        // Reads find the blocks of layers committed here first, then the
        // shared store's blocks of lazily pulled layers (those through the
        // disk cache).
        let settings = &config.cache;
        let cache = Arc::new(BlockCache::new(
            shared.clone(),
            &CacheOptions {
                memory_bytes: settings.memory_bytes,
                disk: (settings.disk_bytes > 0).then(|| (root.join("cache"), settings.disk_bytes)),
                pinned_bytes: settings.pinned_bytes,
                own_blocks: Some(blocks.clone()),
            },
        )?);
        let base = import_tar(empty_tar(), &blocks, &layers).await?;
        let listing_seed = connections::listing_seed(root)?;
        let sn = Arc::new(SlayerSnapshotter {
            root: root.to_path_buf(),
            db,
            records,
            layers,
            blocks,
            local,
            shared,
            registry: crate::image::registry::RegistryOptions {
                config: config.registry.clone(),
                ..Default::default()
            },
            cache,
            base,
            runtime: tokio::runtime::Handle::current(),
            reading: ReadOptions {
                ahead_blocks: settings.read_ahead_blocks,
                timeout: std::time::Duration::from_millis(settings.read_timeout_ms),
            },
            mounts: Mutex::new(HashMap::new()),
            locks: Locks::default(),
            barrier,
            collecting: tokio::sync::Mutex::new(()),
            gc_pending: AtomicBool::new(false),
            prefetching: Mutex::new(Default::default()),
            fds: Mutex::new(fds),
            listing_seed,
            traces: traces::Traces::new(config.trace.clone()),
        });
        sn.restore().await?;
        sn.watch_fd_store();
        Ok(sn)
    }

    fn state_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn mountpoint(&self, id: u64) -> PathBuf {
        self.state_dir(id).join("fs")
    }

    /// After a restart: the connections the fd store held taken over,
    /// other active and view snapshots mounted again (stale mounts
    /// detached), connections of nothing let go.
    async fn restore(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut held = {
            let this = self.clone();
            tokio::task::spawn_blocking(move || connections::held(&this.fds)).await??
        };
        for snap in self.records.all()? {
            // Nothing here may look at a mount point through the
            // filesystem: a held connection no one serves yet would never
            // answer. The mount table is read instead.
            let mp = self.mountpoint(snap.id);
            let mounted = mounted_device(&mp).is_some();
            let fd = held.remove(&snap.id);
            let conn = match fd {
                Some(fd) if snap.kind != SnapshotKind::Committed && mounted => {
                    match connections::saved_init(&self.state_dir(snap.id)) {
                        Ok(init) => {
                            tracing::info!(key = snap.key, "taking over the FUSE connection");
                            Some(Connection::take_over(fd, init))
                        }
                        Err(e) => {
                            tracing::error!(key = snap.key, error = %format!("{e:#}"), "cannot take the snapshot's connection over; mounting it again");
                            None
                        }
                    }
                }
                // Ours is dropped here: with the store's, the connection
                // ends, and its mounts answer at once.
                _ => None,
            };
            if conn.is_none() {
                connections::release(&self.fds, snap.id);
                if mounted {
                    tracing::info!(mountpoint = %mp.display(), "detaching a stale mount");
                    detach(&mp);
                }
            }
            if snap.kind != SnapshotKind::Committed {
                // One snapshot that cannot be mounted must not keep the
                // others from being served; its Mounts call reports why.
                if let Err(e) = self.mount(&snap, conn).await {
                    tracing::error!(key = snap.key, error = %e, "cannot mount a snapshot after restart");
                }
            }
        }
        for id in held.into_keys() {
            tracing::info!(
                id,
                "letting go of the connection of a snapshot that is gone"
            );
            connections::release(&self.fds, id);
        }
        Ok(())
    }

    /// The layer of a committed snapshot.
    fn layer_of(&self, snap: &Snapshot) -> Result<Layer> {
        let key = &snap.key;
        let digest: IndexDigest = snap
            .layer
            .parse()
            .map_err(|e| internal(anyhow::anyhow!("snapshot {key}: layer {e}")))?;
        self.layers
            .layer(&digest)
            .map_err(internal)?
            .ok_or_else(|| {
                internal(anyhow::anyhow!(
                    "snapshot {key}: layer {digest} is not loaded"
                ))
            })
    }

    /// The layers under a snapshot whose parent is `parent`, bottom first.
    fn chain(&self, parent: &str) -> Result<Vec<Layer>> {
        let mut layers = Vec::new();
        let mut key = parent.to_string();
        while !key.is_empty() {
            let snap = self.records.get(&key)?;
            layers.push(self.layer_of(&snap)?);
            key = snap.parent;
        }
        layers.push(self.base.clone());
        layers.reverse();
        Ok(layers)
    }

    /// The filesystem of an active or view snapshot, mounted.
    async fn ensure_mounted(self: &Arc<Self>, snap: &Snapshot) -> Result<PathBuf> {
        self.mount(snap, None).await
    }

    /// Mounts a snapshot's filesystem unless it is: on `conn` (taken over
    /// from an earlier process) if given, else on a new connection.
    async fn mount(self: &Arc<Self>, snap: &Snapshot, conn: Option<Connection>) -> Result<PathBuf> {
        let mp = self.mountpoint(snap.id);
        if self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&snap.id)
        {
            return Ok(mp);
        }
        let chain = self.chain(&snap.parent)?;
        // One build of a chain's view at a time (snapshots on one parent
        // share it); none taken by a collection meanwhile.
        let view_key = chain_key(&chain);
        let window = self.barrier.open();
        window.name(Swept::View(view_key.clone()));
        window.name(Swept::State(snap.id));
        let view = {
            let _building = self.locks.lock(vec![LockName::View(view_key)]).await;
            let (layers, chain) = (self.layers.clone(), chain.clone());
            tokio::task::spawn_blocking(move || {
                let view = MergedView::open(&layers, &chain)?;
                if view.built_now() {
                    heap::give_back_freed();
                }
                Ok::<_, StoreError>(view)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?
        };
        let this = self.clone();
        let snap = snap.clone();
        let mp2 = mp.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            if conn.is_none() {
                // (A connection taken over is mounted there: not to be
                // looked at before it is served.)
                std::fs::create_dir_all(&mp2).map_err(internal)?;
            }
            let state_dir = this.state_dir(snap.id);
            let upper = if snap.kind == SnapshotKind::Active {
                Some(
                    Upper::open(
                        &this.db,
                        UpperId(snap.id),
                        &state_dir.join("upper"),
                        &chain_key(&chain),
                        view.inode_count(),
                    )
                    .map_err(internal)?,
                )
            } else {
                None
            };
            let (cache, runtime) = (this.cache.clone(), this.runtime.clone());
            let fresh = conn.is_none();
            let served = if fresh {
                Served::Fresh
            } else {
                Served::TakenOver
            };
            let mut rootfs =
                Rootfs::new(view, upper, cache, runtime, this.reading, served).map_err(internal)?;
            // The first start of a lazily pulled image here is recorded.
            if fresh {
                if let Some((top, recorder)) = this.recorder_for(&snap) {
                    rootfs = rootfs.recording(recorder.clone());
                    this.store_when_recorded(top, recorder, chain.clone());
                }
            }
            let opts = MountOptions {
                threads: 2,
                fs_name: mount_source(&snap.key),
                listing_seed: this.listing_seed,
            };
            let conn = match conn {
                Some(conn) => conn,
                None => Connection::mount(&mp2, rootfs.is_writable(), &opts)
                    .with_context(|| format!("mounting at {}", mp2.display()))
                    .map_err(internal)?,
            };
            let fds = &this.fds;
            // A connection taken over is in the store, its INIT saved.
            let keep = |fd: BorrowedFd<'_>, init: &SavedInit| {
                if fresh {
                    connections::keep(fds, snap.id, &state_dir, fd, init)
                } else {
                    Ok(())
                }
            };
            let handle = MountHandle::serve(Arc::new(rootfs), conn, &mp2, opts, keep, || {})
                .map_err(internal)?;
            this.mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(snap.id, handle);
            Ok(())
        })
        .await
        .map_err(internal)??;
        drop(window);
        Ok(mp)
    }

    fn bind_mount(&self, snap: &Snapshot) -> Vec<Mount> {
        let access = if snap.kind == SnapshotKind::View {
            "ro"
        } else {
            "rw"
        };
        vec![Mount {
            r#type: "bind".into(),
            source: self.mountpoint(snap.id).display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), access.into()],
        }]
    }

    /// Unmounts a snapshot's filesystem and removes its own state.
    fn drop_state(&self, id: u64) -> Result<()> {
        let handle = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(h) = handle {
            h.stop().map_err(internal)?;
        }
        connections::release(&self.fds, id);
        let mp = self.mountpoint(id);
        if mounted_device(&mp).is_some() {
            detach(&mp);
        }
        Upper::destroy(&self.db, UpperId(id)).map_err(internal)?;
        match std::fs::remove_dir_all(self.state_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    /// [`Self::drop_state`] off the async threads (unmounting can wait).
    async fn drop_state_blocking(self: &Arc<Self>, id: u64) -> Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.drop_state(id))
            .await
            .map_err(internal)?
    }

    async fn create(
        self: &Arc<Self>,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>> {
        let _held = self.locks.snapshot(&key).await;
        // Its state is made after its record: a collection that read the
        // records first must not take it.
        let window = self.barrier.open();
        let snap = self
            .records
            .create(&key, &parent, kind, labels.into_iter().collect())?;
        window.name(Swept::State(snap.id));
        let mounted = self.ensure_mounted(&snap).await;
        drop(window);
        match mounted {
            Ok(_) => Ok(self.bind_mount(&snap)),
            Err(e) => {
                // Nothing half-made stays behind.
                let _ = self.drop_state_blocking(snap.id).await;
                let _ = self.records.remove(&key);
                Err(e)
            }
        }
    }

    /// At exit: with `unmount`, every snapshot unmounted and the fd store
    /// emptied (a node being drained); otherwise every mount left to the
    /// next start, which takes the connections over (a restart).
    pub fn shutdown(&self, unmount: bool) {
        let handles: Vec<(u64, MountHandle)> = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let ids: Vec<u64> = handles.iter().map(|(id, _)| *id).collect();
        for (_, h) in handles {
            if !unmount {
                h.leave();
            } else if let Err(e) = h.stop() {
                tracing::warn!(error = %e, "unmounting at shutdown");
            }
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing the database at shutdown");
        }
        if unmount {
            let names: Vec<_> = ids.into_iter().map(connections::fd_name).collect();
            let store = self.fds.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = store.shut_down(&names) {
                tracing::warn!(error = %e, "emptying the fd store at shutdown");
            }
        }
    }
}

/// Imports an uncompressed layer tar into the local blocks and the layer
/// store.
async fn import_tar(
    tar: Vec<u8>,
    blocks: &Arc<dyn BlockStore>,
    layers: &Arc<LayerDb>,
) -> anyhow::Result<Layer> {
    import_reader(std::io::Cursor::new(tar), blocks, layers, None).await
}

/// Imports a layer tar into `blocks` and `layers`; a request inside a
/// `window` names the layer before loading it (the blocks name
/// themselves, through the store).
pub(crate) async fn import_reader<R: std::io::Read + Send + 'static>(
    tar: R,
    blocks: &Arc<dyn BlockStore>,
    layers: &Arc<LayerDb>,
    window: Option<&barrier::Window>,
) -> anyhow::Result<Layer> {
    let opts = WriterOptions {
        workers: 2,
        zstd_level: 3,
        part_size: slayerfs_chunkstore::PartSize::DEFAULT,
    };
    let conv = convert_layer(tar, blocks.clone(), opts, "", Expected::default()).await?;
    if let Some(window) = window {
        window.name(Swept::Layer(conv.digest.to_string()));
    }
    blocks
        .put_if_absent(&ObjectKey::Index(conv.digest), conv.blob.clone())
        .await?;
    let layer = load_layer(layers.clone(), conv.digest, conv.index).await??;
    Ok(layer)
}

/// Loads a layer's records from its index off the async threads, then
/// gives back the memory the decoded index and the load took.
pub(crate) async fn load_layer(
    layers: Arc<LayerDb>,
    digest: IndexDigest,
    index: ValidIndex,
) -> std::result::Result<std::result::Result<Layer, StoreError>, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let layer = layers.load_index(&digest, &index);
        drop(index);
        heap::give_back_freed();
        layer
    })
    .await
}

/// What the mount table shows as the source of a snapshot's mount: the
/// key, cut to what mount(2) takes and with no blanks or control
/// characters (a key may be any UTF-8).
fn mount_source(key: &str) -> String {
    const MAX: usize = 256;
    let mut source = String::from("slayerfs:");
    for c in key.chars() {
        if source.len() + c.len_utf8() > MAX {
            source.push('…');
            break;
        }
        source.push(if c.is_whitespace() || c.is_control() || c == ',' {
            '_'
        } else {
            c
        });
    }
    source
}

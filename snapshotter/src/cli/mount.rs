//! `slayerfs mount`'s filesystem: a converted image's layers loaded into a
//! layer store, their merged view and an optional upper layer (in an upper
//! directory, [`super::upper_dir`]); [`crate::fusemount`] serves it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use slayerfs_chunkstore::{BlockCache, BlockStore, CacheOptions, IndexDigest};
use slayerfs_config::Config;
use slayerfs_layerfs::rootfs::{ReadOptions, Rootfs, Served};
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_layerfs::store::merged::{chain_key, MergedView};
use slayerfs_layerfs::store::upper::{Upper, UpperId};

use crate::image::converted::ConvertedImage;

/// The upper layer `slayerfs mount` keeps in an upper directory.
const MOUNT_UPPER: UpperId = UpperId(1);

/// The filesystem of a converted image, writable when `upper_dir` is given
/// (its sled records in `upper_dir/db`, file data in `upper_dir/data`).
pub fn image_rootfs(
    image: &ConvertedImage,
    store: Arc<dyn BlockStore>,
    config: &Config,
    upper_dir: Option<&Path>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Rootfs> {
    let (db, tables) = match upper_dir {
        Some(dir) => (
            super::upper_dir::open_db(dir, config.snapshotter.db_cache_bytes)?,
            dir.join("tables"),
        ),
        // A read-only mount keeps its layer records only while it runs.
        None => {
            let mounts = config.mounts_dir();
            remove_stale_mount_dbs(&mounts);
            let dir = mounts.join(std::process::id().to_string());
            let _ = std::fs::remove_dir_all(&dir);
            let db = sled::Config::new()
                .path(&dir)
                .temporary(true)
                .cache_capacity(config.snapshotter.db_cache_bytes)
                .open()
                .with_context(|| format!("creating a layer database in {}", dir.display()))?;
            (db, dir.join("tables"))
        }
    };
    let layer_db = Arc::new(LayerDb::from_db(db.clone(), &tables)?);
    layer_db.recover()?;
    let mut layers = Vec::new();
    for desc in image.manifest.layers() {
        let index = image.layer_index(desc)?;
        let digest: IndexDigest = desc
            .digest()
            .to_string()
            .parse()
            .with_context(|| format!("layer digest {}", desc.digest()))?;
        layers.push(layer_db.load_index(&digest, &index)?);
    }
    if layers.is_empty() {
        bail!("the image has no layers");
    }
    let view = MergedView::open(&layer_db, &layers)?;
    let upper = match upper_dir {
        Some(dir) => Some(Upper::open(
            &db,
            MOUNT_UPPER,
            &dir.join("data"),
            &chain_key(&layers),
            view.inode_count(),
        )?),
        None => None,
    };
    let disk = (config.cache.disk_bytes > 0).then(|| (config.cache_dir(), config.cache.disk_bytes));
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            own_blocks: None,
            memory_bytes: config.cache.memory_bytes,
            disk,
            pinned_bytes: config.cache.pinned_bytes,
        },
    )?;
    Ok(Rootfs::new(
        view,
        upper,
        Arc::new(cache),
        runtime,
        ReadOptions {
            ahead_blocks: config.cache.read_ahead_blocks,
            timeout: std::time::Duration::from_millis(config.cache.read_timeout_ms),
        },
        Served::Fresh,
    )?)
}

/// Removes the layer databases of read-only mounts whose process is gone
/// (killed before it could remove its own).
fn remove_stale_mount_dbs(mounts: &Path) {
    let Ok(entries) = std::fs::read_dir(mounts) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a stale mount database");
            }
        }
    }
}

//! Each mounted snapshot's FUSE connection outlives the daemon: its
//! descriptor waits in the fd store (named `snapshot-<id>`) and what the
//! kernel negotiated at INIT is saved beside the snapshot
//! (`snapshots/<id>/fuse-init`), so that the next start takes the
//! connection over instead of mounting again. Also the directory-cookie
//! seed, the same for every start (`listing-seed` under the root).

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use slayerfs_fdstore::{FdName, FdStore};
use slayerfs_layerfs::fuse::connection::SavedInit;
use slayerfs_layerfs::fuse::ListingSeed;

use super::SlayerSnapshotter;

const NAME_PREFIX: &str = "snapshot-";
/// How often the daemon checks that its fd store is still there.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The fd store's name for snapshot `id`'s connection.
pub fn fd_name(id: u64) -> FdName {
    FdName::new(&format!("{NAME_PREFIX}{id}")).expect("a valid name")
}

/// Where snapshot `id`'s INIT is saved, in its state directory.
fn saved_init_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fuse-init")
}

/// The connections the store holds, by snapshot id; descriptors under
/// names that are not ours are let go.
pub fn held(fds: &Mutex<FdStore>) -> anyhow::Result<HashMap<u64, OwnedFd>> {
    let mut store = fds.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = HashMap::new();
    for (name, fd) in store.list().context("listing the held FUSE connections")? {
        match name
            .as_str()
            .strip_prefix(NAME_PREFIX)
            .and_then(|id| id.parse::<u64>().ok())
        {
            Some(id) => {
                out.insert(id, fd);
            }
            None => {
                tracing::warn!(name = %name, "letting go of a descriptor that is not a snapshot's");
                let _ = store.remove(&name);
            }
        }
    }
    Ok(out)
}

/// Saves what a later start needs to take snapshot `id`'s connection over
/// and hands the connection to the store. The file is written before the
/// store has the descriptor: a held connection always has its INIT.
pub fn keep(
    fds: &Mutex<FdStore>,
    id: u64,
    state_dir: &Path,
    fd: BorrowedFd<'_>,
    init: &SavedInit,
) -> std::io::Result<()> {
    write_atomically(&saved_init_path(state_dir), &init.encode())?;
    fds.lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(&fd_name(id), fd)
        .map_err(std::io::Error::other)
}

/// The INIT saved for snapshot `id`.
pub fn saved_init(state_dir: &Path) -> anyhow::Result<SavedInit> {
    let path = saved_init_path(state_dir);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    SavedInit::decode(&bytes).with_context(|| format!("decoding {}", path.display()))
}

/// The store lets go of snapshot `id`'s connection (which ends once no
/// process has it open).
pub fn release(fds: &Mutex<FdStore>, id: u64) {
    let store = fds.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = store.remove(&fd_name(id)) {
        tracing::debug!(id, error = %e, "the fd store had no connection of this snapshot");
    }
}

impl SlayerSnapshotter {
    /// Checks, every few seconds for as long as the daemon lives, that the
    /// fd store still holds the connections: a holder that was killed is
    /// started again and handed every mounted snapshot's connection, so
    /// that the daemon's next crash still ends no container's filesystem.
    pub(super) fn watch_fd_store(self: &Arc<Self>) {
        let this: Weak<SlayerSnapshotter> = Arc::downgrade(self);
        self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let Some(sn) = this.upgrade() else { return };
                let checked = tokio::task::spawn_blocking(move || sn.hold_again_if_lost()).await;
                if let Ok(Err(e)) = checked {
                    tracing::error!(error = %format!("{e:#}"), "the fd store is gone: a crash now would end the containers' filesystems");
                }
            }
        });
    }

    fn hold_again_if_lost(&self) -> anyhow::Result<()> {
        let store = self.fds.lock().unwrap_or_else(|p| p.into_inner());
        if store.check()? {
            return Ok(());
        }
        let mounts = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        for (id, handle) in mounts.iter() {
            store.put(&fd_name(*id), handle.connection_fd())?;
        }
        tracing::warn!(
            connections = mounts.len(),
            store = store.describe(),
            "the fd holder had gone; a new one holds every connection again"
        );
        Ok(())
    }
}

/// The directory-cookie seed of this root, made once.
pub fn listing_seed(root: &Path) -> anyhow::Result<ListingSeed> {
    let path = root.join("listing-seed");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 16 => {
            let mut seed = [0u8; 16];
            seed.copy_from_slice(&b);
            return Ok(ListingSeed(seed));
        }
        Ok(b) => {
            tracing::warn!(path = %path.display(), len = b.len(), "replacing a malformed directory-cookie seed")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let seed = ListingSeed::random();
    write_atomically(&path, &seed.0).with_context(|| format!("writing {}", path.display()))?;
    Ok(seed)
}

/// Writes `path` whole or not at all (a temporary file renamed over it),
/// readable by its owner only. Not synced: what is kept here matters only
/// while the kernel holds the connections, which power loss ends, and a
/// process that dies leaves its writes to the kernel.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

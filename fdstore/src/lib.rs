//! Keeps the daemon's `/dev/fuse` connections open while the daemon is not
//! running, so that a crash, a restart or an upgrade of the snapshotter
//! ends no container's filesystem.
//!
//! Owns where the file descriptors wait and how they travel: a holder
//! process of our own ([`holder`], the `slayerfs-fdholder` binary, spoken
//! to over a unix socket with [`protocol`] and [`scm`]), or systemd's file
//! descriptor store ([`systemd`]) when the daemon runs under a unit that
//! has one. It does not know what the descriptors are: connections, their
//! negotiated settings and what they serve are the daemon's.

pub mod client;
pub mod holder;
pub mod protocol;
pub mod scm;
pub mod systemd;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

pub use client::HolderClient;
pub use protocol::FdName;
pub use systemd::SystemdStore;

/// Why the fd store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fd holder socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fd holder: {0}")]
    Io(#[from] std::io::Error),
    #[error("fd holder answered {0:?}")]
    Refused(String),
    #[error("fd holder sent a malformed message: {0}")]
    Protocol(String),
    #[error("invalid fd name {0:?}: 1 to {max} of A-Z a-z 0-9 . _ - :", max = protocol::MAX_NAME)]
    BadName(String),
    #[error("starting the fd holder {path}: {reason}")]
    Spawn { path: PathBuf, reason: String },
    #[error("systemd's fd store: {0}")]
    Systemd(String),
}

/// Where the daemon's descriptors wait while it is not running.
pub enum FdStore {
    /// Our own holder process.
    Holder(HolderClient),
    /// systemd's file descriptor store of the daemon's unit.
    Systemd(SystemdStore),
}

impl FdStore {
    /// systemd's store when the daemon runs in a unit that has one
    /// (`FileDescriptorStoreMax=` sets `$FDSTORE`), otherwise the holder
    /// listening on `socket`, started from `holder_binary` if none is.
    pub fn open(socket: PathBuf, holder_binary: PathBuf) -> Result<FdStore, Error> {
        if let Some(store) = SystemdStore::from_env()? {
            return Ok(FdStore::Systemd(store));
        }
        Ok(FdStore::Holder(HolderClient::connect_or_spawn(
            socket,
            holder_binary,
        )?))
    }

    /// Keeps `fd` under `name` (replacing what had that name).
    pub fn put(&self, name: &FdName, fd: BorrowedFd<'_>) -> Result<(), Error> {
        match self {
            FdStore::Holder(h) => h.put(name, fd),
            FdStore::Systemd(s) => s.put(name, fd),
        }
    }

    /// Copies of every descriptor kept (they stay kept).
    pub fn list(&mut self) -> Result<Vec<(FdName, OwnedFd)>, Error> {
        match self {
            FdStore::Holder(h) => h.list(),
            FdStore::Systemd(s) => Ok(s.take_inherited()),
        }
    }

    /// Whether the store is there to keep descriptors; false if it had
    /// gone and an empty one took its place (the holder was killed):
    /// everything must be put again.
    pub fn check(&self) -> Result<bool, Error> {
        match self {
            FdStore::Holder(h) => Ok(!h.ensure_running()?),
            FdStore::Systemd(_) => Ok(true),
        }
    }

    /// Stops keeping `name`.
    pub fn remove(&self, name: &FdName) -> Result<(), Error> {
        match self {
            FdStore::Holder(h) => h.remove(name),
            FdStore::Systemd(s) => s.remove(name),
        }
    }

    /// Keeps nothing any more: the holder exits, systemd's store is
    /// emptied of `names`.
    pub fn shut_down(&self, names: &[FdName]) -> Result<(), Error> {
        match self {
            FdStore::Holder(h) => h.quit(),
            FdStore::Systemd(s) => {
                for n in names {
                    s.remove(n)?;
                }
                Ok(())
            }
        }
    }

    /// What keeps the descriptors, for logs.
    pub fn describe(&self) -> String {
        match self {
            FdStore::Holder(h) => format!("fd holder at {}", h.socket().display()),
            FdStore::Systemd(_) => "systemd's file descriptor store".into(),
        }
    }
}

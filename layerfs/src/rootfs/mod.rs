//! The filesystem a container sees: the merged view of its image layers plus
//! an optional writable upper layer, as one inode space.
//!
//! Merged lower inodes keep their numbers (`1..=lower.inode_count()`); the
//! upper hands out numbers above. A name resolves in the upper first (an
//! entry, or a whiteout hiding the lower name), then in the merged lower
//! view. Because names point at inode numbers, renaming a lower entry or a
//! whole lower directory only writes two upper names; changing a lower
//! inode copies its attributes and slice list up under the same number, so
//! hardlinks stay hardlinks and no file data is copied.
//!
//! This module decides what operations mean; [`crate::fuse`] speaks the
//! FUSE protocol on top of it.

mod diff;
mod mutate;
mod pins;
mod reading;
mod streams;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use slayerfs_chunkstore::BlockCache;
use slayerfs_proto::index::{Inode, InodeKind};
use slayerfs_proto::store::UpperInode;

use crate::geometry::Ino;
use crate::read::ReadError;
use crate::store::merged::MergedView;
use crate::store::upper::Upper;
use crate::store::StoreError;

pub use crate::store::upper::OpId;
pub use diff::DiffStats;
pub use mutate::{NewNode, SetAttr};
pub use reading::ReadOptions;

/// Why an operation failed; [`FsError::errno`] is what the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("invalid argument")]
    Invalid,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no such attribute")]
    NoAttr,
    #[error("file name too long")]
    NameTooLong,
    #[error("file too large")]
    TooLarge,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("upper data file of {ino}: {source}")]
    Data { ino: Ino, source: std::io::Error },
    #[error("no answer from the block store within {0:?}")]
    ReadTimeout(std::time::Duration),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::IsDir => libc::EISDIR,
            FsError::NotDir => libc::ENOTDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::Invalid => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::NoAttr => libc::ENODATA,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::TooLarge => libc::EFBIG,
            FsError::Data { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::Store(StoreError::NoRoom { .. }) => libc::ENOSPC,
            FsError::Store(_) | FsError::Read(_) | FsError::ReadTimeout(_) => libc::EIO,
        }
    }

    /// Failures of our own state or of the store, worth a log line (the
    /// others are answers to what the caller asked).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            FsError::Store(_) | FsError::Read(_) | FsError::Data { .. } | FsError::ReadTimeout(_)
        )
    }
}

/// A second, with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn now() -> Time {
        Time::from(SystemTime::now())
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Time { sec, nsec }
            }
        }
    }
}

/// What `stat` shows for an inode.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: Ino,
    /// Attributes (no slices, no children).
    pub inode: Inode,
    pub nlink: u32,
    pub atime: Time,
    pub ctime: Time,
}

impl Attr {
    pub fn kind(&self) -> InodeKind {
        InodeKind::from_i32(self.inode.kind).unwrap_or(InodeKind::Unspecified)
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == InodeKind::Directory
    }

    pub fn mtime(&self) -> Time {
        Time {
            sec: self.inode.mtime_sec,
            nsec: self.inode.mtime_nsec,
        }
    }

    fn from_upper(ino: Ino, rec: UpperInode) -> Result<Attr, FsError> {
        let inode = rec.inode.ok_or_else(|| {
            FsError::Store(StoreError::Corrupt {
                tree: "upper_inodes",
                reason: format!("{ino} has no attributes"),
            })
        })?;
        Ok(Attr {
            ino,
            nlink: rec.nlink,
            atime: Time {
                sec: rec.atime_sec,
                nsec: rec.atime_nsec,
            },
            ctime: Time {
                sec: rec.ctime_sec,
                nsec: rec.ctime_nsec,
            },
            inode,
        })
    }

    fn into_upper(self) -> UpperInode {
        UpperInode {
            inode: Some(self.inode),
            nlink: self.nlink,
            ctime_sec: self.ctime.sec,
            ctime_nsec: self.ctime.nsec,
            atime_sec: self.atime.sec,
            atime_nsec: self.atime.nsec,
        }
    }
}

/// On what connection a rootfs is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A new one: nothing of an earlier mount is held by the kernel.
    Fresh,
    /// One an earlier process served and this one took over.
    TakenOver,
}

struct OpenFile {
    count: u32,
    data: Option<Arc<File>>,
    /// Blocks pinned in the disk cache while the file is open.
    pinned: Vec<slayerfs_chunkstore::BlockId>,
}

/// A merged lower view with an optional upper layer.
pub struct Rootfs {
    lower: MergedView,
    upper: Option<Upper>,
    cache: Arc<BlockCache>,
    runtime: tokio::runtime::Handle,
    reading: ReadOptions,
    streams: streams::Streams,
    open: Mutex<HashMap<Ino, OpenFile>>,
    /// Served on a connection taken over from an earlier process: the
    /// kernel may hold open files this process never saw opened, so an
    /// inode with no names left is kept (until a fresh mount) rather than
    /// removed at what looks like its last close.
    taken_over: bool,
    /// Records what the lower files are read for, while a recording runs.
    recorder: Option<Arc<crate::trace::Recorder>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rootfs {
    /// The filesystem over `lower`, writable if `upper` is given; blocks
    /// come through `cache`, whose fetches run on `runtime`. For a new
    /// connection, inodes an earlier mount unlinked while they were open
    /// are removed now (no one holds them any more); for one taken over
    /// nothing is, since the kernel may still hold any inode.
    pub fn new(
        lower: MergedView,
        upper: Option<Upper>,
        cache: Arc<BlockCache>,
        runtime: tokio::runtime::Handle,
        reading: ReadOptions,
        served: Served,
    ) -> Result<Self, FsError> {
        let taken_over = served == Served::TakenOver;
        if let (Some(up), false) = (&upper, taken_over) {
            let ch = up.change();
            for (ino, rec) in ch.inodes()? {
                if rec.nlink == 0 {
                    ch.remove_inode(ino)?;
                }
            }
            ch.commit(None)?;
            // A new connection's request ids start again.
            up.forget_replies()?;
        }
        Ok(Rootfs {
            lower,
            upper,
            cache,
            runtime,
            streams: streams::Streams::new(reading.ahead_blocks),
            reading,
            open: Mutex::new(HashMap::new()),
            taken_over,
            recorder: None,
        })
    }

    /// Reads of lower files are noted in `recorder` (until it is over).
    pub fn recording(mut self, recorder: Arc<crate::trace::Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    pub fn is_writable(&self) -> bool {
        self.upper.is_some()
    }

    pub fn upper(&self) -> Option<&Upper> {
        self.upper.as_ref()
    }

    fn lower_attr(&self, ino: Ino) -> Result<Attr, FsError> {
        if ino.0 == 0 || ino.0 > self.lower.inode_count() {
            return Err(FsError::NotFound);
        }
        let (inode, nlink) = self.lower.attrs(ino)?;
        let t = Time {
            sec: inode.mtime_sec,
            nsec: inode.mtime_nsec,
        };
        Ok(Attr {
            ino,
            inode,
            nlink,
            atime: t,
            ctime: t,
        })
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        if let Some(up) = &self.upper {
            if let Some(rec) = up.inode(ino)? {
                return Attr::from_upper(ino, rec);
            }
        }
        self.lower_attr(ino)
    }

    /// The lower view's entry `name` of `dir` (none for upper directories).
    fn lower_name(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>, FsError> {
        if dir.0 > self.lower.inode_count() {
            return Ok(None);
        }
        Ok(self.lower.lookup(dir, name)?)
    }

    /// The inode `name` of `dir` refers to, if any.
    fn resolve(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>, FsError> {
        if let Some(up) = &self.upper {
            if let Some(d) = up.dentry(dir, name)? {
                return Ok((!d.whiteout).then_some(Ino(d.ino)));
            }
        }
        self.lower_name(dir, name)
    }

    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Attr, FsError> {
        let ino = self.resolve(dir, name)?.ok_or(FsError::NotFound)?;
        self.getattr(ino)
    }

    /// A directory's entries in name order.
    pub fn readdir(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Ino)>, FsError> {
        if !self.getattr(dir)?.is_dir() {
            return Err(FsError::NotDir);
        }
        let lower = if dir.0 <= self.lower.inode_count() {
            self.lower.children(dir)?
        } else {
            Vec::new()
        };
        let Some(up) = &self.upper else {
            return Ok(lower);
        };
        let mut names: BTreeMap<Vec<u8>, Ino> = lower.into_iter().collect();
        for (name, d) in up.dentries(dir)? {
            if d.whiteout {
                names.remove(&name);
            } else {
                names.insert(name, Ino(d.ino));
            }
        }
        Ok(names.into_iter().collect())
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let attr = self.getattr(ino)?;
        if attr.kind() != InodeKind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(attr.inode.symlink_target)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let attr = self.getattr(ino)?;
        attr.inode
            .xattrs
            .into_iter()
            .find(|x| x.name == name)
            .map(|x| x.value)
            .ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, FsError> {
        Ok(self
            .getattr(ino)?
            .inode
            .xattrs
            .into_iter()
            .map(|x| x.name)
            .collect())
    }

    /// Notes an open file (its data file stays open while it is).
    pub fn opened(&self, ino: Ino) {
        let first = {
            let mut open = lock(&self.open);
            let entry = open.entry(ino).or_insert(OpenFile {
                count: 0,
                data: None,
                pinned: Vec::new(),
            });
            entry.count += 1;
            entry.count == 1
        };
        if first {
            let blocks = self.file_blocks(ino);
            self.cache.pin(&blocks);
            match lock(&self.open).get_mut(&ino) {
                Some(entry) => entry.pinned = blocks,
                // Closed meanwhile.
                None => self.cache.unpin(&blocks),
            }
        }
    }

    /// Notes a close; the last close of an unlinked inode removes it.
    pub fn released(&self, ino: Ino) -> Result<(), FsError> {
        {
            let mut open = lock(&self.open);
            let Some(entry) = open.get_mut(&ino) else {
                return Ok(());
            };
            entry.count = entry.count.saturating_sub(1);
            if entry.count > 0 {
                return Ok(());
            }
            if let Some(closed) = open.remove(&ino) {
                self.cache.unpin(&closed.pinned);
            }
            self.streams.forget(ino);
        }
        let Some(up) = &self.upper else {
            return Ok(());
        };
        let ch = up.change();
        if self.is_open(ino) {
            return Ok(());
        }
        match ch.inode(ino)? {
            Some(rec) if rec.nlink == 0 => ch.remove_inode(ino)?,
            _ => {}
        }
        Ok(ch.commit(None)?)
    }

    /// Whether the kernel may have `ino` open (on a connection taken over,
    /// any inode may be).
    fn is_open(&self, ino: Ino) -> bool {
        self.taken_over || lock(&self.open).contains_key(&ino)
    }

    /// The inode's upper data file, kept open while the inode is.
    fn data_file(&self, up: &Upper, ino: Ino, create: bool) -> Result<Option<Arc<File>>, FsError> {
        if let Some(OpenFile {
            data: Some(file), ..
        }) = lock(&self.open).get(&ino)
        {
            return Ok(Some(file.clone()));
        }
        let file = up
            .data_file(ino, create)
            .map_err(|source| FsError::Data { ino, source })?
            .map(Arc::new);
        if let (Some(f), Some(entry)) = (&file, lock(&self.open).get_mut(&ino)) {
            entry.data = Some(f.clone());
        }
        Ok(file)
    }

    /// Makes what was written so far durable against power loss (fsync,
    /// fsyncdir): `ino`'s data file, and the journal, which holds every
    /// change committed so far. No database flush: the other snapshots
    /// sharing the database pay nothing for this one's fsync.
    pub fn fsync(&self, ino: Option<Ino>) -> Result<(), FsError> {
        let Some(up) = &self.upper else {
            return Ok(());
        };
        if let Some(ino) = ino {
            if let Some(f) = self.data_file(up, ino, false)? {
                f.sync_data()
                    .map_err(|source| FsError::Data { ino, source })?;
            }
        }
        up.sync()?;
        Ok(())
    }

    /// Writes every committed change into the database and drops the
    /// journal that held it (at unmount: the next mount replays nothing).
    pub fn checkpoint(&self) -> Result<(), FsError> {
        if let Some(up) = &self.upper {
            up.flush()?;
        }
        Ok(())
    }

    fn writable(&self) -> Result<&Upper, FsError> {
        self.upper.as_ref().ok_or(FsError::ReadOnly)
    }
}

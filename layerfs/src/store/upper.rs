//! The records of a writable upper layer: its inodes (new ones and lower ones
//! copied up), names and whiteouts, slice lists, and the local data files
//! that hold the bytes written through it.
//!
//! A data file is laid out like the file it belongs to and sparse: a write
//! of N bytes at offset X writes N bytes at X of `data/<ino>` and records a
//! local slice `[X, X+N)`; the rest of the file keeps pointing at the blocks
//! it came from. What a write means for the namespace is decided by
//! [`crate::rootfs`]; this module only keeps records.
//!
//! Trees and keys are described in `store.proto` next to `UpperRecord`;
//! `upper_replies` maps `upper id ‖ request id` to what a change did (the
//! inode it made, or 0), for answering a request the kernel sends again
//! after a restart.
//!
//! Every write is part of a [`Change`]: changes are serialised, see their
//! own writes before they commit, and commit whole (journal record, then
//! then applied to the trees as a whole to readers) or, dropped, not at
//! all. A committed
//! change survives the process ([`super::journal`]); [`Upper::sync`]
//! (fsync) makes it survive power loss too, and [`Upper::flush`] (unmount,
//! or every MiB of journal) writes it into the database.

mod change;

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use slayerfs_chunkstore::BlockId;
use slayerfs_proto::store::{ChunkSlices, DentryRecord, StoredSlice, UpperInode, UpperRecord};
use slayerfs_proto::Message;

use super::journal::{Effect, Journal};
use super::{be_u64, corrupt, decode, remove_prefix, StoreError};
use crate::geometry::Ino;
use crate::slice::{Backing, SliceView};
use change::Pending;
pub use change::{Change, OpId};

/// Which upper layer of a database (one per writable mount or snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperId(pub u64);

type KeyValue = (Vec<u8>, Vec<u8>);

/// The trees of an upper layer, by their number in journal records.
const TREE_NAMES: [&str; 5] = [
    "upper_meta",
    "upper_inodes",
    "upper_dentries",
    "upper_slices",
    "upper_replies",
];
const META: u8 = 0;
const INODES: u8 = 1;
const DENTRIES: u8 = 2;
const SLICES: u8 = 3;
const REPLIES: u8 = 4;

/// The records of one upper layer.
pub struct Upper {
    id: UpperId,
    trees: [sled::Tree; 5],
    db: sled::Db,
    data_dir: PathBuf,
    record: Mutex<UpperRecord>,
    journal: Journal,
    /// Held for the length of a change.
    changing: Mutex<()>,
    /// Written while a committed change is applied to the trees, read by
    /// every read of them: a read sees a change whole or not at all. (Not
    /// a sled transaction: those take a lock over every database of the
    /// process, so each write of one container stalled every request of
    /// the node; the journal record already makes the change whole
    /// across a crash.)
    applying: RwLock<()>,
    /// The writes of the change in progress, seen by its own thread only.
    pending: Mutex<Option<Pending>>,
}

fn open_trees(db: &sled::Db) -> Result<[sled::Tree; 5], StoreError> {
    Ok([
        db.open_tree(TREE_NAMES[0])?,
        db.open_tree(TREE_NAMES[1])?,
        db.open_tree(TREE_NAMES[2])?,
        db.open_tree(TREE_NAMES[3])?,
        db.open_tree(TREE_NAMES[4])?,
    ])
}

/// Applies the effects of journal records, in order, to the trees (replay
/// after a crash): one batch per tree, since the trees are independent and
/// a batch keeps the order of its writes; data files go last (inode
/// numbers are never used twice, so no later record can want one back).
fn replay(
    trees: &[sled::Tree; 5],
    data_dir: &Path,
    records: &[Vec<Effect>],
) -> Result<(), StoreError> {
    let mut batches: [sled::Batch; 5] = Default::default();
    let mut files = Vec::new();
    for e in records.iter().flatten() {
        let batch = |tree: &u8| -> Result<usize, StoreError> {
            let t = usize::from(*tree);
            (t < batches.len())
                .then_some(t)
                .ok_or_else(|| corrupt("journal", format!("tree {tree}")))
        };
        match e {
            Effect::Set { tree, key, value } => {
                batches[batch(tree)?].insert(key.as_slice(), value.as_slice())
            }
            Effect::Remove { tree, key } => batches[batch(tree)?].remove(key.as_slice()),
            Effect::RemoveDataFile { ino } => files.push(Ino(*ino)),
        }
    }
    for (tree, batch) in trees.iter().zip(batches) {
        tree.apply_batch(batch)?;
    }
    for ino in files {
        remove_data_file(data_dir, ino);
    }
    Ok(())
}

fn remove_data_file(data_dir: &Path, ino: Ino) {
    match std::fs::remove_file(data_dir.join(ino.0.to_string())) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(%ino, error = %e, "cannot remove an upper data file"),
    }
}

impl Upper {
    /// Opens upper `id` of `db` over the lower chain `chain_key` with
    /// `lower_inodes` merged inodes, creating it if new; file data lives in
    /// `data_dir`. Changes an earlier process committed and did not
    /// checkpoint are replayed from the journal first. An upper made over
    /// another chain is refused.
    pub fn open(
        db: &sled::Db,
        id: UpperId,
        data_dir: &Path,
        chain_key: &str,
        lower_inodes: u64,
    ) -> Result<Self, StoreError> {
        let dir_err = |source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(dir_err)?;
        let trees = open_trees(db)?;
        let super::journal::Opened {
            journal,
            records,
            last,
        } = Journal::open(data_dir)?;
        match last {
            // Empty files (the last start's, written to by nothing): no
            // flush needed to drop them.
            Some(last) if records.is_empty() => journal.drop_through(last),
            Some(last) => {
                replay(&trees, data_dir, &records)?;
                flush_through(db, &journal, last)?;
                tracing::info!(
                    upper = id.0,
                    changes = records.len(),
                    "replayed the upper layer's journal"
                );
            }
            None => {}
        }
        let meta = &trees[META as usize];
        let record = match meta.get(id.0.to_be_bytes())? {
            Some(bytes) => {
                let rec: UpperRecord = decode("upper_meta", &bytes)?;
                if rec.chain_key != chain_key || rec.lower_inodes != lower_inodes {
                    return Err(StoreError::OtherChain {
                        found: rec.chain_key,
                        expected: chain_key.to_string(),
                    });
                }
                rec
            }
            None => {
                let rec = UpperRecord {
                    chain_key: chain_key.to_string(),
                    lower_inodes,
                    next_ino: lower_inodes + 1,
                };
                // Not flushed here (Prepare would wait on it): until the
                // next flush, a process that dies leaves no record, and the
                // next open makes this same one again; any change since was
                // journaled with the record it changed (`allocate_ino`).
                meta.insert(id.0.to_be_bytes(), rec.encode_to_vec())?;
                rec
            }
        };
        Ok(Upper {
            id,
            trees,
            db: db.clone(),
            data_dir: data_dir.to_path_buf(),
            record: Mutex::new(record),
            journal,
            changing: Mutex::new(()),
            applying: RwLock::new(()),
            pending: Mutex::new(None),
        })
    }

    /// Removes every record of upper `id` from `db` (its data directory is
    /// its owner's to remove).
    pub fn destroy(db: &sled::Db, id: UpperId) -> Result<(), StoreError> {
        let prefix = id.0.to_be_bytes();
        for name in [
            "upper_inodes",
            "upper_dentries",
            "upper_slices",
            "upper_replies",
        ] {
            remove_prefix(&db.open_tree(name)?, prefix)?;
        }
        db.open_tree("upper_meta")?.remove(prefix)?;
        db.flush()?;
        Ok(())
    }

    /// The ids of every upper layer in `db`.
    pub fn ids(db: &sled::Db) -> Result<Vec<UpperId>, StoreError> {
        db.open_tree("upper_meta")?
            .iter()
            .keys()
            .map(|k| {
                let k = k?;
                Ok(UpperId(be_u64("upper_meta", &k)?))
            })
            .collect()
    }

    /// Adds the id of every block a slice of any upper in `db` points at
    /// (lower files copied up keep pointing at their blocks).
    pub fn blocks_in_use(db: &sled::Db, into: &mut HashSet<BlockId>) -> Result<(), StoreError> {
        for item in db.open_tree("upper_slices")?.iter() {
            let (_, bytes) = item?;
            let list: ChunkSlices = decode("upper_slices", &bytes)?;
            for s in list.slices {
                if let Backing::Block { id, .. } = slice_from_record(s)?.backing {
                    into.insert(id);
                }
            }
        }
        Ok(())
    }

    /// What upper `id` holds: how many inodes it has records of (new and
    /// copied up) and the bytes its data files take on disk in `data_dir`.
    pub fn usage(db: &sled::Db, id: UpperId, data_dir: &Path) -> Result<(u64, u64), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let inodes = db
            .open_tree("upper_inodes")?
            .scan_prefix(id.0.to_be_bytes())
            .count() as u64;
        let data_err = |source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        };
        let mut bytes = 0;
        match std::fs::read_dir(data_dir) {
            Ok(entries) => {
                for e in entries {
                    // A file deleted meanwhile is simply not counted.
                    if let Ok(m) = e.map_err(data_err)?.metadata() {
                        bytes += m.blocks() * 512;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(data_err(e)),
        }
        Ok((inodes, bytes))
    }

    fn key(&self, ino: Ino) -> [u8; 16] {
        key_of(self.id, ino.0)
    }

    fn key_with(&self, ino: Ino, tail: &[u8]) -> Vec<u8> {
        let mut k = self.key(ino).to_vec();
        k.extend_from_slice(tail);
        k
    }

    fn tree(&self, t: u8) -> &sled::Tree {
        &self.trees[usize::from(t)]
    }

    /// A key's value as the caller sees it: the change in progress on
    /// this thread first, then the database.
    fn get(&self, t: u8, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending_get(t, key) {
            return Ok(v);
        }
        let _whole = self.reading();
        Ok(self.tree(t).get(key)?.map(|v| v.to_vec()))
    }

    /// Keeps a change from being applied while the trees are read.
    fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.applying.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key of tree `t` starting with `prefix`, in order, as the
    /// caller sees them.
    fn scan(&self, t: u8, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        {
            let _whole = self.reading();
            for item in self.tree(t).scan_prefix(prefix) {
                let (k, v) = item?;
                out.insert(k.to_vec(), v.to_vec());
            }
        }
        self.pending_overlay(t, prefix, &mut out);
        Ok(out.into_iter().collect())
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<UpperInode>, StoreError> {
        self.get(INODES, &self.key(ino))?
            .map(|b| decode("upper_inodes", &b))
            .transpose()
    }

    pub fn has_inode(&self, ino: Ino) -> Result<bool, StoreError> {
        Ok(self.get(INODES, &self.key(ino))?.is_some())
    }

    /// Every inode of the upper (for recovery and for turning it into a
    /// layer).
    pub fn inodes(&self) -> Result<Vec<(Ino, UpperInode)>, StoreError> {
        self.scan(INODES, &self.id.0.to_be_bytes())?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    Ino(be_u64("upper_inodes", &k[8..])?),
                    decode("upper_inodes", &v)?,
                ))
            })
            .collect()
    }

    pub fn dentry(&self, dir: Ino, name: &[u8]) -> Result<Option<DentryRecord>, StoreError> {
        self.get(DENTRIES, &self.key_with(dir, name))?
            .map(|b| decode("upper_dentries", &b))
            .transpose()
    }

    /// A directory's upper names in byte order, whiteouts included.
    pub fn dentries(&self, dir: Ino) -> Result<Vec<(Vec<u8>, DentryRecord)>, StoreError> {
        self.scan(DENTRIES, &self.key(dir))?
            .into_iter()
            .map(|(k, v)| Ok((k[16..].to_vec(), decode("upper_dentries", &v)?)))
            .collect()
    }

    /// One chunk's slices, sorted and non-overlapping.
    pub fn chunk_slices(&self, ino: Ino, chunk: u64) -> Result<Vec<SliceView>, StoreError> {
        let Some(bytes) = self.get(SLICES, &self.key_with(ino, &chunk.to_be_bytes()))? else {
            return Ok(Vec::new());
        };
        let list: ChunkSlices = decode("upper_slices", &bytes)?;
        list.slices.into_iter().map(slice_from_record).collect()
    }

    /// What an earlier change answering request `id` did (see
    /// [`Change::commit`]), if one did.
    pub fn reply_of(&self, id: u64) -> Result<Option<u64>, StoreError> {
        let _whole = self.reading();
        match self.tree(REPLIES).get(key_of(self.id, id))? {
            Some(v) => Ok(Some(be_u64("upper_replies", &v)?)),
            None => Ok(None),
        }
    }

    /// Forgets what changes answered (a new connection's request ids
    /// start again).
    pub fn forget_replies(&self) -> Result<(), StoreError> {
        remove_prefix(self.tree(REPLIES), self.id.0.to_be_bytes())?;
        Ok(())
    }

    pub fn data_path(&self, ino: Ino) -> PathBuf {
        self.data_dir.join(ino.0.to_string())
    }

    /// The inode's data file, created if `create`.
    pub fn data_file(&self, ino: Ino, create: bool) -> std::io::Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(self.data_path(ino))
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Bytes an unprivileged writer may still use where the data lives.
    pub fn available_bytes(&self) -> std::io::Result<u64> {
        free_bytes(&self.data_dir)
    }

    /// Makes every change committed so far durable against power loss:
    /// the journal file, and the data directory (whose names of data
    /// files made since are as much a part of the change).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.journal.sync()?;
        File::open(&self.data_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::DataDir {
                path: self.data_dir.clone(),
                source,
            })?;
        Ok(())
    }

    /// Writes every change committed so far into the database, durably,
    /// and drops the journal that held them until then (a checkpoint).
    pub fn flush(&self) -> Result<(), StoreError> {
        let last = {
            let _serial = self.changing.lock().unwrap_or_else(|p| p.into_inner());
            self.journal.rotate()?
        };
        flush_through(&self.db, &self.journal, last)
    }
}

/// Flushes the database, then drops the journal files up to `last`
/// (every record in them is applied).
fn flush_through(db: &sled::Db, journal: &Journal, last: u64) -> Result<(), StoreError> {
    db.flush()?;
    journal.drop_through(last);
    Ok(())
}

fn key_of(id: UpperId, n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

fn slice_record(s: &SliceView) -> StoredSlice {
    let (block_id, offset_in_block) = match s.backing {
        Backing::Block {
            id,
            offset_in_block,
        } => (id.as_bytes().to_vec(), offset_in_block),
        Backing::UpperData => (Vec::new(), 0),
    };
    StoredSlice {
        offset_in_chunk: s.offset_in_chunk,
        length: s.length,
        block_id,
        offset_in_block,
        ..Default::default()
    }
}

fn slice_from_record(s: StoredSlice) -> Result<SliceView, StoreError> {
    let backing = if s.block_id.is_empty() {
        Backing::UpperData
    } else {
        Backing::Block {
            id: BlockId::from_slice(&s.block_id).ok_or_else(|| {
                corrupt(
                    "upper_slices",
                    format!("block id of {} bytes", s.block_id.len()),
                )
            })?,
            offset_in_block: s.offset_in_block,
        }
    };
    Ok(SliceView {
        offset_in_chunk: s.offset_in_chunk,
        length: s.length,
        backing,
    })
}

/// Blocks, free, available, files, free files and fragment size of the
/// filesystem holding `path`.
/// Bytes an unprivileged writer may still use on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let (_, _, avail, _, _, frsize) = statvfs(path)?;
    Ok(avail.saturating_mul(u64::from(frsize)))
}

pub fn statvfs(path: &Path) -> std::io::Result<(u64, u64, u64, u64, u64, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled `s`.
    let s = unsafe { s.assume_init() };
    Ok((
        s.f_blocks,
        s.f_bfree,
        s.f_bavail,
        s.f_files,
        s.f_ffree,
        s.f_frsize as u32,
    ))
}

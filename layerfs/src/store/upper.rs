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
//! Trees and keys are described in `store.proto` next to `UpperRecord`.
//! Records are written without a flush; [`Upper::flush`] (fsync, unmount)
//! makes them durable.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use slayerfs_chunkstore::BlockId;
use slayerfs_proto::store::{ChunkSlices, DentryRecord, StoredSlice, UpperInode, UpperRecord};
use slayerfs_proto::Message;

use super::{be_u64, corrupt, decode, remove_prefix, StoreError};
use crate::geometry::Ino;
use crate::slice::{Backing, SliceView};

/// Which upper layer of a database (one per writable mount or snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperId(pub u64);

/// The records of one upper layer.
pub struct Upper {
    id: UpperId,
    meta: sled::Tree,
    inodes: sled::Tree,
    dentries: sled::Tree,
    slices: sled::Tree,
    db: sled::Db,
    data_dir: PathBuf,
    record: Mutex<UpperRecord>,
}

impl Upper {
    /// Opens upper `id` of `db` over the lower chain `chain_key` with
    /// `lower_inodes` merged inodes, creating it if new; file data lives in
    /// `data_dir`. An upper made over another chain is refused.
    pub fn open(
        db: &sled::Db,
        id: UpperId,
        data_dir: &Path,
        chain_key: &str,
        lower_inodes: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let meta = db.open_tree("upper_meta")?;
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
                meta.insert(id.0.to_be_bytes(), rec.encode_to_vec())?;
                db.flush()?;
                rec
            }
        };
        Ok(Upper {
            id,
            inodes: db.open_tree("upper_inodes")?,
            dentries: db.open_tree("upper_dentries")?,
            slices: db.open_tree("upper_slices")?,
            meta,
            db: db.clone(),
            data_dir: data_dir.to_path_buf(),
            record: Mutex::new(record),
        })
    }

    /// Removes every record of upper `id` from `db` (its data directory is
    /// its owner's to remove).
    pub fn destroy(db: &sled::Db, id: UpperId) -> Result<(), StoreError> {
        let prefix = id.0.to_be_bytes();
        for name in ["upper_inodes", "upper_dentries", "upper_slices"] {
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
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.id.0.to_be_bytes());
        k[8..].copy_from_slice(&ino.0.to_be_bytes());
        k
    }

    fn key_with(&self, ino: Ino, tail: &[u8]) -> Vec<u8> {
        let mut k = self.key(ino).to_vec();
        k.extend_from_slice(tail);
        k
    }

    /// A fresh inode number, never handed out before by this upper.
    pub fn allocate_ino(&self) -> Result<Ino, StoreError> {
        let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let ino = Ino(rec.next_ino);
        rec.next_ino += 1;
        self.meta
            .insert(self.id.0.to_be_bytes(), rec.encode_to_vec())?;
        Ok(ino)
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<UpperInode>, StoreError> {
        self.inodes
            .get(self.key(ino))?
            .map(|b| decode("upper_inodes", &b))
            .transpose()
    }

    pub fn has_inode(&self, ino: Ino) -> Result<bool, StoreError> {
        Ok(self.inodes.contains_key(self.key(ino))?)
    }

    pub fn put_inode(&self, ino: Ino, rec: &UpperInode) -> Result<(), StoreError> {
        self.inodes.insert(self.key(ino), rec.encode_to_vec())?;
        Ok(())
    }

    /// Every inode of the upper (for recovery and for turning it into a
    /// layer).
    pub fn inodes(&self) -> Result<Vec<(Ino, UpperInode)>, StoreError> {
        self.inodes
            .scan_prefix(self.id.0.to_be_bytes())
            .map(|item| {
                let (k, v) = item?;
                Ok((
                    Ino(be_u64("upper_inodes", &k[8..])?),
                    decode("upper_inodes", &v)?,
                ))
            })
            .collect()
    }

    /// Forgets an inode: its record, slices and data file.
    pub fn remove_inode(&self, ino: Ino) -> Result<(), StoreError> {
        self.inodes.remove(self.key(ino))?;
        self.truncate_slices(ino, 0)?;
        match std::fs::remove_file(self.data_path(ino)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%ino, error = %e, "cannot remove an upper data file"),
        }
        Ok(())
    }

    pub fn dentry(&self, dir: Ino, name: &[u8]) -> Result<Option<DentryRecord>, StoreError> {
        self.dentries
            .get(self.key_with(dir, name))?
            .map(|b| decode("upper_dentries", &b))
            .transpose()
    }

    pub fn put_dentry(&self, dir: Ino, name: &[u8], rec: DentryRecord) -> Result<(), StoreError> {
        self.dentries
            .insert(self.key_with(dir, name), rec.encode_to_vec())?;
        Ok(())
    }

    pub fn remove_dentry(&self, dir: Ino, name: &[u8]) -> Result<(), StoreError> {
        self.dentries.remove(self.key_with(dir, name))?;
        Ok(())
    }

    /// A directory's upper names in byte order, whiteouts included.
    pub fn dentries(&self, dir: Ino) -> Result<Vec<(Vec<u8>, DentryRecord)>, StoreError> {
        self.dentries
            .scan_prefix(self.key(dir))
            .map(|item| {
                let (k, v) = item?;
                Ok((k[16..].to_vec(), decode("upper_dentries", &v)?))
            })
            .collect()
    }

    /// Removes every upper name of a directory.
    pub fn clear_dentries(&self, dir: Ino) -> Result<(), StoreError> {
        remove_prefix(&self.dentries, self.key(dir))?;
        Ok(())
    }

    /// One chunk's slices, sorted and non-overlapping.
    pub fn chunk_slices(&self, ino: Ino, chunk: u64) -> Result<Vec<SliceView>, StoreError> {
        let Some(bytes) = self.slices.get(self.key_with(ino, &chunk.to_be_bytes()))? else {
            return Ok(Vec::new());
        };
        let list: ChunkSlices = decode("upper_slices", &bytes)?;
        list.slices.into_iter().map(slice_from_record).collect()
    }

    pub fn put_chunk_slices(
        &self,
        ino: Ino,
        chunk: u64,
        slices: &[SliceView],
    ) -> Result<(), StoreError> {
        let key = self.key_with(ino, &chunk.to_be_bytes());
        if slices.is_empty() {
            self.slices.remove(key)?;
        } else {
            let list = ChunkSlices {
                slices: slices.iter().map(slice_record).collect(),
            };
            self.slices.insert(key, list.encode_to_vec())?;
        }
        Ok(())
    }

    /// Drops the slice lists of chunks `from` and above.
    pub fn truncate_slices(&self, ino: Ino, from: u64) -> Result<(), StoreError> {
        let start = self.key_with(ino, &from.to_be_bytes());
        let end = self.key_with(ino, &u64::MAX.to_be_bytes());
        let mut batch = sled::Batch::default();
        for k in self.slices.range(start..=end).keys() {
            batch.remove(k?);
        }
        self.slices.apply_batch(batch)?;
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
        let (_, _, avail, _, _, frsize) = statvfs(&self.data_dir)?;
        Ok(avail.saturating_mul(u64::from(frsize)))
    }

    /// Makes every record written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
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

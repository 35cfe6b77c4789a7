//! The sled layer store: the inodes, names and slices of every imported
//! layer, which the read path works from.
//!
//! Trees and keys (all integers big-endian, so keys sort numerically):
//! - `layers`:   index digest string        → `LayerRecord`
//! - `inodes`:   layer id ‖ ino             → `InodeRecord`
//! - `dentries`: layer id ‖ parent ino ‖ name → `DentryRecord`
//! - `slices`:   layer id ‖ ino ‖ chunk     → `ChunkSlices`
//!
//! Loading is crash-safe: a layer's record is written first as not ready,
//! then its data, then the record as ready, with a flush between; a layer
//! found not ready is wiped and loaded again.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use slayerfs_chunkstore::{BlockId, IndexDigest};
use slayerfs_proto::index::{Inode, InodeKind, LayerIndex};
use slayerfs_proto::store::{ChunkSlices, DentryRecord, InodeRecord, LayerRecord, StoredSlice};
use slayerfs_proto::Message;

use super::{decode, remove_prefix, StoreError};
use crate::geometry::Ino;
use crate::index::ValidIndex;
use crate::slice::{Backing, SliceView};

/// Short id of an imported layer, the key prefix of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerId(pub u64);

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer {}", self.0)
    }
}

/// A loaded layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub id: LayerId,
    pub record: LayerRecord,
}

/// Layers in sled.
pub struct LayerDb {
    db: sled::Db,
    layers: sled::Tree,
    inodes: sled::Tree,
    dentries: sled::Tree,
    slices: sled::Tree,
    load_lock: Mutex<()>,
}

fn key2(layer: LayerId, ino: Ino) -> [u8; 16] {
    super::key2(layer.0, ino.0)
}

fn key3(layer: LayerId, ino: Ino, tail: &[u8]) -> Vec<u8> {
    super::key3(layer.0, ino.0, tail)
}

impl LayerDb {
    /// Opens (creating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::from_db(sled::open(dir)?)
    }

    /// Uses an already open database (shared with other owners of trees).
    pub fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        Ok(LayerDb {
            layers: db.open_tree("layers")?,
            inodes: db.open_tree("inodes")?,
            dentries: db.open_tree("dentries")?,
            slices: db.open_tree("slices")?,
            db,
            load_lock: Mutex::new(()),
        })
    }

    /// A tree of the same database (for the merged views).
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    pub(crate) fn generate_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The layer loaded from index `digest`, if it is loaded completely.
    pub fn layer(&self, digest: &IndexDigest) -> Result<Option<Layer>, StoreError> {
        let Some(bytes) = self.layers.get(digest.to_string())? else {
            return Ok(None);
        };
        let record: LayerRecord = decode("layers", &bytes)?;
        Ok(record.ready.then_some(Layer {
            id: LayerId(record.id),
            record,
        }))
    }

    /// Loads a validated index under its digest; loading a layer that is
    /// already there returns it unchanged.
    pub fn load_index(
        &self,
        digest: &IndexDigest,
        index: &ValidIndex,
    ) -> Result<Layer, StoreError> {
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest.to_string();
        if let Some(bytes) = self.layers.get(&key)? {
            let old: LayerRecord = decode("layers", &bytes)?;
            if old.ready {
                return Ok(Layer {
                    id: LayerId(old.id),
                    record: old,
                });
            }
            self.wipe(LayerId(old.id))?;
        }
        let id = LayerId(self.db.generate_id()? + 1);
        let mut record = LayerRecord {
            id: id.0,
            index_digest: key.clone(),
            source_digest: index.source_digest.clone(),
            inode_count: index.inodes.len() as u64,
            chunk_size: index.chunk_size,
            block_size: index.block_size,
            ready: false,
        };
        self.layers.insert(&key, record.encode_to_vec())?;
        self.db.flush()?;

        let nlink = link_counts(index);
        // Written one by one: a batch of a large layer made sled hold
        // hundreds of MiB at once (300 MiB for 50,000 entries), as fast.
        // Until `ready` is set, a crash leaves a partial layer that the next
        // load or recovery wipes.
        let (inodes, dentries, slices) = (&self.inodes, &self.dentries, &self.slices);
        for (i, inode) in index.inodes.iter().enumerate() {
            let ino = Ino(i as u64 + 1);
            inodes.insert(key2(id, ino), inode_record(inode, nlink[i]).encode_to_vec())?;
            for d in &inode.children {
                let rec = DentryRecord {
                    ino: d.ino,
                    whiteout: d.whiteout,
                };
                dentries.insert(key3(id, ino, &d.name), rec.encode_to_vec())?;
            }
            let mut by_chunk: HashMap<u64, Vec<StoredSlice>> = HashMap::new();
            for s in &inode.slices {
                by_chunk
                    .entry(s.chunk_index)
                    .or_default()
                    .push(StoredSlice {
                        offset_in_chunk: s.offset_in_chunk,
                        length: s.length,
                        block_id: index.blocks[s.block as usize].clone(),
                        offset_in_block: s.offset_in_block,
                    });
            }
            for (chunk, list) in by_chunk {
                let value = ChunkSlices { slices: list }.encode_to_vec();
                slices.insert(key3(id, ino, &chunk.to_be_bytes()), value)?;
            }
        }
        self.db.flush()?;
        record.ready = true;
        self.layers.insert(&key, record.encode_to_vec())?;
        self.db.flush()?;
        Ok(Layer { id, record })
    }

    /// Removes every record of a layer but its `layers` entry.
    fn wipe(&self, id: LayerId) -> Result<(), StoreError> {
        for tree in [&self.inodes, &self.dentries, &self.slices] {
            remove_prefix(tree, id.0.to_be_bytes())?;
        }
        Ok(())
    }

    /// Every completely loaded layer.
    pub fn layers(&self) -> Result<Vec<Layer>, StoreError> {
        let mut out = Vec::new();
        for item in self.layers.iter() {
            let (_, bytes) = item?;
            let record: LayerRecord = decode("layers", &bytes)?;
            if record.ready {
                out.push(Layer {
                    id: LayerId(record.id),
                    record,
                });
            }
        }
        Ok(out)
    }

    /// Removes a layer and all its records; false if it was not loaded.
    /// Merged views over it are their owner's to remove
    /// ([`super::merged::remove_chain`]).
    pub fn remove_layer(&self, digest: &IndexDigest) -> Result<bool, StoreError> {
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest.to_string();
        let Some(bytes) = self.layers.get(&key)? else {
            return Ok(false);
        };
        let mut record: LayerRecord = decode("layers", &bytes)?;
        // Marked not ready first: a crash part way leaves a layer that
        // [`Self::recover`] finishes removing, never one with records missing.
        record.ready = false;
        self.layers.insert(&key, record.encode_to_vec())?;
        self.db.flush()?;
        self.wipe(LayerId(record.id))?;
        self.layers.remove(&key)?;
        self.db.flush()?;
        Ok(true)
    }

    /// How many inodes a layer has and the bytes of its files' contents
    /// (a file with several names counted once).
    pub fn usage(&self, layer: LayerId) -> Result<(u64, u64), StoreError> {
        let (mut inodes, mut bytes) = (0, 0);
        for item in self.inodes.scan_prefix(layer.0.to_be_bytes()) {
            let (_, v) = item?;
            let rec: InodeRecord = decode("inodes", &v)?;
            inodes += 1;
            if let Some(i) = rec.inode.filter(|i| i.kind == InodeKind::Regular as i32) {
                bytes += i.size;
            }
        }
        Ok((inodes, bytes))
    }

    /// Adds the id of every block a slice of a loaded layer points at.
    pub fn blocks_in_use(&self, into: &mut HashSet<BlockId>) -> Result<(), StoreError> {
        for item in self.slices.iter() {
            let (_, bytes) = item?;
            let list: ChunkSlices = decode("slices", &bytes)?;
            for s in list.slices {
                into.insert(slice_block("slices", &s.block_id)?);
            }
        }
        Ok(())
    }

    /// Finishes or undoes loads a crash interrupted: their partial records
    /// are removed (the next load starts afresh). Returns how many.
    pub fn recover(&self) -> Result<usize, StoreError> {
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for item in self.layers.iter() {
            let (key, bytes) = item?;
            let record: LayerRecord = decode("layers", &bytes)?;
            if !record.ready {
                self.wipe(LayerId(record.id))?;
                self.layers.remove(key)?;
                n += 1;
            }
        }
        self.db.flush()?;
        Ok(n)
    }

    /// An inode's attributes (no slices, no children) and link count.
    pub fn inode(&self, layer: LayerId, ino: Ino) -> Result<Option<(Inode, u32)>, StoreError> {
        let Some(bytes) = self.inodes.get(key2(layer, ino))? else {
            return Ok(None);
        };
        let rec: InodeRecord = decode("inodes", &bytes)?;
        let inode = rec.inode.ok_or(StoreError::Corrupt {
            tree: "inodes",
            reason: format!("{layer} {ino} has no attributes"),
        })?;
        Ok(Some((inode, rec.nlink)))
    }

    pub fn lookup(
        &self,
        layer: LayerId,
        dir: Ino,
        name: &[u8],
    ) -> Result<Option<DentryRecord>, StoreError> {
        self.dentries
            .get(key3(layer, dir, name))?
            .map(|b| decode("dentries", &b))
            .transpose()
    }

    /// The entries of a directory in name order, whiteouts included.
    pub fn children(
        &self,
        layer: LayerId,
        dir: Ino,
    ) -> Result<Vec<(Vec<u8>, DentryRecord)>, StoreError> {
        let prefix = key2(layer, dir);
        self.dentries
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                Ok((k[16..].to_vec(), decode("dentries", &v)?))
            })
            .collect()
    }

    /// The slices of one chunk of a file, oldest first.
    pub fn chunk_slices(
        &self,
        layer: LayerId,
        ino: Ino,
        chunk: u64,
    ) -> Result<Vec<SliceView>, StoreError> {
        let Some(bytes) = self.slices.get(key3(layer, ino, &chunk.to_be_bytes()))? else {
            return Ok(Vec::new());
        };
        let list: ChunkSlices = decode("slices", &bytes)?;
        list.slices
            .into_iter()
            .map(|s| {
                let block = slice_block("slices", &s.block_id)?;
                Ok(SliceView {
                    offset_in_chunk: s.offset_in_chunk,
                    length: s.length,
                    backing: Backing::Block {
                        id: block,
                        offset_in_block: s.offset_in_block,
                    },
                })
            })
            .collect()
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Rebuilds the index a layer was loaded from, from sled alone (used to
    /// check that loading loses nothing).
    pub fn export_index(&self, layer: &Layer) -> Result<LayerIndex, StoreError> {
        use super::be_u64;
        use slayerfs_proto::index::{Dentry, Slice};

        let id = layer.id;
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        let mut position: HashMap<BlockId, u32> = HashMap::new();
        let mut inodes = Vec::with_capacity(layer.record.inode_count as usize);
        for n in 1..=layer.record.inode_count {
            let ino = Ino(n);
            let (attrs, _nlink) = self.inode(id, ino)?.ok_or(StoreError::Corrupt {
                tree: "inodes",
                reason: format!("{id} has no inode {n}"),
            })?;
            let children = self
                .children(id, ino)?
                .into_iter()
                .map(|(name, d)| Dentry {
                    name,
                    ino: d.ino,
                    whiteout: d.whiteout,
                })
                .collect();
            let mut slices = Vec::new();
            let mut chunk_keys: Vec<u64> = Vec::new();
            for k in self.slices.scan_prefix(key2(id, ino)).keys() {
                let k = k?;
                chunk_keys.push(be_u64("slices", &k[16..])?);
            }
            for chunk in chunk_keys {
                for s in self.chunk_slices(id, ino, chunk)? {
                    let Backing::Block {
                        id: block_id,
                        offset_in_block,
                    } = s.backing
                    else {
                        continue;
                    };
                    let block = *position.entry(block_id).or_insert_with(|| {
                        blocks.push(block_id.as_bytes().to_vec());
                        (blocks.len() - 1) as u32
                    });
                    slices.push(Slice {
                        chunk_index: chunk,
                        offset_in_chunk: s.offset_in_chunk,
                        length: s.length,
                        block,
                        offset_in_block,
                    });
                }
            }
            inodes.push(Inode {
                slices,
                children,
                ..attrs
            });
        }
        Ok(LayerIndex {
            version: slayerfs_proto::index::VERSION,
            chunk_size: layer.record.chunk_size,
            block_size: layer.record.block_size,
            source_digest: layer.record.source_digest.clone(),
            blocks,
            inodes,
        })
    }
}

/// The block id of a stored slice.
fn slice_block(tree: &'static str, bytes: &[u8]) -> Result<BlockId, StoreError> {
    BlockId::from_slice(bytes).ok_or(StoreError::Corrupt {
        tree,
        reason: format!("block id of {} bytes", bytes.len()),
    })
}

/// Names per inode: directories 2 + subdirectories, others their names.
fn link_counts(index: &LayerIndex) -> Vec<u32> {
    let mut n: Vec<u32> = index
        .inodes
        .iter()
        .map(|i| {
            if i.kind == InodeKind::Directory as i32 {
                2
            } else {
                0
            }
        })
        .collect();
    for (i, inode) in index.inodes.iter().enumerate() {
        for d in inode.children.iter().filter(|d| !d.whiteout) {
            let child = (d.ino - 1) as usize;
            if index.inodes[child].kind == InodeKind::Directory as i32 {
                n[i] += 1;
            } else {
                n[child] += 1;
            }
        }
    }
    n
}

fn inode_record(inode: &Inode, nlink: u32) -> InodeRecord {
    InodeRecord {
        inode: Some(Inode {
            slices: Vec::new(),
            children: Vec::new(),
            ..inode.clone()
        }),
        nlink,
    }
}

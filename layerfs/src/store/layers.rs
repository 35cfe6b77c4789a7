//! The layer store: the inodes, names and slices of every imported
//! layer, which the read path works from.
//!
//! A layer's record (tree `layers`: index digest string → `LayerRecord`)
//! is in sled; its inodes (`InodeRecord`), names (`DentryRecord`'s fields)
//! and slices (`ChunkSlices` per chunk) are in a record file of its own,
//! `layer-ID` ([`super::table`]): they never change once loaded.
//!
//! Loading is crash-safe: a layer's record is written first as not ready,
//! then its record file (synced, renamed, directory synced), then the
//! record as ready, with a flush between; a layer found not ready is wiped
//! and loaded again. Layers loaded by builds that kept these records in
//! sled move into record files at [`LayerDb::recover`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use slayerfs_chunkstore::{BlockId, IndexDigest, PartSize};
use slayerfs_proto::index::{Inode, InodeKind, LayerIndex};
use slayerfs_proto::store::{ChunkSlices, DentryRecord, InodeRecord, LayerRecord, StoredSlice};
use slayerfs_proto::Message;

use super::table::{Entry, Table, TableWriter};
use super::{decode, legacy, StoreError};
use crate::geometry::Ino;
use crate::index::ValidIndex;
use crate::slice::{Backing, ChunkView, SliceView};

/// Short id of an imported layer, the name of its record file.
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

/// Layers: their records in sled, their contents in record files.
pub struct LayerDb {
    db: sled::Db,
    layers: sled::Tree,
    /// Where record files are (layers' and merged views').
    tables_dir: PathBuf,
    /// Record files opened so far, by name.
    open_tables: RwLock<HashMap<String, Arc<Table>>>,
    load_lock: Mutex<()>,
}

/// The record file name of a layer.
fn layer_table(id: LayerId) -> String {
    format!("layer-{}", id.0)
}

impl LayerDb {
    /// Opens (creating) the database in `dir`, record files in
    /// `dir/tables`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::from_db(sled::open(dir)?, &dir.join("tables"))
    }

    /// Uses an already open database (shared with other owners of trees),
    /// record files in `tables_dir`.
    pub fn from_db(db: sled::Db, tables_dir: &Path) -> Result<Self, StoreError> {
        Ok(LayerDb {
            layers: db.open_tree("layers")?,
            db,
            tables_dir: tables_dir.to_path_buf(),
            open_tables: RwLock::new(HashMap::new()),
            load_lock: Mutex::new(()),
        })
    }

    /// A tree of the same database (for the merged views).
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Moves the records of `id` an earlier build kept in sled into the
    /// record file `name`, unless that file is there.
    pub(crate) fn move_from_sled(
        &self,
        name: &str,
        trees: &legacy::Trees,
        id: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        let path = self.table_path(name);
        if path.exists() {
            return Ok(());
        }
        legacy::move_to_file(&self.db, trees, id, count, &path)
    }

    /// Removes whatever records of `id` an earlier build kept in sled.
    pub(crate) fn wipe_from_sled(&self, trees: &legacy::Trees, id: u64) -> Result<(), StoreError> {
        legacy::wipe(&self.db, trees, id)
    }

    pub(crate) fn generate_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Where the record file `name` is (or is to be written).
    pub(crate) fn table_path(&self, name: &str) -> PathBuf {
        self.tables_dir.join(name)
    }

    /// The record file `name`, opened and checked once per process.
    pub(crate) fn table(&self, name: &str) -> Result<Arc<Table>, StoreError> {
        let cached = self
            .open_tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        if let Some(t) = cached {
            return Ok(t);
        }
        let t = Arc::new(Table::open(&self.table_path(name))?);
        self.open_tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Removes the record file `name` (a missing one is fine); views of it
    /// still open keep their mapping.
    pub(crate) fn remove_table(&self, name: &str) -> Result<(), StoreError> {
        self.open_tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let path = self.table_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Table { path, source }),
        }
    }

    fn layer_records(&self, id: LayerId) -> Result<Arc<Table>, StoreError> {
        self.table(&layer_table(id))
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
        self.write_table(id, index)?;
        record.ready = true;
        self.layers.insert(&key, record.encode_to_vec())?;
        self.db.flush()?;
        Ok(Layer { id, record })
    }

    /// Writes layer `id`'s record file from its index.
    fn write_table(&self, id: LayerId, index: &ValidIndex) -> Result<(), StoreError> {
        let nlink = link_counts(index);
        let mut w = TableWriter::create(
            &self.table_path(&layer_table(id)),
            index.inodes.len() as u64,
        )?;
        for (i, inode) in index.inodes.iter().enumerate() {
            let ino = Ino(i as u64 + 1);
            w.put_attr(ino, &inode_record(inode, nlink[i]).encode_to_vec())?;
            if !inode.children.is_empty() {
                let mut entries: Vec<Entry<'_>> = inode
                    .children
                    .iter()
                    .map(|d| Entry {
                        name: &d.name,
                        ino: d.ino,
                        whiteout: d.whiteout,
                    })
                    .collect();
                entries.sort_by(|a, b| a.name.cmp(b.name));
                w.put_entries(ino, &entries)?;
            }
            let mut by_chunk: BTreeMap<u64, Vec<StoredSlice>> = BTreeMap::new();
            for s in &inode.slices {
                by_chunk
                    .entry(s.chunk_index)
                    .or_default()
                    .push(stored_slice(index, s));
            }
            if !by_chunk.is_empty() {
                let chunks: Vec<(u64, Vec<u8>)> = by_chunk
                    .into_iter()
                    .map(|(c, slices)| (c, ChunkSlices { slices }.encode_to_vec()))
                    .collect();
                w.put_chunks(ino, &chunks)?;
            }
        }
        w.finish()
    }

    /// Removes every record of a layer but its `layers` entry.
    fn wipe(&self, id: LayerId) -> Result<(), StoreError> {
        self.remove_table(&layer_table(id))?;
        self.wipe_from_sled(&legacy::LAYER, id.0)
    }

    /// Every completely loaded layer.
    pub fn layers(&self) -> Result<Vec<Layer>, StoreError> {
        Ok(self
            .all_layers()?
            .into_iter()
            .filter(|l| l.record.ready)
            .collect())
    }

    /// Every layer with a record, loaded or not.
    fn all_layers(&self) -> Result<Vec<Layer>, StoreError> {
        let mut out = Vec::new();
        for item in self.layers.iter() {
            let (_, bytes) = item?;
            let record: LayerRecord = decode("layers", &bytes)?;
            out.push(Layer {
                id: LayerId(record.id),
                record,
            });
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
        let table = self.layer_records(layer)?;
        let (mut inodes, mut bytes) = (0, 0);
        for n in 1..=table.inode_count() {
            let Some(v) = table.attr(Ino(n))? else {
                continue;
            };
            let rec: InodeRecord = decode("inodes", v)?;
            inodes += 1;
            if let Some(i) = rec.inode.filter(|i| i.kind == InodeKind::Regular as i32) {
                bytes += i.size;
            }
        }
        Ok((inodes, bytes))
    }

    /// Adds the id of every block a slice of a layer points at, layers
    /// still loading included.
    pub fn blocks_in_use(&self, into: &mut HashSet<BlockId>) -> Result<(), StoreError> {
        for layer in self.all_layers()? {
            let table = match self.layer_records(layer.id) {
                Ok(t) => t,
                // Not written yet (a load in progress): nothing to mark.
                Err(StoreError::Table { source, .. })
                    if !layer.record.ready && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            for n in 1..=table.inode_count() {
                for (_, v) in table.chunks(Ino(n))? {
                    let list: ChunkSlices = decode("slices", v)?;
                    for s in list.slices {
                        into.insert(slice_block("slices", &s.block_id)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// Finishes or undoes loads a crash interrupted: their partial records
    /// are removed (the next load starts afresh). Returns how many. Also
    /// moves layers an earlier build kept in sled into record files, and
    /// removes record files no layer or view owns (an interrupted write).
    pub fn recover(&self) -> Result<usize, StoreError> {
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        let mut owned = HashSet::new();
        for item in self.layers.iter() {
            let (key, bytes) = item?;
            let record: LayerRecord = decode("layers", &bytes)?;
            let id = LayerId(record.id);
            if !record.ready {
                self.wipe(id)?;
                self.layers.remove(key)?;
                n += 1;
                continue;
            }
            let name = layer_table(id);
            self.move_from_sled(&name, &legacy::LAYER, id.0, record.inode_count)?;
            owned.insert(name);
        }
        self.db.flush()?;
        if let Ok(dir) = std::fs::read_dir(&self.tables_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-")
                    || (name.starts_with("layer-") && !owned.contains(&name))
                {
                    self.remove_table(&name)?;
                }
            }
        }
        Ok(n)
    }

    /// An inode's attributes (no slices, no children) and link count.
    pub fn inode(&self, layer: LayerId, ino: Ino) -> Result<Option<(Inode, u32)>, StoreError> {
        let table = self.layer_records(layer)?;
        let Some(bytes) = table.attr(ino)? else {
            return Ok(None);
        };
        let rec: InodeRecord = decode("inodes", bytes)?;
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
        Ok(self
            .layer_records(layer)?
            .lookup(dir, name)?
            .map(|e| DentryRecord {
                ino: e.ino,
                whiteout: e.whiteout,
            }))
    }

    /// The entries of a directory in name order, whiteouts included.
    pub fn children(
        &self,
        layer: LayerId,
        dir: Ino,
    ) -> Result<Vec<(Vec<u8>, DentryRecord)>, StoreError> {
        Ok(self
            .layer_records(layer)?
            .entries(dir)?
            .into_iter()
            .map(|e| {
                let rec = DentryRecord {
                    ino: e.ino,
                    whiteout: e.whiteout,
                };
                (e.name.to_vec(), rec)
            })
            .collect())
    }

    /// The slices of one chunk of a file, oldest first.
    pub fn chunk_slices(
        &self,
        layer: LayerId,
        ino: Ino,
        chunk: u64,
    ) -> Result<Vec<SliceView>, StoreError> {
        Ok(self.chunk_view(layer, ino, chunk)?.slices)
    }

    /// The slices of one chunk of a file, oldest first, with the part
    /// digests of their blocks.
    pub fn chunk_view(
        &self,
        layer: LayerId,
        ino: Ino,
        chunk: u64,
    ) -> Result<ChunkView, StoreError> {
        let table = self.layer_records(layer)?;
        let Some(bytes) = table.chunk(ino, chunk)? else {
            return Ok(ChunkView::default());
        };
        let list: ChunkSlices = decode("slices", bytes)?;
        let mut view = ChunkView::default();
        for s in list.slices {
            let block = slice_block("slices", &s.block_id)?;
            if let Some(size) = PartSize::new(s.part_size) {
                view.know_parts(block, size, s.first_part, s.part_digests);
            }
            view.slices.push(SliceView {
                offset_in_chunk: s.offset_in_chunk,
                length: s.length,
                backing: Backing::Block {
                    id: block,
                    offset_in_block: s.offset_in_block,
                },
            });
        }
        Ok(view)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Rebuilds the index a layer was loaded from, from sled alone (used to
    /// check that loading loses nothing).
    pub fn export_index(&self, layer: &Layer) -> Result<LayerIndex, StoreError> {
        use slayerfs_proto::index::{Dentry, Slice};

        let id = layer.id;
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        let mut position: HashMap<BlockId, u32> = HashMap::new();
        let mut parts: Vec<BTreeMap<u32, Vec<u8>>> = Vec::new();
        let mut part_size = 0;
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
            let chunk_keys: Vec<u64> = self
                .layer_records(id)?
                .chunks(ino)?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            for chunk in chunk_keys {
                let view = self.chunk_view(id, ino, chunk)?;
                for s in &view.slices {
                    let Backing::Block {
                        id: block_id,
                        offset_in_block,
                    } = s.backing
                    else {
                        continue;
                    };
                    let block = *position.entry(block_id).or_insert_with(|| {
                        blocks.push(block_id.as_bytes().to_vec());
                        parts.push(BTreeMap::new());
                        (blocks.len() - 1) as u32
                    });
                    let within = offset_in_block..offset_in_block + s.length;
                    if let Some(p) = view.parts(&block_id, within) {
                        part_size = p.size().get();
                        for (i, d) in p.bytes().chunks(32).enumerate() {
                            parts[block as usize].insert(p.first() + i as u32, d.to_vec());
                        }
                    }
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
            // The prefetch list is not in a layer's records (yet): a node
            // reads it from the index it pulls.
            prefetch: Vec::new(),
            part_size,
            part_digests: match part_size {
                0 => Vec::new(),
                _ => parts
                    .into_iter()
                    .map(|p| p.into_values().flatten().collect())
                    .collect(),
            },
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

/// A slice as a layer's record file keeps it: its block's id, and the
/// digests of the block's parts it overlaps (so a read of it can fetch
/// only those).
fn stored_slice(index: &ValidIndex, s: &slayerfs_proto::index::Slice) -> StoredSlice {
    let within = s.offset_in_block..s.offset_in_block + s.length;
    let parts = index.parts_of(s.block).and_then(|p| p.sub(within));
    StoredSlice {
        offset_in_chunk: s.offset_in_chunk,
        length: s.length,
        block_id: index.blocks[s.block as usize].clone(),
        offset_in_block: s.offset_in_block,
        part_size: parts.map_or(0, |p| p.size().get()),
        first_part: parts.map_or(0, |p| p.first()),
        part_digests: parts.map(|p| p.bytes().to_vec()).unwrap_or_default(),
    }
}

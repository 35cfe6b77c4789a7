//! The overlay merge of a layer chain, materialized once per chain in a
//! record file ([`super::table`]) so that lookup and getattr cost one or
//! two point reads however many layers the chain has.
//!
//! OCI layer semantics, top layer first: a name in an upper layer hides the
//! same name below; a whiteout hides it in every lower layer; a directory
//! merges with directories of the same name below it until a layer where the
//! directory is opaque, whited out, or not a directory. Hardlinks of one
//! layer stay one merged inode.
//!
//! The chain's record is in sled (tree `chains`: chain key →
//! `ChainRecord`); its merged inodes (`MergedInode`) and names are in the
//! record file `view-ID`.

use std::collections::hash_map::Entry::{Occupied, Vacant};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use slayerfs_proto::index::{Inode, InodeKind};
use slayerfs_proto::store::{ChainRecord, MergedInode, MergedSource};
use slayerfs_proto::Message;

use super::layers::{Layer, LayerDb, LayerId};
use super::table::{Entry, Table, TableWriter};
use super::{corrupt, decode, legacy, StoreError};
use crate::geometry::Ino;

/// A built merged view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainId(pub u64);

/// One layer's copy of a merged inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub layer: LayerId,
    pub ino: Ino,
}

/// The merged namespace of a chain of layers.
#[derive(Clone)]
pub struct MergedView {
    db: Arc<LayerDb>,
    chain: ChainId,
    inode_count: u64,
    table: Arc<Table>,
    /// Built by the `open` that made this value (not found ready).
    built_now: bool,
}

/// The key of a chain: the layers' index digests, bottom first, hashed.
pub fn chain_key(layers: &[Layer]) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.record.index_digest.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The record file name of a merged view.
fn view_table(chain: ChainId) -> String {
    format!("view-{}", chain.0)
}

/// A name being decided while merging one directory.
enum Pending {
    /// Whited out (or hidden under an upper non-directory).
    Hidden,
    /// Decided: `sources` top first; `open` while lower directories may
    /// still merge into it.
    Entry {
        sources: Vec<Source>,
        is_dir: bool,
        open: bool,
    },
}

impl MergedView {
    fn with(db: &Arc<LayerDb>, rec: &ChainRecord) -> Result<Self, StoreError> {
        let chain = ChainId(rec.id);
        let name = view_table(chain);
        // Built by an earlier build, in sled: moved, same inodes.
        db.move_from_sled(&name, &legacy::VIEW, chain.0, rec.inode_count)?;
        Ok(MergedView {
            db: db.clone(),
            chain,
            inode_count: rec.inode_count,
            table: db.table(&name)?,
            built_now: false,
        })
    }

    /// The merged view of `layers` (bottom first), built on first use.
    pub fn open(db: &Arc<LayerDb>, layers: &[Layer]) -> Result<Self, StoreError> {
        let key = chain_key(layers);
        let chains = db.tree("chains")?;
        if let Some(bytes) = chains.get(&key)? {
            let rec: ChainRecord = decode("chains", &bytes)?;
            if rec.ready {
                return Self::with(db, &rec);
            }
            // A build a crash interrupted: its partial records go.
            wipe_chain(db, ChainId(rec.id))?;
        }
        let chain = ChainId(db.generate_id()? + 1);
        let mut rec = ChainRecord {
            id: chain.0,
            layers: layers.iter().map(|l| l.id.0).collect(),
            inode_count: 0,
            ready: false,
        };
        chains.insert(&key, rec.encode_to_vec())?;
        rec.inode_count = Self::build(db, chain, layers)?;
        rec.ready = true;
        db.flush()?;
        chains.insert(&key, rec.encode_to_vec())?;
        db.flush()?;
        let mut view = Self::with(db, &rec)?;
        view.built_now = true;
        Ok(view)
    }

    /// Whether the `open` that made this view built it (large transient
    /// work) rather than finding it ready.
    pub fn built_now(&self) -> bool {
        self.built_now
    }

    fn is_opaque_dir(db: &LayerDb, s: Source) -> Result<(bool, bool), StoreError> {
        let (inode, _) = db
            .inode(s.layer, s.ino)?
            .ok_or_else(|| corrupt("inodes", format!("{} has no {}", s.layer, s.ino)))?;
        Ok((inode.kind == InodeKind::Directory as i32, inode.opaque))
    }

    fn build(db: &LayerDb, chain: ChainId, layers: &[Layer]) -> Result<u64, StoreError> {
        // Until `ready` is set, a crash leaves a partial view that the next
        // open wipes.
        let mut out = TableWriter::create(&db.table_path(&view_table(chain)), 0)?;
        // Root: every layer's root, top first, down to an opaque one.
        let mut root = Vec::new();
        for l in layers.iter().rev() {
            let s = Source {
                layer: l.id,
                ino: Ino::ROOT,
            };
            root.push(s);
            if Self::is_opaque_dir(db, s)?.1 {
                break;
            }
        }
        let mut next = 2u64;
        let mut links: HashMap<Source, u64> = HashMap::new();
        let mut stack = vec![(1u64, root)];
        while let Some((mino, sources)) = stack.pop() {
            let mut names: BTreeMap<Vec<u8>, Pending> = BTreeMap::new();
            for dir in &sources {
                for (name, d) in db.children(dir.layer, dir.ino)? {
                    let child = Source {
                        layer: dir.layer,
                        ino: Ino(d.ino),
                    };
                    match names.get_mut(&name) {
                        None if d.whiteout => {
                            names.insert(name, Pending::Hidden);
                        }
                        None => {
                            let (is_dir, opaque) = Self::is_opaque_dir(db, child)?;
                            names.insert(
                                name,
                                Pending::Entry {
                                    sources: vec![child],
                                    is_dir,
                                    open: is_dir && !opaque,
                                },
                            );
                        }
                        Some(Pending::Entry {
                            sources,
                            is_dir: true,
                            open: open @ true,
                        }) => {
                            if d.whiteout {
                                *open = false;
                            } else {
                                let (is_dir, opaque) = Self::is_opaque_dir(db, child)?;
                                if is_dir {
                                    sources.push(child);
                                    *open = !opaque;
                                } else {
                                    *open = false;
                                }
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            let mut subdirs = 0u32;
            let mut entries = Vec::new();
            for (name, p) in names {
                let Pending::Entry {
                    sources: found,
                    is_dir,
                    ..
                } = p
                else {
                    continue;
                };
                let top = found[0];
                // A file with several names gets its record at the first.
                let (child_ino, first_name) = if is_dir {
                    subdirs += 1;
                    let n = next;
                    next += 1;
                    stack.push((n, found));
                    (n, true)
                } else {
                    match links.entry(top) {
                        Occupied(e) => (*e.get(), false),
                        Vacant(e) => {
                            let n = next;
                            next += 1;
                            (*e.insert(n), true)
                        }
                    }
                };
                entries.push((name, child_ino));
                if !is_dir && first_name {
                    let rec = MergedInode {
                        sources: vec![MergedSource {
                            layer: top.layer.0,
                            ino: top.ino.0,
                        }],
                        nlink: 0,
                        attr_source: 0,
                    };
                    out.put_attr(Ino(child_ino), &rec.encode_to_vec())?;
                }
            }
            if !entries.is_empty() {
                let entries: Vec<Entry<'_>> = entries
                    .iter()
                    .map(|(name, ino)| Entry {
                        name,
                        ino: *ino,
                        whiteout: false,
                    })
                    .collect();
                out.put_entries(Ino(mino), &entries)?;
            }
            // Decided here, once, so that attrs() reads one or two inodes
            // however many layers imply the directory.
            let mut attr_source = 0;
            for (i, s) in sources.iter().enumerate() {
                let (inode, _) = db
                    .inode(s.layer, s.ino)?
                    .ok_or_else(|| corrupt("inodes", format!("{} has no {}", s.layer, s.ino)))?;
                if !inode.implicit {
                    attr_source = i as u32;
                    break;
                }
            }
            let rec = MergedInode {
                sources: sources
                    .iter()
                    .map(|s| MergedSource {
                        layer: s.layer.0,
                        ino: s.ino.0,
                    })
                    .collect(),
                nlink: 2 + subdirs,
                attr_source,
            };
            out.put_attr(Ino(mino), &rec.encode_to_vec())?;
        }
        out.finish()?;
        Ok(next - 1)
    }

    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// Merged inodes are numbered `1..=inode_count()`; 1 is the root.
    pub fn inode_count(&self) -> u64 {
        self.inode_count
    }

    /// The layer store the view reads from.
    pub fn db(&self) -> &LayerDb {
        &self.db
    }

    /// The merged inode `name` in directory `dir`, if visible.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>, StoreError> {
        Ok(self.table.lookup(dir, name)?.map(|e| Ino(e.ino)))
    }

    /// The layers holding a merged inode, topmost first.
    pub fn sources(&self, ino: Ino) -> Result<Vec<Source>, StoreError> {
        Ok(self
            .record(ino)?
            .sources
            .into_iter()
            .map(|s| Source {
                layer: LayerId(s.layer),
                ino: Ino(s.ino),
            })
            .collect())
    }

    fn record(&self, ino: Ino) -> Result<MergedInode, StoreError> {
        let bytes = self.table.attr(ino)?.ok_or_else(|| {
            corrupt(
                "merged_inodes",
                format!("chain {} has no {ino}", self.chain.0),
            )
        })?;
        decode("merged_inodes", bytes)
    }

    /// Attributes as the merged view shows them: the topmost copy's, as the
    /// kernel's overlayfs does. A directory the top layer only implied
    /// shows the first copy below that a layer described — its mode, owner
    /// and xattrs, as containerd copies them onto a parent it creates (with
    /// 0755 and root's when there is none), and its mtime, which unpacking
    /// would set to the time of unpacking, so that it is stable. Also the
    /// link count.
    pub fn attrs(&self, ino: Ino) -> Result<(Inode, u32), StoreError> {
        let rec = self.record(ino)?;
        let inode_of = |s: &MergedSource| {
            self.db
                .inode(LayerId(s.layer), Ino(s.ino))?
                .ok_or_else(|| corrupt("inodes", format!("layer {} has no ino {}", s.layer, s.ino)))
        };
        let top = rec
            .sources
            .first()
            .ok_or_else(|| corrupt("merged_inodes", format!("{ino} has no source")))?;
        let (mut inode, nlink) = inode_of(top)?;
        let nlink = if inode.kind == InodeKind::Directory as i32 {
            rec.nlink
        } else {
            nlink
        };
        if inode.implicit && rec.attr_source > 0 {
            let from = rec.sources.get(rec.attr_source as usize).ok_or_else(|| {
                corrupt(
                    "merged_inodes",
                    format!("{ino}: attribute source out of range"),
                )
            })?;
            let (described, _) = inode_of(from)?;
            inode.mode = described.mode;
            inode.uid = described.uid;
            inode.gid = described.gid;
            inode.xattrs = described.xattrs;
            inode.mtime_sec = described.mtime_sec;
            inode.mtime_nsec = described.mtime_nsec;
        }
        Ok((inode, nlink))
    }

    /// The entries of a merged directory, in name order.
    pub fn children(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Ino)>, StoreError> {
        Ok(self
            .table
            .entries(dir)?
            .into_iter()
            .map(|e| (e.name.to_vec(), Ino(e.ino)))
            .collect())
    }
}

/// Removes the merged records of a chain id (not its `chains` entry).
fn wipe_chain(db: &LayerDb, chain: ChainId) -> Result<(), StoreError> {
    db.remove_table(&view_table(chain))?;
    db.wipe_from_sled(&legacy::VIEW, chain.0)
}

/// A built (or half-built) merged view, as listed by [`chains`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// The [`chain_key`] it was built for.
    pub key: String,
    /// Its layers, bottom first.
    pub layers: Vec<LayerId>,
}

/// Every merged view in the database.
pub fn chains(db: &LayerDb) -> Result<Vec<ChainInfo>, StoreError> {
    let mut out = Vec::new();
    for item in db.tree("chains")?.iter() {
        let (k, v) = item?;
        let rec: ChainRecord = decode("chains", &v)?;
        out.push(ChainInfo {
            key: String::from_utf8_lossy(&k).into_owned(),
            layers: rec.layers.into_iter().map(LayerId).collect(),
        });
    }
    Ok(out)
}

/// Removes the merged view of `key` (its layers stay). No view of it may be
/// in use. False if there was none.
pub fn remove_chain(db: &LayerDb, key: &str) -> Result<bool, StoreError> {
    let chains = db.tree("chains")?;
    let Some(bytes) = chains.get(key)? else {
        return Ok(false);
    };
    let mut rec: ChainRecord = decode("chains", &bytes)?;
    // Not ready first, so a crash part way leaves a view that is rebuilt
    // (and its leftovers wiped) on next use, never a ready one with holes.
    rec.ready = false;
    chains.insert(key, rec.encode_to_vec())?;
    db.flush()?;
    wipe_chain(db, ChainId(rec.id))?;
    chains.remove(key)?;
    db.flush()?;
    Ok(true)
}

//! Layer and merged-view records as earlier builds kept them, in sled trees
//! (`inodes`, `dentries`, `slices`; `merged_inodes`, `merged_dentries`,
//! each keyed by id ‖ ino ‖ rest): copied once into a record file
//! ([`super::table`]) with the same inode numbers — a mount taken over
//! across the upgrade keeps its inodes — and then removed.

use std::path::Path;

use slayerfs_proto::store::DentryRecord;

use super::table::{Entry, TableWriter};
use super::{be_u64, decode, key2, remove_prefix, StoreError};
use crate::geometry::Ino;

/// The trees of one kind of record: attributes, names, chunks.
pub(crate) struct Trees {
    attrs: &'static str,
    names: &'static str,
    chunks: Option<&'static str>,
}

/// A layer's trees.
pub(crate) const LAYER: Trees = Trees {
    attrs: "inodes",
    names: "dentries",
    chunks: Some("slices"),
};

/// A merged view's trees.
pub(crate) const VIEW: Trees = Trees {
    attrs: "merged_inodes",
    names: "merged_dentries",
    chunks: None,
};

fn copy(
    db: &sled::Db,
    trees: &Trees,
    id: u64,
    count: u64,
    path: &Path,
) -> Result<bool, StoreError> {
    let attrs = db.open_tree(trees.attrs)?;
    if attrs.get(key2(id, 1))?.is_none() {
        return Ok(false);
    }
    let names = db.open_tree(trees.names)?;
    let chunks = trees.chunks.map(|t| db.open_tree(t)).transpose()?;
    let mut w = TableWriter::create(path, count)?;
    for n in 1..=count {
        let ino = Ino(n);
        let prefix = key2(id, n);
        let attr = attrs
            .get(prefix)?
            .ok_or_else(|| super::corrupt(trees.attrs, format!("{id}: {ino} has no record")))?;
        w.put_attr(ino, &attr)?;
        let mut owned = Vec::new();
        for item in names.scan_prefix(prefix) {
            let (k, v) = item?;
            let (child, whiteout) = match trees.chunks {
                Some(_) => {
                    let d: DentryRecord = decode(trees.names, &v)?;
                    (d.ino, d.whiteout)
                }
                None => (be_u64(trees.names, &v)?, false),
            };
            owned.push((k[16..].to_vec(), child, whiteout));
        }
        if !owned.is_empty() {
            let entries: Vec<Entry<'_>> = owned
                .iter()
                .map(|(name, ino, whiteout)| Entry {
                    name,
                    ino: *ino,
                    whiteout: *whiteout,
                })
                .collect();
            w.put_entries(ino, &entries)?;
        }
        if let Some(chunks) = &chunks {
            let mut list = Vec::new();
            for item in chunks.scan_prefix(prefix) {
                let (k, v) = item?;
                list.push((be_u64("slices", &k[16..])?, v.to_vec()));
            }
            if !list.is_empty() {
                w.put_chunks(ino, &list)?;
            }
        }
    }
    w.finish()?;
    Ok(true)
}

/// Moves `id`'s records of `trees` into a record file at `path`, then
/// out of sled; an error if sled has none either.
pub(crate) fn move_to_file(
    db: &sled::Db,
    trees: &Trees,
    id: u64,
    count: u64,
    path: &Path,
) -> Result<(), StoreError> {
    if !copy(db, trees, id, count, path)? {
        return Err(super::corrupt(
            trees.attrs,
            format!("{id} has neither a record file nor records"),
        ));
    }
    wipe(db, trees, id)
}

/// Removes whatever sled records of `trees` `id` has.
pub(crate) fn wipe(db: &sled::Db, trees: &Trees, id: u64) -> Result<(), StoreError> {
    for t in [Some(trees.attrs), Some(trees.names), trees.chunks]
        .into_iter()
        .flatten()
    {
        remove_prefix(&db.open_tree(t)?, id.to_be_bytes())?;
    }
    Ok(())
}

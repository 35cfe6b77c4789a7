//! The blocks an open file needs, kept in the disk cache while it is open
//! (evicting them would make its next read wait for the store again).

use std::collections::BTreeSet;

use slayerfs_chunkstore::BlockId;
use slayerfs_proto::index::InodeKind;

use super::Rootfs;
use crate::geometry::{Ino, CHUNK_SIZE};
use crate::slice::{Backing, SliceView};

impl Rootfs {
    /// Every block a regular file's slices point at (none for other kinds
    /// or on any error: pinning is an optimisation).
    pub(super) fn file_blocks(&self, ino: Ino) -> Vec<BlockId> {
        let mut ids = BTreeSet::new();
        let mut add = |slices: Vec<SliceView>| {
            for s in slices {
                if let Backing::Block { id, .. } = s.backing {
                    ids.insert(id);
                }
            }
        };
        if let Some(up) = &self.upper {
            match up.inode(ino) {
                Ok(Some(rec)) => {
                    let Some(inode) = rec.inode.filter(|i| i.kind == InodeKind::Regular as i32)
                    else {
                        return Vec::new();
                    };
                    for chunk in 0..inode.size.div_ceil(CHUNK_SIZE) {
                        if let Ok(slices) = up.chunk_slices(ino, chunk) {
                            add(slices);
                        }
                    }
                    return ids.into_iter().collect();
                }
                Ok(None) => {}
                Err(_) => return Vec::new(),
            }
        }
        let Ok(sources) = self.lower.sources(ino) else {
            return Vec::new();
        };
        let Some(src) = sources.first() else {
            return Vec::new();
        };
        let db = self.lower.db();
        let Ok(Some((inode, _))) = db.inode(src.layer, src.ino) else {
            return Vec::new();
        };
        if inode.kind != InodeKind::Regular as i32 {
            return Vec::new();
        }
        for chunk in 0..inode.size.div_ceil(CHUNK_SIZE) {
            if let Ok(slices) = db.chunk_slices(src.layer, src.ino, chunk) {
                add(slices);
            }
        }
        ids.into_iter().collect()
    }
}

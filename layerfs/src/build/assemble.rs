//! Assembling a layer index from a built tree: reachable inodes renumbered
//! in tree order, block sequence numbers resolved to ids.

use std::collections::HashMap;

use slayerfs_chunkstore::{BlockId, BlockSeq, PartSize, WriteReport};
use slayerfs_proto::index::{Dentry, Inode, InodeKind, LayerIndex, Slice, Xattr, VERSION};

use super::import::ImportedLayer;
use super::tree::{Child, NodeKind};
use crate::geometry::{Ino, BLOCK_SIZE, CHUNK_SIZE};
use crate::index::IndexError;

/// Turns an imported tree into an index: reachable inodes renumbered in tree
/// order (root = 1), block sequence numbers resolved to ids (`blocks.ids[seq]`)
/// and listed once each, with their part digests (cut at `part_size`).
pub fn build_index(
    imported: &ImportedLayer,
    blocks: &WriteReport,
    part_size: PartSize,
    source_digest: &str,
) -> Result<LayerIndex, IndexError> {
    let ids = &blocks.ids;
    let tree = &imported.tree;
    let order = tree.walk_order();
    let number: HashMap<Ino, u64> = order
        .iter()
        .enumerate()
        .map(|(i, ino)| (*ino, i as u64 + 1))
        .collect();
    let mut table: Vec<Vec<u8>> = Vec::new();
    let mut part_digests: Vec<Vec<u8>> = Vec::new();
    let mut position: HashMap<BlockId, u32> = HashMap::new();
    let mut block_of = |seq: BlockSeq| -> Result<u32, IndexError> {
        let id = *ids
            .get(seq.0 as usize)
            .ok_or(IndexError::MissingBlock(seq.0))?;
        Ok(*position.entry(id).or_insert_with(|| {
            table.push(id.as_bytes().to_vec());
            let parts = blocks.parts.get(seq.0 as usize);
            part_digests.push(parts.cloned().unwrap_or_default());
            (table.len() - 1) as u32
        }))
    };
    let mut inodes = Vec::with_capacity(order.len());
    for ino in &order {
        let node = tree.node(*ino);
        let mut out = Inode {
            kind: InodeKind::Directory as i32,
            mode: node.attrs.mode,
            uid: node.attrs.uid,
            gid: node.attrs.gid,
            mtime_sec: node.attrs.mtime_sec,
            mtime_nsec: node.attrs.mtime_nsec,
            xattrs: node
                .attrs
                .xattrs
                .iter()
                .map(|(name, value)| Xattr {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            opaque: node.opaque,
            implicit: node.implicit,
            ..Default::default()
        };
        let kind = match &node.kind {
            NodeKind::Directory => InodeKind::Directory,
            NodeKind::Regular => InodeKind::Regular,
            NodeKind::Symlink(target) => {
                out.symlink_target = target.clone();
                InodeKind::Symlink
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                out.rdev_major = *major;
                out.rdev_minor = *minor;
                if matches!(node.kind, NodeKind::CharDevice { .. }) {
                    InodeKind::CharDevice
                } else {
                    InodeKind::BlockDevice
                }
            }
            NodeKind::Fifo => InodeKind::Fifo,
        };
        out.kind = kind as i32;
        if kind == InodeKind::Regular {
            out.size = node.size;
            for s in &node.slices {
                out.slices.push(Slice {
                    chunk_index: s.chunk_index,
                    offset_in_chunk: s.offset_in_chunk,
                    length: s.length,
                    block: block_of(s.block)?,
                    offset_in_block: s.offset_in_block,
                });
            }
        }
        for (name, child) in &node.children {
            out.children.push(match child {
                Child::Entry(c) => Dentry {
                    name: name.clone(),
                    ino: number[c],
                    whiteout: false,
                },
                Child::Whiteout => Dentry {
                    name: name.clone(),
                    ino: 0,
                    whiteout: true,
                },
            });
        }
        inodes.push(out);
    }
    // An index without blocks says nothing of parts, so that it encodes
    // (and is named) as before parts existed: the daemon's empty base
    // layer is part of every chain key.
    let part_size = if table.is_empty() { 0 } else { part_size.get() };
    // A file listed but removed or replaced later in the layer is no longer
    // in the tree; hardlinked names are one file.
    let mut listed = std::collections::HashSet::new();
    let prefetch = imported
        .read_first
        .iter()
        .filter(|ino| matches!(tree.node(**ino).kind, NodeKind::Regular))
        .filter_map(|ino| number.get(ino).copied())
        .filter(|n| listed.insert(*n))
        .collect();
    Ok(LayerIndex {
        version: VERSION,
        chunk_size: CHUNK_SIZE,
        block_size: BLOCK_SIZE as u64,
        source_digest: source_digest.to_string(),
        blocks: table,
        inodes,
        part_size,
        part_digests,
        prefetch,
    })
}

//! A trace's paths turned back into what their ranges need from the store:
//! whole blocks where a trace reads much of one, else only the parts that
//! hold the ranges read. Paths that are not there, are not regular files or
//! ranges past a file's end are skipped: a stale trace costs what it
//! fetches, nothing else.

use std::collections::HashMap;
use std::ops::Range;

use slayerfs_chunkstore::{BlockId, PartDigests, PartSize};
use slayerfs_proto::index::InodeKind;

use super::format::Trace;
use super::resolve::walk;
use crate::geometry::{BLOCK_SIZE, CHUNK_SIZE};
use crate::slice::{resolve, Backing, Origin};
use crate::store::merged::MergedView;
use crate::store::StoreError;

/// What a trace asks to fetch on a view.
#[derive(Debug, Default)]
pub struct Planned {
    /// Blocks to fetch whole, in the order the trace reads them, each once.
    pub blocks: Vec<BlockId>,
    /// Ranges of other blocks to fetch in parts, in the trace's order.
    pub parts: Vec<PartFetch>,
    /// Files of the trace found as regular files.
    pub files: usize,
    /// Files not found (or not regular files).
    pub missing: usize,
}

/// Bytes `range` of block `id`, with the digests of the parts that hold
/// them.
#[derive(Debug, Clone)]
pub struct PartFetch {
    pub id: BlockId,
    pub range: Range<u32>,
    size: PartSize,
    first: u32,
    digests: Vec<u8>,
}

impl PartFetch {
    pub fn digests(&self) -> Option<PartDigests<'_>> {
        PartDigests::new(self.size, self.first, &self.digests)
    }
}

/// What the trace reads of one block.
#[derive(Default)]
struct BlockReads {
    ranges: Vec<Range<u32>>,
    /// The digests of the block's parts, while every range read has them.
    parts: Option<(PartSize, u32, Vec<u8>)>,
    whole: bool,
}

/// The bytes of blocks `trace` reads on `view`, in the trace's order: a
/// block whole when the trace reads half of it or more, reads a file in it
/// only in part, or its parts have no digests; else the parts its ranges
/// need; no more than `budget` bytes in all.
pub fn blocks_to_fetch(
    view: &MergedView,
    trace: &Trace,
    budget: u64,
) -> Result<Planned, StoreError> {
    let mut out = Planned::default();
    let mut order = Vec::new();
    let mut reads: HashMap<BlockId, BlockReads> = HashMap::new();
    let db = view.db();
    for f in &trace.files {
        let Some(ino) = walk(view, &f.path)? else {
            out.missing += 1;
            continue;
        };
        let sources = view.sources(ino)?;
        let Some(src) = sources.first() else {
            out.missing += 1;
            continue;
        };
        let Some((inode, _)) = db.inode(src.layer, src.ino)? else {
            out.missing += 1;
            continue;
        };
        if inode.kind != InodeKind::Regular as i32 {
            out.missing += 1;
            continue;
        }
        out.files += 1;
        for r in &f.ranges {
            let (start, end) = (r.start.min(inode.size), r.end.min(inode.size));
            // A file read only in part is read ahead past the range (a
            // sequential reader's window covers the rest of the block):
            // its blocks come whole.
            let read_on = end < inode.size;
            let mut pos = start;
            while pos < end {
                let chunk = pos / CHUNK_SIZE;
                let chunk_start = chunk * CHUNK_SIZE;
                let to = end.min(chunk_start + CHUNK_SIZE);
                let chunk_view = db.chunk_view(src.layer, src.ino, chunk)?;
                let range = (pos - chunk_start) as u32..(to - chunk_start) as u32;
                for seg in resolve(&chunk_view.slices, range) {
                    let Origin::Slice(Backing::Block {
                        id,
                        offset_in_block,
                    }) = seg.origin
                    else {
                        continue;
                    };
                    let in_block = offset_in_block..offset_in_block.saturating_add(seg.length);
                    let b = reads.entry(id).or_insert_with(|| {
                        order.push(id);
                        BlockReads::default()
                    });
                    match (chunk_view.parts(&id, in_block.clone()), &b.parts) {
                        (Some(p), None) if b.ranges.is_empty() => {
                            b.parts = Some((p.size(), p.first(), p.bytes().to_vec()));
                        }
                        (_, Some((size, first, d)))
                            if PartDigests::new(*size, *first, d)
                                .and_then(|p| p.covering(in_block.clone()))
                                .is_some() => {}
                        _ => b.whole = true,
                    }
                    b.whole |= read_on;
                    b.ranges.push(in_block);
                }
                pos = to;
            }
        }
    }
    let mut spent = 0u64;
    for id in order {
        let Some(b) = reads.remove(&id) else { continue };
        let merged = coalesce(b.ranges);
        let read: u64 = merged.iter().map(|r| u64::from(r.end - r.start)).sum();
        match b.parts {
            Some((size, first, digests)) if !b.whole && read * 2 < BLOCK_SIZE as u64 => {
                let p = u64::from(size.get());
                let cost: u64 = merged
                    .iter()
                    .map(|r| (u64::from(r.end).div_ceil(p) - u64::from(r.start) / p) * p)
                    .sum();
                if spent + cost > budget {
                    break;
                }
                spent += cost;
                out.parts.extend(merged.into_iter().map(|range| PartFetch {
                    id,
                    range,
                    size,
                    first,
                    digests: digests.clone(),
                }));
            }
            _ => {
                if spent + BLOCK_SIZE as u64 > budget {
                    break;
                }
                spent += BLOCK_SIZE as u64;
                out.blocks.push(id);
            }
        }
    }
    Ok(out)
}

/// `ranges` sorted and joined where they touch or overlap.
fn coalesce(mut ranges: Vec<Range<u32>>) -> Vec<Range<u32>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u32>> = Vec::new();
    for r in ranges.into_iter().filter(|r| !r.is_empty()) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn ranges_join_where_they_touch() {
        assert_eq!(
            coalesce(vec![10..20, 0..5, 5..8, 15..30, 40..40]),
            vec![0..8, 10..30]
        );
    }
}

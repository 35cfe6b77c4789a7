//! Reading file bytes through slices: the newest slice covering a byte wins,
//! and bytes no slice covers are zeros (holes).

use std::io::Write;
use std::ops::Range;

use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockId, BlockStore, CacheOptions, FetchError};
use slayerfs_proto::index::{Inode, LayerIndex};

use crate::geometry::{BLOCK_SIZE, CHUNK_SIZE};

/// A slice of one chunk with its block id resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceView {
    pub offset_in_chunk: u32,
    pub length: u32,
    pub block: BlockId,
    pub offset_in_block: u32,
}

/// Where the bytes of a piece of a read come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Zeros,
    Block { id: BlockId, offset_in_block: u32 },
}

/// A run of bytes of a chunk, chunk-relative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset_in_chunk: u32,
    pub length: u32,
    pub source: Source,
}

/// Resolves `range` (chunk-relative) of a chunk whose slices are listed
/// oldest first into segments in offset order, covering the range exactly.
pub fn resolve(slices: &[SliceView], range: Range<u32>) -> Vec<Segment> {
    let mut uncovered = vec![range];
    let mut out = Vec::new();
    for s in slices.iter().rev() {
        if uncovered.is_empty() {
            break;
        }
        let (s_start, s_end) = (s.offset_in_chunk, s.offset_in_chunk + s.length);
        let mut rest = Vec::with_capacity(uncovered.len() + 1);
        for gap in uncovered {
            let (a, b) = (gap.start.max(s_start), gap.end.min(s_end));
            if a >= b {
                rest.push(gap);
                continue;
            }
            out.push(Segment {
                offset_in_chunk: a,
                length: b - a,
                source: Source::Block {
                    id: s.block,
                    offset_in_block: s.offset_in_block + (a - s_start),
                },
            });
            if gap.start < a {
                rest.push(gap.start..a);
            }
            if b < gap.end {
                rest.push(b..gap.end);
            }
        }
        uncovered = rest;
    }
    out.extend(uncovered.into_iter().map(|gap| Segment {
        offset_in_chunk: gap.start,
        length: gap.end - gap.start,
        source: Source::Zeros,
    }));
    out.sort_by_key(|s| s.offset_in_chunk);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Cached(#[from] Arc<FetchError>),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("block {0} is shorter than a slice says")]
    ShortBlock(BlockId),
    #[error("writing file data: {0}")]
    Sink(#[from] std::io::Error),
    #[error("slice refers to block {0} beyond the block table")]
    BadBlock(u32),
}

/// The slices of one chunk of an index inode, block ids resolved.
pub fn chunk_slices(
    index: &LayerIndex,
    inode: &Inode,
    chunk: u64,
) -> Result<Vec<SliceView>, ReadError> {
    inode
        .slices
        .iter()
        .filter(|s| s.chunk_index == chunk)
        .map(|s| {
            let id = index
                .blocks
                .get(s.block as usize)
                .and_then(|b| BlockId::from_slice(b))
                .ok_or(ReadError::BadBlock(s.block))?;
            Ok(SliceView {
                offset_in_chunk: s.offset_in_chunk,
                length: s.length,
                block: id,
                offset_in_block: s.offset_in_block,
            })
        })
        .collect()
}

/// Streams the whole content of a regular file of an index to `sink`,
/// a block at a time through [`read_range`] and a small block cache of its own.
pub async fn read_file<W: Write + Send>(
    index: &LayerIndex,
    inode: &Inode,
    store: &Arc<dyn BlockStore>,
    sink: &mut W,
) -> Result<(), ReadError> {
    let cache = BlockCache::new(
        store.clone(),
        &CacheOptions {
            memory_bytes: 4 * BLOCK_SIZE as u64,
            disk: None,
        },
    )
    .map_err(FetchError::from)?;
    let mut offset = 0;
    while offset < inode.size {
        let piece = read_range(
            inode.size,
            offset,
            BLOCK_SIZE as u32,
            |chunk| chunk_slices(index, inode, chunk),
            &cache,
        )
        .await?;
        sink.write_all(&piece)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

/// Reads up to `len` bytes at `offset` of a file of `size` bytes (fewer at
/// the end of the file): `slices_of(chunk)` gives a chunk's slices, oldest
/// first; blocks come through `cache`; uncovered bytes are zeros. This is
/// the read path's core, whatever keeps the slices (an index, sled, an upper
/// layer).
pub async fn read_range<F>(
    size: u64,
    offset: u64,
    len: u32,
    mut slices_of: F,
    cache: &BlockCache,
) -> Result<Vec<u8>, ReadError>
where
    F: FnMut(u64) -> Result<Vec<SliceView>, ReadError>,
{
    let end = size.min(offset.saturating_add(u64::from(len)));
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity((end - offset) as usize);
    let mut pos = offset;
    while pos < end {
        let chunk = pos / CHUNK_SIZE;
        let chunk_start = chunk * CHUNK_SIZE;
        let chunk_end = end.min(chunk_start + CHUNK_SIZE);
        let range = (pos - chunk_start) as u32..(chunk_end - chunk_start) as u32;
        let slices = slices_of(chunk)?;
        for seg in resolve(&slices, range) {
            match seg.source {
                Source::Zeros => out.resize(out.len() + seg.length as usize, 0),
                Source::Block {
                    id,
                    offset_in_block,
                } => {
                    let block = cache.get(&id).await?;
                    let start = offset_in_block as usize;
                    let bytes = block
                        .get(start..start + seg.length as usize)
                        .ok_or(ReadError::ShortBlock(id))?;
                    out.extend_from_slice(bytes);
                }
            }
        }
        pos = chunk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(off: u32, len: u32, tag: u8) -> SliceView {
        SliceView {
            offset_in_chunk: off,
            length: len,
            block: BlockId::from_bytes([tag; 32]),
            offset_in_block: 0,
        }
    }

    /// Resolves by brute force: the newest slice per byte.
    fn naive(slices: &[SliceView], range: Range<u32>) -> Vec<Option<(u8, u32)>> {
        range
            .map(|b| {
                slices
                    .iter()
                    .rev()
                    .find(|s| b >= s.offset_in_chunk && b < s.offset_in_chunk + s.length)
                    .map(|s| {
                        (
                            s.block.as_bytes()[0],
                            s.offset_in_block + b - s.offset_in_chunk,
                        )
                    })
            })
            .collect()
    }

    #[test]
    fn newest_slice_wins_and_gaps_are_zeros() {
        let slices = [
            sv(0, 100, 1),
            sv(50, 10, 2),
            sv(90, 30, 3),
            sv(55, 2, 4),
            sv(200, 5, 5),
        ];
        for range in [0..300, 10..60, 56..57, 100..200, 0..1, 199..206] {
            let segs = resolve(&slices, range.clone());
            let mut got = Vec::new();
            let mut pos = range.start;
            for s in &segs {
                assert_eq!(s.offset_in_chunk, pos, "segments are contiguous");
                for i in 0..s.length {
                    got.push(match s.source {
                        Source::Zeros => None,
                        Source::Block {
                            id,
                            offset_in_block,
                        } => Some((id.as_bytes()[0], offset_in_block + i)),
                    });
                }
                pos += s.length;
            }
            assert_eq!(pos, range.end);
            assert_eq!(got, naive(&slices, range));
        }
    }
}

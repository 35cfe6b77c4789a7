//! Reading file bytes through slices: the newest slice covering a byte wins,
//! and bytes no slice covers are zeros (holes).

use std::io::Write;
use std::ops::Range;

use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockId, BlockStore, CacheOptions, FetchError};
use slayerfs_proto::index::{Inode, LayerIndex};

use crate::geometry::{BLOCK_SIZE, CHUNK_SIZE};

/// Where the bytes of a slice live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// In a block of the store, from this offset of its plain bytes.
    Block { id: BlockId, offset_in_block: u32 },
    /// In the upper layer's local data file of the inode, at the same file
    /// offset (the data file is laid out like the file, sparse).
    Local,
}

/// A slice of one chunk with its backing resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceView {
    pub offset_in_chunk: u32,
    pub length: u32,
    pub backing: Backing,
}

impl SliceView {
    /// The part `[a, b)` (chunk-relative, inside this slice) of the slice.
    pub fn clip(&self, a: u32, b: u32) -> SliceView {
        let skip = a - self.offset_in_chunk;
        SliceView {
            offset_in_chunk: a,
            length: b - a,
            backing: match self.backing {
                Backing::Block {
                    id,
                    offset_in_block,
                } => Backing::Block {
                    id,
                    offset_in_block: offset_in_block + skip,
                },
                Backing::Local => Backing::Local,
            },
        }
    }

    fn end(&self) -> u32 {
        self.offset_in_chunk + self.length
    }

    /// Whether `next` continues this slice's bytes without a seam.
    fn continued_by(&self, next: &SliceView) -> bool {
        if self.end() != next.offset_in_chunk {
            return false;
        }
        match (self.backing, next.backing) {
            (Backing::Local, Backing::Local) => true,
            (
                Backing::Block {
                    id: a,
                    offset_in_block: oa,
                },
                Backing::Block {
                    id: b,
                    offset_in_block: ob,
                },
            ) => a == b && oa + self.length == ob,
            _ => false,
        }
    }
}

/// Where the bytes of a piece of a read come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Zeros,
    Slice(Backing),
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
                source: Source::Slice(s.clip(a, b).backing),
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

/// The canonical form of a chunk's slices: what [`resolve`] shows over the
/// whole chunk, without holes, adjacent pieces of one source joined; sorted
/// and non-overlapping. Keeps an upper file's slice list from growing with
/// every write to the same range.
pub fn normalize(slices: &[SliceView]) -> Vec<SliceView> {
    let mut out: Vec<SliceView> = Vec::new();
    for seg in resolve(slices, 0..CHUNK_SIZE as u32) {
        let Source::Slice(backing) = seg.source else {
            continue;
        };
        let s = SliceView {
            offset_in_chunk: seg.offset_in_chunk,
            length: seg.length,
            backing,
        };
        match out.last_mut() {
            Some(last) if last.continued_by(&s) => last.length += s.length,
            _ => out.push(s),
        }
    }
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
    #[error(transparent)]
    Upper(#[from] crate::upper::UpperError),
    #[error("block {0} is shorter than a slice says")]
    ShortBlock(BlockId),
    #[error("writing file data: {0}")]
    Sink(#[from] std::io::Error),
    #[error("slice refers to block {0} beyond the block table")]
    BadBlock(u32),
    #[error("reading the upper data file: {0}")]
    Local(std::io::Error),
    #[error("a slice refers to the upper data file, but the file has none")]
    NoLocalData,
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
                backing: Backing::Block {
                    id,
                    offset_in_block: s.offset_in_block,
                },
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
            local: None,
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
            None,
        )
        .await?;
        sink.write_all(&piece)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

/// Bytes read from a file: a range of one cached block when the read falls
/// inside one (no copy), or a buffer of their own.
#[derive(Debug, Clone)]
pub enum ReadBytes {
    Block(Arc<Vec<u8>>, Range<usize>),
    Owned(Vec<u8>),
}

impl ReadBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadBytes::Block(block, range) => &block[range.clone()],
            ReadBytes::Owned(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ReadBytes::Block(block, range) => block[range].to_vec(),
            ReadBytes::Owned(v) => v,
        }
    }
}

/// Reads up to `len` bytes at `offset` of a file of `size` bytes (fewer at
/// the end of the file): `slices_of(chunk)` gives a chunk's slices, oldest
/// first; blocks come through `cache`, local slices from the upper data file
/// `local`; uncovered bytes are zeros. This is the read path's core, whatever
/// keeps the slices (an index, sled, an upper layer).
pub async fn read_range<F>(
    size: u64,
    offset: u64,
    len: u32,
    slices_of: F,
    cache: &BlockCache,
    local: Option<&std::fs::File>,
) -> Result<Vec<u8>, ReadError>
where
    F: FnMut(u64) -> Result<Vec<SliceView>, ReadError>,
{
    Ok(
        read_range_shared(size, offset, len, slices_of, cache, local)
            .await?
            .into_vec(),
    )
}

/// [`read_range`] without a copy when the bytes lie in one block.
pub async fn read_range_shared<F>(
    size: u64,
    offset: u64,
    len: u32,
    mut slices_of: F,
    cache: &BlockCache,
    local: Option<&std::fs::File>,
) -> Result<ReadBytes, ReadError>
where
    F: FnMut(u64) -> Result<Vec<SliceView>, ReadError>,
{
    let end = size.min(offset.saturating_add(u64::from(len)));
    if offset >= end {
        return Ok(ReadBytes::Owned(Vec::new()));
    }
    let first_chunk = offset / CHUNK_SIZE;
    let chunk_start = first_chunk * CHUNK_SIZE;
    let first_slices = slices_of(first_chunk)?;
    if end <= chunk_start + CHUNK_SIZE {
        let range = (offset - chunk_start) as u32..(end - chunk_start) as u32;
        if let [Segment {
            source:
                Source::Slice(Backing::Block {
                    id,
                    offset_in_block,
                }),
            length,
            ..
        }] = resolve(&first_slices, range)[..]
        {
            let (block, range) = block_range(cache, id, offset_in_block, length).await?;
            return Ok(ReadBytes::Block(block, range));
        }
    }
    let mut out = Vec::with_capacity((end - offset) as usize);
    let mut pos = offset;
    let mut first = Some(first_slices);
    while pos < end {
        let chunk = pos / CHUNK_SIZE;
        let chunk_start = chunk * CHUNK_SIZE;
        let chunk_end = end.min(chunk_start + CHUNK_SIZE);
        let range = (pos - chunk_start) as u32..(chunk_end - chunk_start) as u32;
        let slices = match first.take() {
            Some(s) => s,
            None => slices_of(chunk)?,
        };
        for seg in resolve(&slices, range) {
            match seg.source {
                Source::Zeros => out.resize(out.len() + seg.length as usize, 0),
                Source::Slice(Backing::Local) => {
                    let file = local.ok_or(ReadError::NoLocalData)?;
                    let at = chunk_start + u64::from(seg.offset_in_chunk);
                    let start = out.len();
                    out.resize(start + seg.length as usize, 0);
                    read_local(file, at, &mut out[start..])?;
                }
                Source::Slice(Backing::Block {
                    id,
                    offset_in_block,
                }) => {
                    let (block, range) =
                        block_range(cache, id, offset_in_block, seg.length).await?;
                    out.extend_from_slice(&block[range]);
                }
            }
        }
        pos = chunk_end;
    }
    Ok(ReadBytes::Owned(out))
}

/// A block from the cache and the range of it a segment reads, checked
/// against the block's length.
async fn block_range(
    cache: &BlockCache,
    id: BlockId,
    offset_in_block: u32,
    length: u32,
) -> Result<(Arc<Vec<u8>>, Range<usize>), ReadError> {
    let block = cache.get(&id).await?;
    let start = offset_in_block as usize;
    let stop = start + length as usize;
    if stop > block.len() {
        return Err(ReadError::ShortBlock(id));
    }
    Ok((block, start..stop))
}

/// Fills `buf` from `file` at `at`; bytes past the end of the file (a data
/// file cut short by a crash before fsync) read as zeros.
fn read_local(file: &std::fs::File, at: u64, buf: &mut [u8]) -> Result<(), ReadError> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Local(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(off: u32, len: u32, tag: u8) -> SliceView {
        SliceView {
            offset_in_chunk: off,
            length: len,
            backing: Backing::Block {
                id: BlockId::from_bytes([tag; 32]),
                offset_in_block: 0,
            },
        }
    }

    fn tag_at(s: &SliceView, b: u32) -> (u8, u32) {
        match s.backing {
            Backing::Block {
                id,
                offset_in_block,
            } => (id.as_bytes()[0], offset_in_block + b - s.offset_in_chunk),
            Backing::Local => (0, b),
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
                    .map(|s| tag_at(s, b))
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
                        Source::Slice(backing) => Some(tag_at(
                            &SliceView {
                                offset_in_chunk: s.offset_in_chunk,
                                length: s.length,
                                backing,
                            },
                            s.offset_in_chunk + i,
                        )),
                    });
                }
                pos += s.length;
            }
            assert_eq!(pos, range.end);
            assert_eq!(got, naive(&slices, range));
        }
    }

    #[test]
    fn normalize_keeps_what_resolve_shows() {
        let local = |off, len| SliceView {
            offset_in_chunk: off,
            length: len,
            backing: Backing::Local,
        };
        let slices = [
            sv(0, 100, 1),
            local(50, 10),
            local(60, 5),
            sv(90, 30, 3),
            sv(200, 5, 5),
            local(10, 5),
        ];
        let norm = normalize(&slices);
        for w in norm.windows(2) {
            assert!(w[0].end() < w[1].offset_in_chunk || !w[0].continued_by(&w[1]));
            assert!(w[0].end() <= w[1].offset_in_chunk, "sorted, no overlap");
        }
        // The two adjacent local writes are one slice.
        assert!(norm.contains(&local(50, 15)));
        assert_eq!(naive(&norm, 0..300), naive(&slices, 0..300));
    }
}

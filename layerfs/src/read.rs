//! Reading file bytes through their slices ([`crate::slice`]): blocks
//! through the block cache, local slices from the upper data file, holes
//! as zeros.

use std::ops::Range;

use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockId, FetchError, Piece};
use slayerfs_proto::index::{Inode, LayerIndex};

use crate::geometry::CHUNK_SIZE;
use crate::slice::{resolve, Backing, ChunkView, Origin, Segment, SliceView};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Cached(#[from] Arc<FetchError>),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
pub fn index_chunk_slices(
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

/// How a read fetches blocks that are not at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Whole blocks: a sequential reader will want the rest of them.
    Whole,
    /// Only the parts of blocks the read needs, where the slices know
    /// their digests (else whole blocks).
    Parts,
}

impl Fetch {
    /// The part digests a fetch of block `id`'s bytes `range` goes by:
    /// what `view` knows; for a whole-block fetch only if those parts are
    /// in `cache` already (a trace's prefetch brings parts), else none.
    pub fn parts<'a>(
        self,
        view: &'a ChunkView,
        id: &BlockId,
        range: Range<u32>,
        cache: &BlockCache,
    ) -> Option<slayerfs_chunkstore::PartDigests<'a>> {
        let known = view.parts(id, range.clone());
        match self {
            Fetch::Parts => known,
            Fetch::Whole => known.filter(|p| cache.has_range(id, range, Some(*p))),
        }
    }
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
/// first (and the part digests of their blocks, if known); blocks come
/// through `cache`, whole or in parts as `how` says, local slices from the
/// upper data file `local`; uncovered bytes are zeros. This is the read
/// path's core, whatever keeps the slices (an index, a layer's records, an
/// upper layer); the bytes are shared with the cache when they lie in one
/// block or part.
pub async fn read_range_shared<F, C>(
    size: u64,
    offset: u64,
    len: u32,
    how: Fetch,
    mut slices_of: F,
    cache: &BlockCache,
    local: Option<&std::fs::File>,
) -> Result<ReadBytes, ReadError>
where
    F: FnMut(u64) -> Result<C, ReadError>,
    C: Into<ChunkView>,
{
    let mut slices_of = |c| slices_of(c).map(Into::into);
    let end = size.min(offset.saturating_add(u64::from(len)));
    if offset >= end {
        return Ok(ReadBytes::Owned(Vec::new()));
    }
    let first_chunk = offset / CHUNK_SIZE;
    let chunk_start = first_chunk * CHUNK_SIZE;
    let first_slices: ChunkView = slices_of(first_chunk)?;
    if end <= chunk_start + CHUNK_SIZE {
        let range = (offset - chunk_start) as u32..(end - chunk_start) as u32;
        if let [Segment {
            origin:
                Origin::Slice(Backing::Block {
                    id,
                    offset_in_block,
                }),
            length,
            ..
        }] = resolve(&first_slices.slices, range)[..]
        {
            let mut pieces =
                block_range(cache, how, &first_slices, id, offset_in_block, length).await?;
            if pieces.len() == 1 {
                let Piece { bytes, range } = pieces.remove(0);
                return Ok(ReadBytes::Block(bytes, range));
            }
            let mut out = Vec::with_capacity(length as usize);
            for p in &pieces {
                out.extend_from_slice(p.as_slice());
            }
            return Ok(ReadBytes::Owned(out));
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
        let view: ChunkView = match first.take() {
            Some(s) => s,
            None => slices_of(chunk)?,
        };
        for seg in resolve(&view.slices, range) {
            match seg.origin {
                Origin::Zeros => out.resize(out.len() + seg.length as usize, 0),
                Origin::Slice(Backing::UpperData) => {
                    let file = local.ok_or(ReadError::NoLocalData)?;
                    let at = chunk_start + u64::from(seg.offset_in_chunk);
                    let start = out.len();
                    out.resize(start + seg.length as usize, 0);
                    read_local(file, at, &mut out[start..])?;
                }
                Origin::Slice(Backing::Block {
                    id,
                    offset_in_block,
                }) => {
                    let pieces =
                        block_range(cache, how, &view, id, offset_in_block, seg.length).await?;
                    for p in &pieces {
                        out.extend_from_slice(p.as_slice());
                    }
                }
            }
        }
        pos = chunk_end;
    }
    Ok(ReadBytes::Owned(out))
}

/// The bytes of block `id` a segment reads, from the cache: the block
/// whole, or the parts of it that hold them.
async fn block_range(
    cache: &BlockCache,
    how: Fetch,
    view: &ChunkView,
    id: BlockId,
    offset_in_block: u32,
    length: u32,
) -> Result<Vec<Piece>, ReadError> {
    let range = offset_in_block..offset_in_block.saturating_add(length);
    let parts = how.parts(view, &id, range.clone(), cache);
    match cache.get_range(&id, range, parts).await {
        Ok(pieces) => Ok(pieces),
        Err(e) if matches!(*e, FetchError::Short { .. }) => Err(ReadError::ShortBlock(id)),
        Err(e) => Err(e.into()),
    }
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

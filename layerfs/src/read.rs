//! Reading file bytes through their slices ([`crate::slice`]): blocks
//! through the block cache, local slices from the upper data file, holes
//! as zeros.

use std::ops::Range;

use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockId, FetchError};
use slayerfs_proto::index::{Inode, LayerIndex};

use crate::geometry::CHUNK_SIZE;
use crate::slice::{resolve, Backing, Origin, Segment, SliceView};

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
/// keeps the slices (an index, sled, an upper layer); the bytes are shared
/// with the cache when they lie in one block.
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
            origin:
                Origin::Slice(Backing::Block {
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

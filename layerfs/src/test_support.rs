//! What only tests use: a whole file of an index read into a sink, and a
//! range read into a buffer of its own. Enabled by the `test-support`
//! feature, which production builds leave off.

use std::io::Write;
use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockStore, CacheOptions, FetchError};
use slayerfs_proto::index::{Inode, LayerIndex};

use crate::geometry::BLOCK_SIZE;
use crate::read::{chunk_slices, read_range_shared, ReadError};
use crate::slice::SliceView;

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

/// [`read_range_shared`] into a buffer of its own.
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

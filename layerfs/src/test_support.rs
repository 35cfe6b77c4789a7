//! What only tests use: a whole file of an index read into a sink, a range
//! read into a buffer of its own, a tar of plain files, and a layer
//! converted and loaded in one call. Enabled by the `test-support` feature,
//! which production builds leave off.

use std::io::Write;
use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockStore, CacheOptions, FetchError, WriterOptions};
use slayerfs_proto::index::{Inode, LayerIndex};

use crate::build::{convert_layer, ConvertedLayer, Expected};
use crate::geometry::BLOCK_SIZE;
use crate::read::{index_chunk_slices, read_range_shared, Fetch, ReadError};
use crate::slice::SliceView;
use crate::store::layers::{Layer, LayerDb};

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
            own_blocks: None,
            memory_bytes: 4 * BLOCK_SIZE as u64,
            disk: None,
            pinned_bytes: u64::MAX,
        },
    )
    .map_err(FetchError::from)?;
    let mut offset = 0;
    while offset < inode.size {
        let piece = read_range(
            inode.size,
            offset,
            BLOCK_SIZE as u32,
            |chunk| index_chunk_slices(index, inode, chunk),
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
        read_range_shared(size, offset, len, Fetch::Whole, slices_of, cache, local)
            .await?
            .into_vec(),
    )
}

/// A tar of regular files (mode 0644, root's, one fixed mtime).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("a tar in memory");
    }
    b.into_inner().expect("a tar in memory")
}

/// `blob` converted into `store` with nothing expected of its digests;
/// panics if it cannot be.
pub async fn convert_for_test(blob: Vec<u8>, store: &Arc<dyn BlockStore>) -> ConvertedLayer {
    let opts = WriterOptions {
        workers: 2,
        zstd_level: 1,
        part_size: slayerfs_chunkstore::PartSize::DEFAULT,
    };
    convert_layer(
        std::io::Cursor::new(blob),
        store.clone(),
        opts,
        "sha256:test",
        Expected::default(),
    )
    .await
    .expect("converting a test layer")
}

/// [`convert_for_test`], then loaded into `db`.
pub async fn convert_and_load(blob: Vec<u8>, store: &Arc<dyn BlockStore>, db: &LayerDb) -> Layer {
    let conv = convert_for_test(blob, store).await;
    db.load_index(&conv.digest, &conv.index)
        .expect("loading a test layer")
}

/// `len` bytes of deterministic noise (xorshift from `seed`): data that
/// does not compress, so blocks hold what a test expects.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

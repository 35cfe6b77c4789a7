//! SlayerFS blocks and where they are kept.
//!
//! Owns block ids (sha256 of the plain bytes), the block codec (zstd, with the
//! digest checked on every decode), the [`BlockStore`] trait with a local
//! directory and an S3 implementation, and [`BlockWriter`], which hashes,
//! compresses and uploads blocks in parallel, and [`BlockCache`], the memory
//! and disk caches the read path fetches through (one fetch per block however
//! many readers wait for it). It knows nothing of inodes,
//! files, layers or containerd: to this crate a block is an opaque run of at
//! most [`MAX_BLOCK_SIZE`] bytes.

mod cache;
mod codec;
mod error_text;
mod id;
pub mod parts;
pub mod seekable;
mod store;
mod writer;

pub use cache::{BlockCache, CacheOptions, CacheStats, Piece};
pub use codec::{decode_block, CodecError, Compressor, MAX_BLOCK_SIZE};
pub use error_text::{error_chain, panic_text};
pub use id::{BlockId, ChainDigest, IndexDigest, ParseDigestError, TraceDigest};
pub use parts::{PartDigests, PartSize};
pub use store::{
    fetch_index, fetch_trace, open_store, BlockStore, FetchError, LocalStore, ObjectKey,
    PutOutcome, RangeRead, S3Store, StoreError, MAX_TRACES_LISTED,
};
pub use writer::{BlockSeq, BlockWriter, WriteError, WriteReport, WriterOptions};
/// What only tests use: one block encoded, or fetched and checked, alone,
/// and a store in memory.
#[cfg(any(test, feature = "test-support"))]
pub use {codec::encode_block, store::fetch_block, store::MemoryStore};

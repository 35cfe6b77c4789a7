//! The [`BlockStore`] trait, its object keys and the verified fetch helpers.

mod local;
#[cfg(any(test, feature = "test-support"))]
mod memory;
mod s3;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use slayerfs_config::{Config, StoreLocation};

use crate::codec::{decode_block, CodecError};
use crate::id::{BlockId, ChainDigest, IndexDigest, TraceDigest};

pub use local::LocalStore;
#[cfg(any(test, feature = "test-support"))]
pub use memory::MemoryStore;
pub use s3::S3Store;

/// What a store keeps: blocks and layer index blobs, both content-addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// `blocks/<first 2 hex>/<hex>`: a zstd-compressed block.
    Block(BlockId),
    /// `indexes/<hex>`: a layer index blob.
    Index(IndexDigest),
    /// `traces/<chain hex>/<hex>`: what a start of the image with that
    /// chain id read first.
    Trace(ChainDigest, TraceDigest),
}

/// The most traces of one image a listing returns: more means nodes are
/// writing faster than they merge, and the first ones found will do.
pub const MAX_TRACES_LISTED: usize = 32;

/// The largest stored trace accepted.
pub const MAX_TRACE_BYTES: u64 = 4 << 20;

impl ObjectKey {
    /// The key relative to the store root; always two or three `/`-separated
    /// hex components, so it can never leave the root.
    pub fn relative_path(&self) -> String {
        match self {
            ObjectKey::Block(id) => {
                let h = id.to_hex();
                format!("blocks/{}/{}", &h[..2], h)
            }
            ObjectKey::Index(d) => format!("indexes/{}", d.to_hex()),
            ObjectKey::Trace(chain, d) => format!("traces/{}/{}", chain.to_hex(), d.to_hex()),
        }
    }

    /// The folder of `chain`'s traces, relative to the store root, with a
    /// trailing `/`.
    pub fn traces_of(chain: &ChainDigest) -> String {
        format!("traces/{}/", chain.to_hex())
    }
}

impl ObjectKey {
    /// The largest stored object accepted for this key: a block is one zstd
    /// frame of at most 4 MiB of plain bytes; an index is kilobytes to a few
    /// MiB. Anything larger is refused before it is read into memory.
    pub fn max_stored_bytes(&self) -> u64 {
        match self {
            ObjectKey::Block(_) => (crate::codec::MAX_BLOCK_SIZE as u64) + (1 << 20),
            ObjectKey::Index(_) => 256 << 20,
            ObjectKey::Trace(..) => MAX_TRACE_BYTES,
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative_path())
    }
}

/// The HTTP `Range` header value for bytes `range` of an object.
pub fn range_header(range: &Range<u64>) -> String {
    format!(
        "bytes={}-{}",
        range.start,
        range.end.max(range.start + 1) - 1
    )
}

/// `range` clipped to an object of `object_len` bytes.
pub(super) fn clip(range: &Range<u64>, object_len: u64) -> Range<u64> {
    range.start.min(object_len)..range.end.min(object_len)
}

/// Bytes read from an object, where they start, and the object's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRead {
    pub bytes: Vec<u8>,
    pub start: u64,
    pub object_len: u64,
}

impl RangeRead {
    /// `range` of a whole object.
    pub fn cut(all: Vec<u8>, range: &Range<u64>) -> Self {
        let object_len = all.len() as u64;
        let at = clip(range, object_len);
        let bytes = if at == (0..object_len) {
            all
        } else {
            all[at.start as usize..at.end as usize].to_vec()
        };
        RangeRead {
            bytes,
            start: at.start,
            object_len,
        }
    }

    /// Whether this read is what `range` asked of the object.
    pub fn answers(&self, range: &Range<u64>) -> bool {
        let at = clip(range, self.object_len);
        at.start == self.start && at.end - at.start == self.bytes.len() as u64
    }
}

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// The object was there already; nothing was uploaded.
    AlreadyPresent,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {key} not found")]
    NotFound { store: String, key: Box<ObjectKey> },
    #[error("{store}: {op} {key}: {source}")]
    Io {
        store: String,
        op: &'static str,
        key: Box<ObjectKey>,
        source: std::io::Error,
    },
    #[error("{store}: {op} {key}: {message}")]
    S3 {
        store: String,
        op: &'static str,
        key: Box<ObjectKey>,
        message: String,
    },
    #[error("{store}: {key} is {size} bytes, more than the {limit} a {kind} may be")]
    TooLarge {
        store: String,
        key: Box<ObjectKey>,
        size: u64,
        limit: u64,
        kind: &'static str,
    },
    #[error("cannot open store {store}: {message}")]
    Open { store: String, message: String },
    #[error("{store}: listing {prefix}: {message}")]
    List {
        store: String,
        prefix: String,
        message: String,
    },
}

/// A content-addressed object store. Every key names its content, so a put
/// of a key that exists is skipped and concurrent puts of one key are safe.
#[async_trait]
pub trait BlockStore: Send + Sync + fmt::Debug {
    /// The stored bytes of `key`, unverified (see [`fetch_block`]).
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError>;
    /// The stored bytes `range` of `key` (fewer past the object's end),
    /// unverified. Stores that cannot read a range read it all.
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<RangeRead, StoreError> {
        let all = self.get(key).await?;
        Ok(RangeRead::cut(all, &range))
    }
    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError>;
    /// Stores `data` under `key`, replacing what is there (the same bytes,
    /// as keys name their content). A reader never sees a partly written
    /// object. Callers that checked [`BlockStore::exists`] themselves use
    /// this; everyone else uses [`BlockStore::put_if_absent`].
    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError>;
    /// Stores `data` under `key` unless the key exists.
    async fn put_if_absent(
        &self,
        key: &ObjectKey,
        data: Vec<u8>,
    ) -> Result<PutOutcome, StoreError> {
        if self.exists(key).await? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        self.put_replacing(key, data).await?;
        Ok(PutOutcome::Written)
    }
    /// The traces kept for `chain` (at most [`MAX_TRACES_LISTED`]).
    async fn list_traces(&self, chain: &ChainDigest) -> Result<Vec<TraceDigest>, StoreError>;
    /// Removes `key`; removing what is not there is no error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError>;
    /// Where this store is, for messages (`/dir` or `s3://bucket/prefix`).
    fn location(&self) -> String;
}

/// The trace digest a listed object name spells, in canonical form only
/// (so that the key maps back to the same name).
pub(crate) fn trace_name(name: &str) -> Option<TraceDigest> {
    let d: TraceDigest = format!("sha256:{name}").parse().ok()?;
    (d.to_hex() == name).then_some(d)
}

impl StoreError {
    pub(crate) fn too_large(store: String, key: &ObjectKey, size: u64) -> Self {
        StoreError::TooLarge {
            store,
            key: Box::new(*key),
            size,
            limit: key.max_stored_bytes(),
            kind: match key {
                ObjectKey::Block(_) => "block",
                ObjectKey::Index(_) => "layer index",
                ObjectKey::Trace(..) => "trace",
            },
        }
    }
}

/// A fetch that did not produce verified bytes.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{store}: {source}")]
    Block { store: String, source: CodecError },
    #[error("block {id} holds {len} plain bytes; a read wants {wanted}")]
    Short {
        id: BlockId,
        len: usize,
        wanted: usize,
    },
    #[error("{store}: index {expected} hashes to sha256:{actual}")]
    IndexDigest {
        store: String,
        expected: IndexDigest,
        actual: String,
    },
    #[error("{store}: trace {expected} hashes to sha256:{actual}")]
    TraceDigest {
        store: String,
        expected: TraceDigest,
        actual: String,
    },
}

#[cfg(any(test, feature = "test-support"))]
/// Fetches a block and returns its plain bytes, verified against `id`.
pub async fn fetch_block(store: &dyn BlockStore, id: &BlockId) -> Result<Vec<u8>, FetchError> {
    let stored = store.get(&ObjectKey::Block(*id)).await?;
    decode_off_thread(*id, stored)
        .await
        .map(|(plain, _)| plain)
        .map_err(|source| FetchError::Block {
            store: store.location(),
            source,
        })
}

/// Decodes and verifies a stored block on a blocking thread (decompression
/// and hashing are CPU work, kept off the reactor); returns the plain bytes
/// and, for callers that keep it, the stored form.
pub(crate) async fn decode_off_thread(
    id: BlockId,
    stored: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), CodecError> {
    tokio::task::spawn_blocking(move || decode_block(&id, &stored).map(|plain| (plain, stored)))
        .await
        .map_err(|e| CodecError::Corrupt {
            id,
            reason: format!("decoder task failed: {e}"),
        })?
}

/// Fetches a layer index blob, verified against its digest.
pub async fn fetch_index(
    store: &dyn BlockStore,
    digest: &IndexDigest,
) -> Result<Vec<u8>, FetchError> {
    let blob = store.get(&ObjectKey::Index(*digest)).await?;
    let actual = IndexDigest::of(&blob);
    if actual != *digest {
        return Err(FetchError::IndexDigest {
            store: store.location(),
            expected: *digest,
            actual: actual.to_hex(),
        });
    }
    Ok(blob)
}

/// Fetches a stored trace of `chain`, verified against its digest.
pub async fn fetch_trace(
    store: &dyn BlockStore,
    chain: &ChainDigest,
    digest: &TraceDigest,
) -> Result<Vec<u8>, FetchError> {
    let blob = store.get(&ObjectKey::Trace(*chain, *digest)).await?;
    let actual = TraceDigest::of(&blob);
    if actual != *digest {
        return Err(FetchError::TraceDigest {
            store: store.location(),
            expected: *digest,
            actual: actual.to_hex(),
        });
    }
    Ok(blob)
}

/// Opens the store at `location`, with S3 settings from `config`.
pub async fn open_store(
    location: &StoreLocation,
    config: &Config,
) -> Result<Arc<dyn BlockStore>, StoreError> {
    Ok(match location {
        StoreLocation::Local(dir) => Arc::new(LocalStore::open(dir)?),
        StoreLocation::S3 { bucket, prefix } => {
            Arc::new(S3Store::open(bucket, prefix, &config.store.s3).await?)
        }
    })
}

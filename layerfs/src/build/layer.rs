//! One layer, end to end: a blob stream in; blocks, a verified index blob in
//! the store and the index out.

use std::io::Read;
use std::sync::Arc;

use super::assemble::build_index;
use super::import::{import_layer, Compression, ImportError, ImportStats};
use super::prefetch_list::PrefetchList;
use crate::index::{encode_index, IndexError, ValidIndex};
use slayerfs_chunkstore::{
    BlockStore, BlockWriter, IndexDigest, ObjectKey, StoreError, WriteError, WriteReport,
    WriterOptions,
};

/// Digests the blob must have, from the manifest and the image config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    /// sha256 of the blob (the manifest's layer digest).
    pub blob: Option<[u8; 32]>,
    /// sha256 of the uncompressed tar (the config's diff id).
    pub diff: Option<[u8; 32]>,
}

/// A converted layer.
#[derive(Debug)]
pub struct ConvertedLayer {
    pub digest: IndexDigest,
    pub blob: Vec<u8>,
    pub index: ValidIndex,
    pub stats: ImportStats,
    pub blocks: WriteReport,
    pub compression: Compression,
    pub blob_sha256: [u8; 32],
    pub diff_sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Import(#[from] ImportError),
    // (ImportError is small: its detail is boxed.)
    #[error("writing blocks: {0}")]
    Blocks(#[from] WriteError),
    #[error("building the index: {0}")]
    Index(#[from] IndexError),
    #[error("storing the index: {0}")]
    Store(#[from] StoreError),
    #[error("{what} is sha256:{actual}, expected sha256:{expected}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Internal(String),
}

/// Imports `blob`, writes its blocks, checks the digests and stores the
/// index under `indexes/<hex>`. Nothing refers to the blocks until the index
/// is stored, and the index is stored only once everything checked out.
pub async fn convert_layer<R: Read + Send + 'static>(
    blob: R,
    store: Arc<dyn BlockStore>,
    opts: WriterOptions,
    source_digest: &str,
    expected: Expected,
) -> Result<ConvertedLayer, BuildError> {
    let list = Arc::new(PrefetchList::default());
    convert_layer_with(blob, store, opts, list, source_digest, expected).await
}

/// [`convert_layer`] with a prefetch list: its small files packed together,
/// and the files the layer has recorded in its index, in the list's order.
pub async fn convert_layer_with<R: Read + Send + 'static>(
    blob: R,
    store: Arc<dyn BlockStore>,
    opts: WriterOptions,
    list: Arc<PrefetchList>,
    source_digest: &str,
    expected: Expected,
) -> Result<ConvertedLayer, BuildError> {
    let mut writer = BlockWriter::start(store.clone(), opts);
    let joined = tokio::task::spawn_blocking(move || {
        let imported = import_layer(blob, &mut writer, &list);
        (imported, writer)
    })
    .await
    .map_err(|e| BuildError::Internal(format!("import task: {e}")))?;
    let (imported, writer) = joined;
    // On an import error the writer's own error (if any) is secondary.
    let report = match imported {
        Ok(_) => writer.finish().await?,
        Err(e) => {
            let _ = writer.finish().await;
            return Err(e.into());
        }
    };
    let imported = imported?;
    let check = |what, expected: Option<[u8; 32]>, actual: [u8; 32]| match expected {
        Some(e) if e != actual => Err(BuildError::DigestMismatch {
            what,
            expected: hex::encode(e),
            actual: hex::encode(actual),
        }),
        _ => Ok(()),
    };
    check("the layer blob", expected.blob, imported.blob_sha256)?;
    check(
        "the uncompressed layer (diff id)",
        expected.diff,
        imported.diff_sha256,
    )?;
    let index = build_index(&imported, &report, opts.part_size, source_digest)?;
    // What nodes will check on decode is checked before publishing, so a
    // gap between import and validation is an error here, not on a node.
    let index = ValidIndex::check(index)?;
    let (digest, blob) = encode_index(&index, 9)
        .map_err(|e| BuildError::Internal(format!("compressing the index: {e}")))?;
    store
        .put_if_absent(&ObjectKey::Index(digest), blob.clone())
        .await?;
    Ok(ConvertedLayer {
        digest,
        blob,
        index,
        stats: imported.stats,
        blocks: report,
        compression: imported.compression,
        blob_sha256: imported.blob_sha256,
        diff_sha256: imported.diff_sha256,
    })
}

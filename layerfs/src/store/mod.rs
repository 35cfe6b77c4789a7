//! The store schema, in one place. Imported layers ([`layers`]), the merged
//! views of layer chains ([`merged`]) and upper layers ([`upper`]) live in
//! one sled database — the first two with their immutable records in
//! record files beside it ([`table`]) — and share one error type and the
//! helpers here: big-endian keys (so keys sort numerically), record
//! decoding, removing a key range in one batch, listing what follows a key
//! prefix, and the two ends of a transaction (aborting with an error of
//! one's own, and taking it back out). Each module lists its trees and keys; the snapshotter's snapshot
//! records use the same helpers.

pub mod journal;
pub mod layers;
mod legacy;
pub mod merged;
mod resident;
mod table;
pub mod upper;

use std::path::PathBuf;

use slayerfs_proto::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree `{tree}`: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error(
        "the upper layer was made over other lower layers (chain {found}), not this image (chain {expected})"
    )]
    OtherChain { found: String, expected: String },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("record file {path}: {source}")]
    Table {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the upper's disk is full ({free_kib} KiB free, {} MiB kept for the database)", ROOM_KEPT >> 20)]
    NoRoom { free_kib: u64 },
    #[error("upper data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Free space below which an upper's changes are refused (ENOSPC): sled
/// marks its whole database failed, until it is opened again, after one
/// failed write of its log.
pub const ROOM_KEPT: u64 = 2 << 20;

pub(crate) fn corrupt(tree: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: reason.into(),
    }
}

/// Decodes a record of `tree`; a record that does not decode is corrupt.
pub(crate) fn decode<M: Message + Default>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| corrupt(tree, e.to_string()))
}

/// The key `a ‖ b`.
pub(crate) fn key2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// The big-endian number `bytes` hold (a key part or a value of `tree`),
/// which must be 8 bytes long.
pub(crate) fn be_u64(tree: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(tree, "a number of the wrong length"))
}

/// Removes every key of `tree` that starts with `prefix`, one by one (a
/// batch of a large layer's keys made sled hold hundreds of MiB at once).
pub fn remove_prefix(tree: &sled::Tree, prefix: impl AsRef<[u8]>) -> Result<(), sled::Error> {
    for key in tree.scan_prefix(prefix).keys() {
        tree.remove(key?)?;
    }
    Ok(())
}

/// The rest of every key of `tree` that starts with `prefix`, in key order.
pub fn suffixes(tree: &sled::Tree, prefix: &[u8]) -> Result<Vec<Vec<u8>>, sled::Error> {
    tree.scan_prefix(prefix)
        .keys()
        .map(|k| Ok(k?[prefix.len()..].to_vec()))
        .collect()
}

/// Aborts a sled transaction with `e`.
pub fn abort<T, E>(e: E) -> Result<T, ConflictableTransactionError<E>> {
    Err(ConflictableTransactionError::Abort(e))
}

/// A finished transaction's result, with its abort error or storage error
/// as the caller's error type.
pub fn finish_tx<T, E: From<sled::Error>>(r: Result<T, TransactionError<E>>) -> Result<T, E> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => E::from(e),
    })
}

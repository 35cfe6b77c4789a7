//! The block codec: plain bytes ⇄ zstd frame, with the digest checked on
//! every decode so that wrong bytes are an error, never data.

use crate::id::BlockId;

/// The most plain bytes a block may hold.
pub const MAX_BLOCK_SIZE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("block of {0} bytes is larger than the {MAX_BLOCK_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("block {id}: cannot decompress: {reason}")]
    Corrupt { id: BlockId, reason: String },
    #[error("block {expected}: content hashes to {actual}")]
    DigestMismatch { expected: BlockId, actual: BlockId },
    #[error("zstd: {0}")]
    Compress(std::io::Error),
}

#[cfg(any(test, feature = "test-support"))]
/// Compresses a block, returning its id and its stored form.
pub fn encode_block(plain: &[u8], level: i32) -> Result<(BlockId, Vec<u8>), CodecError> {
    if plain.len() > MAX_BLOCK_SIZE {
        return Err(CodecError::TooLarge(plain.len()));
    }
    let id = BlockId::of(plain);
    let stored = zstd::bulk::compress(plain, level).map_err(CodecError::Compress)?;
    Ok((id, stored))
}

/// A reusable zstd compression context (creating one per block costs more
/// than it should at 4 MiB a block).
pub struct Compressor {
    level: i32,
    inner: zstd::bulk::Compressor<'static>,
}

impl Compressor {
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(Compressor {
            level,
            inner: zstd::bulk::Compressor::new(level)?,
        })
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// The stored form of a block (its id is computed separately).
    pub fn compress(&mut self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        self.inner.compress(plain)
    }
}

/// Decompresses a stored block and checks it is the block `id`. The output is
/// bounded by [`MAX_BLOCK_SIZE`], whatever the frame claims.
pub fn decode_block(id: &BlockId, stored: &[u8]) -> Result<Vec<u8>, CodecError> {
    let corrupt = |reason: String| CodecError::Corrupt { id: *id, reason };
    let mut decoder = zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?;
    let plain = decoder
        .decompress(stored, MAX_BLOCK_SIZE)
        .map_err(|e| corrupt(e.to_string()))?;
    let actual = BlockId::of(&plain);
    if actual != *id {
        return Err(CodecError::DigestMismatch {
            expected: *id,
            actual,
        });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (id, stored) = encode_block(&plain, 3).unwrap();
        assert!(stored.len() < plain.len());
        assert_eq!(decode_block(&id, &stored).unwrap(), plain);

        // A valid frame with other content is a digest mismatch.
        let (_, other) = encode_block(b"other", 3).unwrap();
        assert!(matches!(
            decode_block(&id, &other),
            Err(CodecError::DigestMismatch { .. })
        ));
        // Truncated and garbage frames are corrupt.
        assert!(matches!(
            decode_block(&id, &stored[..stored.len() / 2]),
            Err(CodecError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_block(&id, b"not zstd"),
            Err(CodecError::Corrupt { .. })
        ));
        // A frame that inflates past the block limit is refused, not allocated.
        let big = vec![0u8; MAX_BLOCK_SIZE + 1];
        let bomb = zstd::bulk::compress(&big, 3).unwrap();
        assert!(matches!(
            decode_block(&BlockId::of(&big), &bomb),
            Err(CodecError::Corrupt { .. })
        ));
        assert!(matches!(
            encode_block(&big, 3),
            Err(CodecError::TooLarge(_))
        ));
    }
}

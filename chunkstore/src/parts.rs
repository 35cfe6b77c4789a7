//! Parts of a block: runs of a fixed number of its plain bytes, each with a
//! sha256 of its own, so that a reader can fetch and verify a piece of a
//! block without the rest. The digests are written into the layer index
//! (trusted, as the image names it by digest); where a part's bytes lie in
//! the stored object is read from the object ([`crate::seekable`]).

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::codec::MAX_BLOCK_SIZE;

/// The bytes of one part digest.
pub const PART_DIGEST_LEN: usize = 32;

/// A part size that was checked: a power of two from 16 KiB to a whole
/// block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartSize(u32);

impl PartSize {
    pub const MIN: u32 = 16 << 10;
    /// What `slayerfs convert` writes unless told otherwise: small enough
    /// that a random 4 KiB read fetches 32 times what it reads, large enough
    /// that the stored form is about 7 % larger than one frame per block.
    pub const DEFAULT: PartSize = PartSize(128 << 10);

    /// `None` unless `bytes` is a power of two in `MIN..=MAX_BLOCK_SIZE`.
    pub fn new(bytes: u32) -> Option<Self> {
        (bytes.is_power_of_two() && (Self::MIN..=MAX_BLOCK_SIZE as u32).contains(&bytes))
            .then_some(PartSize(bytes))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// How many parts a block of `len` plain bytes has.
    pub fn count(self, len: usize) -> usize {
        len.div_ceil(self.0 as usize)
    }

    /// The plain bytes of part `part` of a block of `block_len` bytes.
    pub fn span(self, part: u32, block_len: u32) -> Range<u32> {
        let start = part.saturating_mul(self.0).min(block_len);
        start..start.saturating_add(self.0).min(block_len)
    }
}

/// The digests of `plain`'s parts, concatenated in part order, as an index
/// keeps them.
pub fn part_digests(plain: &[u8], size: PartSize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.count(plain.len()) * PART_DIGEST_LEN);
    for part in plain.chunks(size.get() as usize) {
        out.extend_from_slice(&Sha256::digest(part));
    }
    out
}

/// The digests of parts `first..` of one block, known to be whole digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartDigests<'a> {
    size: PartSize,
    first: u32,
    digests: &'a [u8],
}

impl<'a> PartDigests<'a> {
    /// `None` if `digests` is not a whole number of digests or the parts
    /// would run past the largest block.
    pub fn new(size: PartSize, first: u32, digests: &'a [u8]) -> Option<Self> {
        let count = digests.len() / PART_DIGEST_LEN;
        let fits = u64::from(first) + count as u64 <= size.count(MAX_BLOCK_SIZE) as u64;
        (digests.len().is_multiple_of(PART_DIGEST_LEN) && fits).then_some(PartDigests {
            size,
            first,
            digests,
        })
    }

    pub fn size(&self) -> PartSize {
        self.size
    }

    /// The parts that hold the plain bytes `range` of the block, if every
    /// one of them has a digest here.
    pub fn covering(&self, range: Range<u32>) -> Option<Range<u32>> {
        if range.is_empty() {
            return None;
        }
        let p = self.size.get();
        let parts = range.start / p..range.end.div_ceil(p);
        let known = self.first..self.first + (self.digests.len() / PART_DIGEST_LEN) as u32;
        (parts.start >= known.start && parts.end <= known.end).then_some(parts)
    }

    /// Whether `bytes` are part `part`'s bytes; false for a part with no
    /// digest here.
    pub fn verify(&self, part: u32, bytes: &[u8]) -> bool {
        let Some(at) = part.checked_sub(self.first) else {
            return false;
        };
        let at = at as usize * PART_DIGEST_LEN;
        self.digests
            .get(at..at + PART_DIGEST_LEN)
            .is_some_and(|d| d == Sha256::digest(bytes).as_slice())
    }

    /// The digests of the parts that overlap `range`, for a slice that
    /// keeps only its own.
    pub fn sub(&self, range: Range<u32>) -> Option<PartDigests<'a>> {
        let parts = self.covering(range)?;
        let from = (parts.start - self.first) as usize * PART_DIGEST_LEN;
        let to = (parts.end - self.first) as usize * PART_DIGEST_LEN;
        Some(PartDigests {
            size: self.size,
            first: parts.start,
            digests: &self.digests[from..to],
        })
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.digests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_and_verify() {
        assert!(PartSize::new(0).is_none());
        assert!(PartSize::new(8 << 10).is_none());
        assert!(PartSize::new(100_000).is_none());
        assert!(PartSize::new(8 << 20).is_none());
        let size = PartSize::new(16 << 10).unwrap();
        let plain: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        let digests = part_digests(&plain, size);
        assert_eq!(digests.len(), 3 * PART_DIGEST_LEN);
        let all = PartDigests::new(size, 0, &digests).unwrap();
        assert_eq!(all.covering(0..1), Some(0..1));
        assert_eq!(all.covering(16_383..16_385), Some(0..2));
        assert_eq!(all.covering(39_000..40_000), Some(2..3));
        assert_eq!(all.covering(40_000..50_000), None, "no digest for part 3");
        assert_eq!(size.span(2, 40_000), 32_768..40_000);
        assert!(all.verify(2, &plain[32_768..]));
        assert!(!all.verify(2, &plain[32_767..]));
        assert!(!all.verify(3, &plain[..10]));
        let tail = all.sub(20_000..40_000).unwrap();
        assert_eq!((tail.first(), tail.bytes().len()), (1, 64));
        assert!(tail.verify(1, &plain[16_384..32_768]));
        assert!(
            !tail.verify(0, &plain[..16_384]),
            "part 0 is not in the sub-list"
        );
        assert_eq!(tail.covering(0..10), None);
        assert!(PartDigests::new(size, 0, &digests[..33]).is_none());
        assert!(PartDigests::new(size, 256, &digests[..32]).is_none());
    }
}

//! Slices, the bottom of the read and write paths: a chunk of a file is a
//! list of slices (oldest first), each backed by a store block or by the
//! upper layer's local data file; the newest slice covering a byte wins and
//! bytes no slice covers are zeros. Knows nothing of where slices are kept.

use std::ops::Range;

use slayerfs_chunkstore::{BlockId, PartDigests, PartSize};

use crate::geometry::CHUNK_SIZE;

/// Where the bytes of a slice live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// In a block of the store, from this offset of its plain bytes.
    Block { id: BlockId, offset_in_block: u32 },
    /// In the upper layer's local data file of the inode, at the same file
    /// offset (the data file is laid out like the file, sparse).
    UpperData,
}

/// A slice of one chunk with its backing resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceView {
    pub offset_in_chunk: u32,
    pub length: u32,
    pub backing: Backing,
}

impl SliceView {
    /// The part `[a, b)` (chunk-relative, inside this slice) of the slice.
    pub fn clip(&self, a: u32, b: u32) -> SliceView {
        let skip = a - self.offset_in_chunk;
        SliceView {
            offset_in_chunk: a,
            length: b - a,
            backing: match self.backing {
                Backing::Block {
                    id,
                    offset_in_block,
                } => Backing::Block {
                    id,
                    offset_in_block: offset_in_block + skip,
                },
                Backing::UpperData => Backing::UpperData,
            },
        }
    }

    fn end(&self) -> u32 {
        self.offset_in_chunk + self.length
    }

    /// Whether `next` continues this slice's bytes without a seam.
    fn continued_by(&self, next: &SliceView) -> bool {
        if self.end() != next.offset_in_chunk {
            return false;
        }
        match (self.backing, next.backing) {
            (Backing::UpperData, Backing::UpperData) => true,
            (
                Backing::Block {
                    id: a,
                    offset_in_block: oa,
                },
                Backing::Block {
                    id: b,
                    offset_in_block: ob,
                },
            ) => a == b && oa + self.length == ob,
            _ => false,
        }
    }
}

/// Where the bytes of a piece of a read come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Zeros,
    Slice(Backing),
}

/// A run of bytes of a chunk, chunk-relative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset_in_chunk: u32,
    pub length: u32,
    pub origin: Origin,
}

/// Resolves `range` (chunk-relative) of a chunk whose slices are listed
/// oldest first into segments in offset order, covering the range exactly.
pub fn resolve(slices: &[SliceView], range: Range<u32>) -> Vec<Segment> {
    let mut uncovered = vec![range];
    let mut out = Vec::new();
    for s in slices.iter().rev() {
        if uncovered.is_empty() {
            break;
        }
        let (s_start, s_end) = (s.offset_in_chunk, s.offset_in_chunk + s.length);
        let mut rest = Vec::with_capacity(uncovered.len() + 1);
        for gap in uncovered {
            let (a, b) = (gap.start.max(s_start), gap.end.min(s_end));
            if a >= b {
                rest.push(gap);
                continue;
            }
            out.push(Segment {
                offset_in_chunk: a,
                length: b - a,
                origin: Origin::Slice(s.clip(a, b).backing),
            });
            if gap.start < a {
                rest.push(gap.start..a);
            }
            if b < gap.end {
                rest.push(b..gap.end);
            }
        }
        uncovered = rest;
    }
    out.extend(uncovered.into_iter().map(|gap| Segment {
        offset_in_chunk: gap.start,
        length: gap.end - gap.start,
        origin: Origin::Zeros,
    }));
    out.sort_by_key(|s| s.offset_in_chunk);
    out
}

/// A chunk's slices, oldest first, with the part digests of the blocks
/// they read where they are known (slices of a layer's index; an upper's
/// own slices have none), so that a read can fetch parts of a block.
#[derive(Debug, Clone, Default)]
pub struct ChunkView {
    pub slices: Vec<SliceView>,
    parts: Vec<KnownParts>,
}

/// The digests of parts `first..` of block `id`.
#[derive(Debug, Clone)]
struct KnownParts {
    id: BlockId,
    size: PartSize,
    first: u32,
    digests: Vec<u8>,
}

impl From<Vec<SliceView>> for ChunkView {
    fn from(slices: Vec<SliceView>) -> Self {
        ChunkView {
            slices,
            parts: Vec::new(),
        }
    }
}

impl ChunkView {
    /// Records the digests of parts `first..` of block `id`; a list that
    /// is not whole digests is dropped (the block is then read whole).
    pub fn know_parts(&mut self, id: BlockId, size: PartSize, first: u32, digests: Vec<u8>) {
        if PartDigests::new(size, first, &digests).is_some() && !digests.is_empty() {
            self.parts.push(KnownParts {
                id,
                size,
                first,
                digests,
            });
        }
    }

    /// Digests of the parts of block `id` that hold its bytes `range`, if
    /// one list has them all.
    pub fn parts(&self, id: &BlockId, range: Range<u32>) -> Option<PartDigests<'_>> {
        self.parts
            .iter()
            .filter(|k| k.id == *id)
            .filter_map(|k| PartDigests::new(k.size, k.first, &k.digests))
            .find(|p| p.covering(range.clone()).is_some())
    }
}

/// The canonical form of a chunk's slices: what [`resolve`] shows over the
/// whole chunk, without holes, adjacent pieces of one source joined; sorted
/// and non-overlapping. Keeps an upper file's slice list from growing with
/// every write to the same range.
pub fn normalize(slices: &[SliceView]) -> Vec<SliceView> {
    let mut out: Vec<SliceView> = Vec::new();
    for seg in resolve(slices, 0..CHUNK_SIZE as u32) {
        let Origin::Slice(backing) = seg.origin else {
            continue;
        };
        let s = SliceView {
            offset_in_chunk: seg.offset_in_chunk,
            length: seg.length,
            backing,
        };
        match out.last_mut() {
            Some(last) if last.continued_by(&s) => last.length += s.length,
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(off: u32, len: u32, tag: u8) -> SliceView {
        SliceView {
            offset_in_chunk: off,
            length: len,
            backing: Backing::Block {
                id: BlockId::from_bytes([tag; 32]),
                offset_in_block: 0,
            },
        }
    }

    fn tag_at(s: &SliceView, b: u32) -> (u8, u32) {
        match s.backing {
            Backing::Block {
                id,
                offset_in_block,
            } => (id.as_bytes()[0], offset_in_block + b - s.offset_in_chunk),
            Backing::UpperData => (0, b),
        }
    }

    /// Resolves by brute force: the newest slice per byte.
    fn naive(slices: &[SliceView], range: Range<u32>) -> Vec<Option<(u8, u32)>> {
        range
            .map(|b| {
                slices
                    .iter()
                    .rev()
                    .find(|s| b >= s.offset_in_chunk && b < s.offset_in_chunk + s.length)
                    .map(|s| tag_at(s, b))
            })
            .collect()
    }

    #[test]
    fn newest_slice_wins_and_gaps_are_zeros() {
        let slices = [
            sv(0, 100, 1),
            sv(50, 10, 2),
            sv(90, 30, 3),
            sv(55, 2, 4),
            sv(200, 5, 5),
        ];
        for range in [0..300, 10..60, 56..57, 100..200, 0..1, 199..206] {
            let segs = resolve(&slices, range.clone());
            let mut got = Vec::new();
            let mut pos = range.start;
            for s in &segs {
                assert_eq!(s.offset_in_chunk, pos, "segments are contiguous");
                for i in 0..s.length {
                    got.push(match s.origin {
                        Origin::Zeros => None,
                        Origin::Slice(backing) => Some(tag_at(
                            &SliceView {
                                offset_in_chunk: s.offset_in_chunk,
                                length: s.length,
                                backing,
                            },
                            s.offset_in_chunk + i,
                        )),
                    });
                }
                pos += s.length;
            }
            assert_eq!(pos, range.end);
            assert_eq!(got, naive(&slices, range));
        }
    }

    #[test]
    fn normalize_keeps_what_resolve_shows() {
        let local = |off, len| SliceView {
            offset_in_chunk: off,
            length: len,
            backing: Backing::UpperData,
        };
        let slices = [
            sv(0, 100, 1),
            local(50, 10),
            local(60, 5),
            sv(90, 30, 3),
            sv(200, 5, 5),
            local(10, 5),
        ];
        let norm = normalize(&slices);
        for w in norm.windows(2) {
            assert!(w[0].end() < w[1].offset_in_chunk || !w[0].continued_by(&w[1]));
            assert!(w[0].end() <= w[1].offset_in_chunk, "sorted, no overlap");
        }
        // The two adjacent local writes are one slice.
        assert!(norm.contains(&local(50, 15)));
        assert_eq!(naive(&norm, 0..300), naive(&slices, 0..300));
    }
}

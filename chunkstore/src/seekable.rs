//! The stored form of a block that can be read in parts: a seek table,
//! then one independent zstd frame per part. The table is zstd's seekable
//! format's (each frame's stored and plain sizes, in a skippable frame)
//! placed first rather than last, so it is read with an ordinary range
//! from the object's start, as every S3 implementation answers one; a
//! plain zstd decoder skips it and reads the whole block. Blocks of
//! earlier builds are one frame with no table; which form an object has is
//! read from the object, never assumed.

use std::ops::Range;

use crate::codec::{Compressor, MAX_BLOCK_SIZE};

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER: usize = 9;
const HEADER: usize = 8;
/// A table never lists more frames than a block has kilobytes.
pub const MAX_FRAMES: usize = MAX_BLOCK_SIZE >> 10;
/// Enough of an object's start to hold the table of a block cut into
/// 128 KiB parts (or larger) in one read.
pub const HEAD_GUESS: u64 = 1024;

/// A seek table that does not describe the object it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seek table: {0}")]
pub struct TableError(String);

/// One frame: where its stored bytes are in the object, and which plain
/// bytes of the block it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stored: Range<u64>,
    pub plain: Range<u32>,
}

/// What the start of an object says about its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Frames that can be read alone, checked against the object's size.
    Frames(Vec<Frame>),
    /// No seek table: the object is read whole.
    Whole,
    /// The table is longer than the bytes read; read this many.
    NeedHead(u64),
}

/// Reads the layout from `head`, the first bytes of an object of
/// `object_len` bytes (all of it if shorter).
pub fn layout(head: &[u8], object_len: u64) -> Result<Layout, TableError> {
    let bad = |why: String| Err(TableError(why));
    if head.len() < HEADER + FOOTER || le_u32(head, 0) != SKIPPABLE_MAGIC {
        return Ok(Layout::Whole);
    }
    let table = HEADER as u64 + u64::from(le_u32(head, 4));
    if table > object_len {
        return bad(format!(
            "a {table}-byte table in a {object_len}-byte object"
        ));
    }
    if table > MAX_TABLE as u64 || table < (HEADER + FOOTER) as u64 {
        return bad(format!("a {table}-byte table"));
    }
    let table = table as usize;
    if head.len() < table {
        return Ok(Layout::NeedHead(table as u64));
    }
    let foot = &head[table - FOOTER..table];
    if le_u32(foot, 5) != SEEKABLE_MAGIC {
        // Another tool's skippable frame: not a table of ours.
        return Ok(Layout::Whole);
    }
    let frames = le_u32(foot, 0) as usize;
    let descriptor = foot[4];
    if descriptor & 0x7f != 0 {
        return bad(format!("reserved descriptor bits set ({descriptor:#x})"));
    }
    if frames == 0 || frames > MAX_FRAMES {
        return bad(format!("{frames} frames"));
    }
    let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
    if HEADER + frames * entry + FOOTER != table {
        return bad(format!("{frames} frames in a {table}-byte table"));
    }
    let mut out = Vec::with_capacity(frames);
    let (mut stored, mut plain) = (table as u64, 0u64);
    for i in 0..frames {
        let e = HEADER + i * entry;
        let (s, p) = (u64::from(le_u32(head, e)), u64::from(le_u32(head, e + 4)));
        if s == 0 || p == 0 {
            return bad(format!("frame {i} is empty"));
        }
        let next = (stored + s, plain + p);
        if next.1 > MAX_BLOCK_SIZE as u64 {
            return bad(format!(
                "frames hold more than {MAX_BLOCK_SIZE} plain bytes"
            ));
        }
        out.push(Frame {
            stored: stored..next.0,
            plain: plain as u32..next.1 as u32,
        });
        (stored, plain) = next;
    }
    if stored != object_len {
        return bad(format!(
            "a table and frames of {stored} bytes in a {object_len}-byte object"
        ));
    }
    Ok(Layout::Frames(out))
}

/// The longest table: the most frames, with checksums.
const MAX_TABLE: usize = HEADER + MAX_FRAMES * 12 + FOOTER;

/// The frames that hold plain bytes `range` (`None` if the frames end
/// first).
pub fn covering(frames: &[Frame], range: Range<u32>) -> Option<&[Frame]> {
    let first = frames.partition_point(|f| f.plain.end <= range.start);
    let last = frames.partition_point(|f| f.plain.start < range.end);
    let got = frames.get(first..last)?;
    (!got.is_empty() && got.last()?.plain.end >= range.end).then_some(got)
}

/// Decompresses consecutive `frames` from their stored bytes `stored`
/// (which start at the first frame); the plain bytes, exactly as long as
/// the table says, or why not.
pub fn decode_frames(frames: &[Frame], stored: &[u8]) -> Result<Vec<u8>, String> {
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Ok(Vec::new());
    };
    if stored.len() as u64 != last.stored.end - first.stored.start {
        return Err(format!("{} stored bytes for the frames", stored.len()));
    }
    let mut decoder = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
    let mut plain = Vec::with_capacity((last.plain.end - first.plain.start) as usize);
    for f in frames {
        let at = (f.stored.start - first.stored.start) as usize;
        let bytes = &stored[at..at + (f.stored.end - f.stored.start) as usize];
        let want = (f.plain.end - f.plain.start) as usize;
        let got = decoder
            .decompress(bytes, want)
            .map_err(|e| format!("frame at {}: {e}", f.stored.start))?;
        if got.len() != want {
            return Err(format!(
                "frame at {} holds {} plain bytes, the table says {want}",
                f.stored.start,
                got.len()
            ));
        }
        plain.extend_from_slice(&got);
    }
    Ok(plain)
}

/// The stored form of `plain`: the table, then a frame per `part` bytes.
pub fn encode(c: &mut Compressor, plain: &[u8], part: usize) -> std::io::Result<Vec<u8>> {
    let mut frames = Vec::with_capacity(plain.len() / 2);
    let mut sizes = Vec::new();
    for piece in plain.chunks(part.max(1)) {
        let frame = c.compress(piece)?;
        sizes.push((frame.len() as u32, piece.len() as u32));
        frames.extend_from_slice(&frame);
    }
    let mut out = Vec::with_capacity(HEADER + sizes.len() * 8 + FOOTER + frames.len());
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&((sizes.len() * 8 + FOOTER) as u32).to_le_bytes());
    for (s, p) in &sizes {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
    }
    out.extend_from_slice(&(sizes.len() as u32).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&frames);
    Ok(out)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_block;
    use crate::id::BlockId;

    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn frames_read_alone_and_whole() {
        let plain = sample(300_000);
        let mut c = Compressor::new(3).unwrap();
        let stored = encode(&mut c, &plain, 128 << 10).unwrap();
        // A plain zstd decoder reads the whole block, the table skipped.
        assert_eq!(decode_block(&BlockId::of(&plain), &stored).unwrap(), plain);
        let n = stored.len() as u64;
        let head = &stored[..(HEAD_GUESS as usize).min(stored.len())];
        let Layout::Frames(frames) = layout(head, n).unwrap() else {
            panic!("no table")
        };
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].stored.start, 8 + 3 * 8 + 9);
        assert_eq!(frames[2].plain, 262_144..300_000);
        // A shorter head asks for more.
        assert_eq!(
            layout(&stored[..20], n).unwrap(),
            Layout::NeedHead(8 + 3 * 8 + 9)
        );
        let want = covering(&frames, 200_000..270_000).unwrap();
        assert_eq!(want.len(), 2);
        let bytes = &stored[want[0].stored.start as usize..want[1].stored.end as usize];
        assert_eq!(
            decode_frames(want, bytes).unwrap(),
            &plain[131_072..300_000]
        );
        assert!(covering(&frames, 299_999..300_001).is_none());
        assert!(decode_frames(want, &bytes[1..]).is_err());
        // An object of one frame has no table.
        let old = zstd::bulk::compress(&plain, 3).unwrap();
        assert_eq!(layout(&old, old.len() as u64).unwrap(), Layout::Whole);
    }

    /// Mutated and random heads never panic, and a layout that is
    /// accepted always lies inside the object and decodes to an error or
    /// to exactly the plain bytes it claims.
    #[test]
    fn mutated_tables_never_panic() {
        let plain = sample(90_000);
        let good = encode(&mut Compressor::new(1).unwrap(), &plain, 16 << 10).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + round % 3 {
                let at = (next() % 80) as usize;
                b[at] ^= next() as u8;
            }
            if round % 5 == 0 {
                b.truncate((next() % b.len() as u64) as usize);
            }
            let Ok(Layout::Frames(frames)) = layout(&b, b.len() as u64) else {
                continue;
            };
            for f in &frames {
                assert!(f.stored.end <= b.len() as u64);
                let bytes = &b[f.stored.start as usize..f.stored.end as usize];
                if let Ok(p) = decode_frames(std::slice::from_ref(f), bytes) {
                    assert_eq!(p.len() as u32, f.plain.end - f.plain.start);
                }
            }
        }
    }

    #[test]
    fn lying_tables_are_refused() {
        let plain = sample(70_000);
        let mut c = Compressor::new(3).unwrap();
        let good = encode(&mut c, &plain, 16 << 10).unwrap();
        let table = 8 + 5 * 8 + 9;
        let check = |bytes: &[u8]| layout(bytes, bytes.len() as u64);
        // Wrong object length for the frames.
        assert!(layout(&good, good.len() as u64 + 1).is_err());
        // A frame count past the limit or not matching the table's size,
        // reserved bits, a table longer than the object.
        let mut b = good.clone();
        b[table - 9..table - 5].copy_from_slice(&(MAX_FRAMES as u32 + 1).to_le_bytes());
        assert!(check(&b).is_err());
        let mut b = good.clone();
        b[table - 9..table - 5].copy_from_slice(&4u32.to_le_bytes());
        assert!(check(&b).is_err());
        let mut b = good.clone();
        b[table - 5] = 0x01;
        assert!(check(&b).is_err());
        let mut b = good.clone();
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&b).is_err());
        // A frame claiming more plain bytes than a block holds.
        let mut b = good.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&b).is_err());
        // Another tool's skippable frame is no table.
        let mut b = good.clone();
        b[table - 4] ^= 1;
        assert_eq!(check(&b).unwrap(), Layout::Whole);
        // A frame whose size lies decodes to an error, not to other bytes.
        let Layout::Frames(mut frames) = check(&good).unwrap() else {
            panic!()
        };
        frames[0].plain.end -= 1;
        let first = &frames[..1];
        let bytes = &good[first[0].stored.start as usize..first[0].stored.end as usize];
        assert!(decode_frames(first, bytes).is_err());
    }
}

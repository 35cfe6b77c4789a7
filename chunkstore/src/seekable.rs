//! The stored form of a block that can be read in parts: one independent
//! zstd frame per part, then zstd's seek table (the seekable format of
//! zstd's contrib: a skippable frame listing each frame's stored and plain
//! sizes, so a plain zstd decoder still reads the whole block). Blocks of
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
/// Enough of an object's end to hold the table of a block cut into 128
/// KiB parts (or larger) in one read.
pub const TAIL_GUESS: u64 = 1024;

/// A seek table that does not describe the object it ends.
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

/// What the end of an object says about its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Frames that can be read alone, checked against the object's size.
    Frames(Vec<Frame>),
    /// No seek table: the object is read whole.
    Whole,
    /// The table is longer than the tail read; read this many bytes.
    NeedTail(u64),
}

/// Reads the layout from `tail`, the last bytes of an object of
/// `object_len` bytes (all of it if shorter).
pub fn layout(tail: &[u8], object_len: u64) -> Result<Layout, TableError> {
    let bad = |why: String| Err(TableError(why));
    if tail.len() < FOOTER || (tail.len() as u64) > object_len {
        return Ok(Layout::Whole);
    }
    let foot = &tail[tail.len() - FOOTER..];
    if le_u32(foot, 5) != SEEKABLE_MAGIC {
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
    let table = HEADER + frames * entry + FOOTER;
    if table as u64 > object_len {
        return bad(format!(
            "a {table}-byte table in a {object_len}-byte object"
        ));
    }
    if tail.len() < table {
        return Ok(Layout::NeedTail(table as u64));
    }
    let t = &tail[tail.len() - table..];
    if le_u32(t, 0) != SKIPPABLE_MAGIC || le_u32(t, 4) as usize != table - HEADER {
        return bad("no skippable frame around the table".into());
    }
    let mut out = Vec::with_capacity(frames);
    let (mut stored, mut plain) = (0u64, 0u64);
    for i in 0..frames {
        let e = HEADER + i * entry;
        let (s, p) = (u64::from(le_u32(t, e)), u64::from(le_u32(t, e + 4)));
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
    if stored + table as u64 != object_len {
        return bad(format!(
            "frames of {stored} bytes and a {table}-byte table in a {object_len}-byte object"
        ));
    }
    Ok(Layout::Frames(out))
}

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

/// The stored form of `plain`: a frame per `part` bytes and the table.
pub fn encode(c: &mut Compressor, plain: &[u8], part: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plain.len() / 2);
    let mut sizes = Vec::new();
    for piece in plain.chunks(part.max(1)) {
        let frame = c.compress(piece)?;
        sizes.push((frame.len() as u32, piece.len() as u32));
        out.extend_from_slice(&frame);
    }
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&((sizes.len() * 8 + FOOTER) as u32).to_le_bytes());
    for (s, p) in &sizes {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
    }
    out.extend_from_slice(&(sizes.len() as u32).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
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
        let Layout::Frames(frames) = layout(&stored, stored.len() as u64).unwrap() else {
            panic!("no table")
        };
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].plain, 262_144..300_000);
        // The last 1 KiB suffices; a shorter tail asks for more.
        let tail = &stored[stored.len() - 20..];
        assert_eq!(
            layout(tail, stored.len() as u64).unwrap(),
            Layout::NeedTail(8 + 3 * 8 + 9)
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

    #[test]
    fn lying_tables_are_refused() {
        let plain = sample(70_000);
        let mut c = Compressor::new(3).unwrap();
        let good = encode(&mut c, &plain, 16 << 10).unwrap();
        let n = good.len();
        let check = |bytes: &[u8]| layout(bytes, bytes.len() as u64);
        // Wrong object length for the frames.
        assert!(layout(&good, n as u64 + 1).is_err());
        // A frame count past the limit, reserved bits, a broken header.
        let mut b = good.clone();
        b[n - 9..n - 5].copy_from_slice(&(MAX_FRAMES as u32 + 1).to_le_bytes());
        assert!(check(&b).is_err());
        let mut b = good.clone();
        b[n - 5] = 0x01;
        assert!(check(&b).is_err());
        let table = 8 + 5 * 8 + 9;
        let mut b = good.clone();
        b[n - table] ^= 1;
        assert!(check(&b).is_err());
        // A frame claiming more plain bytes than a block holds.
        let mut b = good.clone();
        b[n - table + 12..n - table + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&b).is_err());
        // A frame whose size lies decodes to an error, not to other bytes.
        let Layout::Frames(mut frames) = check(&good).unwrap() else {
            panic!()
        };
        frames[0].plain.end -= 1;
        let first = &frames[..1];
        let bytes = &good[..first[0].stored.end as usize];
        assert!(decode_frames(first, bytes).is_err());
        // A huge count in a short object.
        let mut tiny = vec![0u8; 4];
        tiny.extend_from_slice(&1000u32.to_le_bytes());
        tiny.push(0);
        tiny.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        assert!(check(&tiny).is_err());
    }
}

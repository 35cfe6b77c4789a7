//! Sizes and typed numbers shared by the layer model.

use std::fmt;

/// A file is cut into chunks of this many bytes; slices never cross a chunk.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// A block holds at most this many plain bytes.
pub const BLOCK_SIZE: usize = slayerfs_chunkstore::MAX_BLOCK_SIZE;
/// The longest name a directory entry may have (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// An inode number within one layer; 1 is the layer root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino {}", self.0)
    }
}

/// The chunk holding byte `offset` of a file, and the offset within it.
pub fn chunk_of(offset: u64) -> (u64, u32) {
    (offset / CHUNK_SIZE, (offset % CHUNK_SIZE) as u32)
}

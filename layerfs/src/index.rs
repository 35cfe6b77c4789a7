//! The layer index format: encoding an index (protobuf, then zstd), and
//! decoding one from outside with every field checked before anything
//! trusts it — a [`ValidIndex`] is the proof that the checks were made.
//! Building an index from a layer tar is [`crate::build`]'s.

use std::io::Read;
use std::ops::Deref;

use slayerfs_chunkstore::{IndexDigest, PartDigests, PartSize};
use slayerfs_proto::index::{Inode, InodeKind, LayerIndex, VERSION};
use slayerfs_proto::Message;

pub use crate::geometry::MAX_NAME_LEN;
use crate::geometry::{BLOCK_SIZE, CHUNK_SIZE};

/// The largest decompressed index accepted (a layer of millions of files
/// stays far below this).
pub const MAX_INDEX_BYTES: u64 = 512 << 20;

/// An index whose every invariant the read path relies on was checked
/// ([`ValidIndex::check`]); only such an index can be loaded into the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidIndex(LayerIndex);

impl ValidIndex {
    /// Checks `index` (see [`validate`]).
    pub fn check(index: LayerIndex) -> Result<Self, IndexError> {
        validate(&index)?;
        Ok(ValidIndex(index))
    }

    pub fn into_inner(self) -> LayerIndex {
        self.0
    }

    /// The part digests of block `block` (a position in the block table),
    /// if the index has them.
    pub fn parts_of(&self, block: u32) -> Option<PartDigests<'_>> {
        let size = PartSize::new(self.0.part_size)?;
        let digests = self.0.part_digests.get(block as usize)?;
        PartDigests::new(size, 0, digests).filter(|_| !digests.is_empty())
    }

    /// The blocks (ids as the block table holds them) behind the bytes
    /// `ranges` of file `ino` — all of it with `None` — in file order; a
    /// block may repeat. Nothing for an inode number the index lacks.
    pub fn blocks_of<'a>(
        &'a self,
        ino: u64,
        ranges: Option<&'a [std::ops::Range<u64>]>,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let slices = ino
            .checked_sub(1)
            .and_then(|i| self.0.inodes.get(usize::try_from(i).ok()?))
            .map_or(&[][..], |inode| &inode.slices[..]);
        slices.iter().filter_map(move |s| {
            let start = s.chunk_index.saturating_mul(CHUNK_SIZE) + u64::from(s.offset_in_chunk);
            let end = start.saturating_add(u64::from(s.length));
            let wanted = ranges.is_none_or(|rs| rs.iter().any(|r| r.start < end && start < r.end));
            wanted
                .then(|| self.0.blocks.get(s.block as usize).map(Vec::as_slice))
                .flatten()
        })
    }
}

impl Deref for ValidIndex {
    type Target = LayerIndex;

    fn deref(&self) -> &LayerIndex {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index is not a zstd stream or is truncated: {0}")]
    Decompress(std::io::Error),
    #[error("index is larger than {MAX_INDEX_BYTES} bytes uncompressed")]
    TooLarge,
    #[error("index is not a valid protobuf message: {0}")]
    Decode(#[from] slayerfs_proto::DecodeError),
    #[error("index version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("index: {0}")]
    Invalid(String),
    #[error("block {0} of the tree was never written")]
    MissingBlock(u32),
}

fn invalid(msg: impl Into<String>) -> IndexError {
    IndexError::Invalid(msg.into())
}

/// Serializes and compresses an index; returns its digest and blob.
pub fn encode_index(
    index: &LayerIndex,
    zstd_level: i32,
) -> std::io::Result<(IndexDigest, Vec<u8>)> {
    let plain = index.encode_to_vec();
    let blob = zstd::bulk::compress(&plain, zstd_level)?;
    Ok((IndexDigest::of(&blob), blob))
}

/// Decompresses, decodes and validates an index blob from outside. The
/// caller checks the blob's digest (see `chunkstore::fetch_index`).
pub fn decode_index(blob: &[u8]) -> Result<ValidIndex, IndexError> {
    let decoder = zstd::stream::read::Decoder::new(blob).map_err(IndexError::Decompress)?;
    let mut plain = Vec::new();
    decoder
        .take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut plain)
        .map_err(IndexError::Decompress)?;
    if plain.len() as u64 > MAX_INDEX_BYTES {
        return Err(IndexError::TooLarge);
    }
    ValidIndex::check(LayerIndex::decode(plain.as_slice())?)
}

/// Checks every invariant the read path relies on: geometry, kinds, slices
/// inside their chunk, block and file, names, and a tree (each directory
/// named exactly once, every inode reachable from the root).
pub fn validate(index: &LayerIndex) -> Result<(), IndexError> {
    if index.version != VERSION {
        return Err(IndexError::Version(index.version));
    }
    if index.chunk_size != CHUNK_SIZE || index.block_size != BLOCK_SIZE as u64 {
        return Err(invalid(format!(
            "geometry chunk {} / block {} differs from {CHUNK_SIZE} / {BLOCK_SIZE}",
            index.chunk_size, index.block_size
        )));
    }
    if let Some(i) = index.blocks.iter().position(|b| b.len() != 32) {
        return Err(invalid(format!(
            "block table entry {i} is not a 32-byte sha256"
        )));
    }
    validate_parts(index)?;
    let count = index.inodes.len() as u64;
    if index.inodes.first().map(|r| r.kind) != Some(InodeKind::Directory as i32) {
        return Err(invalid("inode 1 (the root) is not a directory"));
    }
    for (i, inode) in index.inodes.iter().enumerate() {
        validate_inode(index, i as u64 + 1, inode)?;
    }
    if index.prefetch.len() > index.inodes.len() {
        return Err(invalid(format!(
            "{} prefetch entries for {count} inodes",
            index.prefetch.len()
        )));
    }
    for &ino in &index.prefetch {
        let regular = ino
            .checked_sub(1)
            .and_then(|i| index.inodes.get(i as usize))
            .is_some_and(|i| i.kind == InodeKind::Regular as i32);
        if !regular {
            return Err(invalid(format!(
                "prefetch entry {ino} is not a regular file's inode"
            )));
        }
    }
    // The names must form a tree over all inodes.
    let mut named = vec![false; index.inodes.len()];
    named[0] = true;
    let mut stack = vec![1u64];
    while let Some(dir) = stack.pop() {
        for d in &index.inodes[(dir - 1) as usize].children {
            if d.whiteout {
                continue;
            }
            let slot = (d.ino - 1) as usize;
            let is_dir = index.inodes[slot].kind == InodeKind::Directory as i32;
            if named[slot] {
                if is_dir {
                    return Err(invalid(format!(
                        "directory inode {} has more than one name",
                        d.ino
                    )));
                }
                continue;
            }
            named[slot] = true;
            if is_dir {
                stack.push(d.ino);
            }
        }
    }
    if let Some(i) = named.iter().position(|n| !n) {
        return Err(invalid(format!(
            "inode {} is not reachable from the root (of {count})",
            i + 1
        )));
    }
    Ok(())
}

/// Part digests: a known part size, and per block whole digests, no more
/// than a block has parts.
fn validate_parts(index: &LayerIndex) -> Result<(), IndexError> {
    if index.part_size == 0 && index.part_digests.is_empty() {
        return Ok(());
    }
    let size = PartSize::new(index.part_size).ok_or_else(|| {
        invalid(format!(
            "part size {} is not a power of two from {} to {BLOCK_SIZE}",
            index.part_size,
            PartSize::MIN
        ))
    })?;
    if !index.part_digests.is_empty() && index.part_digests.len() != index.blocks.len() {
        return Err(invalid(format!(
            "{} part digest lists for {} blocks",
            index.part_digests.len(),
            index.blocks.len()
        )));
    }
    let most = size.count(BLOCK_SIZE) * slayerfs_chunkstore::parts::PART_DIGEST_LEN;
    if let Some(i) = index
        .part_digests
        .iter()
        .position(|d| !d.len().is_multiple_of(32) || d.len() > most)
    {
        return Err(invalid(format!(
            "block {i}: {} bytes of part digests (whole 32-byte digests, at most {most})",
            index.part_digests[i].len()
        )));
    }
    Ok(())
}

fn validate_inode(index: &LayerIndex, ino: u64, inode: &Inode) -> Result<(), IndexError> {
    let bad = |what: String| invalid(format!("inode {ino}: {what}"));
    let kind = InodeKind::from_i32(inode.kind)
        .ok_or_else(|| bad(format!("unknown kind {}", inode.kind)))?;
    if kind == InodeKind::Unspecified {
        return Err(bad("kind is unspecified".into()));
    }
    if kind == InodeKind::Socket {
        return Err(bad("a socket cannot be part of a layer".into()));
    }
    if inode.mode & !0o7777 != 0 {
        return Err(bad(format!("mode {:o} has bits outside 07777", inode.mode)));
    }
    if inode.mtime_nsec >= 1_000_000_000 {
        return Err(bad(format!(
            "mtime_nsec {} is not below one second",
            inode.mtime_nsec
        )));
    }
    if kind != InodeKind::Directory
        && (!inode.children.is_empty() || inode.opaque || inode.implicit)
    {
        return Err(bad(
            "only a directory has children or is opaque or implicit".into(),
        ));
    }
    if inode.children.len() > 1 {
        let mut names: Vec<&[u8]> = inode.children.iter().map(|d| d.name.as_slice()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!(
                "the name {:?} appears twice",
                String::from_utf8_lossy(w[0])
            )));
        }
    }
    if kind != InodeKind::Regular && (!inode.slices.is_empty() || inode.size != 0) {
        return Err(bad("only a regular file has a size and slices".into()));
    }
    if kind != InodeKind::Symlink && !inode.symlink_target.is_empty() {
        return Err(bad("only a symlink has a target".into()));
    }
    if kind == InodeKind::Symlink && inode.symlink_target.is_empty() {
        return Err(bad("symlink with an empty target".into()));
    }
    for x in &inode.xattrs {
        if x.name.is_empty() || x.name.contains(&0) {
            return Err(bad("xattr with an empty name or a NUL byte".into()));
        }
    }
    for (i, s) in inode.slices.iter().enumerate() {
        let end_in_chunk = u64::from(s.offset_in_chunk) + u64::from(s.length);
        let end_in_block = u64::from(s.offset_in_block) + u64::from(s.length);
        let end_in_file = s
            .chunk_index
            .checked_mul(CHUNK_SIZE)
            .and_then(|o| o.checked_add(end_in_chunk));
        if s.length == 0
            || end_in_chunk > CHUNK_SIZE
            || end_in_block > BLOCK_SIZE as u64
            || (s.block as usize) >= index.blocks.len()
            || end_in_file.is_none_or(|end| end > inode.size)
        {
            return Err(bad(format!(
                "slice {i} ({s:?}) lies outside its chunk, block, block table or file"
            )));
        }
    }
    let mut prev: Option<&[u8]> = None;
    for d in &inode.children {
        let name = d.name.as_slice();
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(bad(format!(
                "invalid entry name {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "entry name of {} bytes is longer than {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if prev.is_some_and(|p| p >= name) {
            return Err(bad(
                "entries are not in strictly ascending name order".into()
            ));
        }
        prev = Some(name);
        let points_ok = if d.whiteout {
            d.ino == 0
        } else {
            d.ino >= 2 && d.ino <= index.inodes.len() as u64
        };
        if !points_ok {
            return Err(bad(format!(
                "entry {:?} refers to inode {}",
                String::from_utf8_lossy(name),
                d.ino
            )));
        }
    }
    Ok(())
}

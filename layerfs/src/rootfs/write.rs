//! File data changes: copy-up, write and truncate. None of them copies
//! file bytes: a copied-up file takes the lower file's slice list, a write
//! adds a local slice, a truncate clips slices.

use std::os::unix::fs::FileExt;

use slayerfs_proto::index::InodeKind;

use super::{Attr, FsError, Rootfs, Time};

/// Space a write leaves free on the upper's filesystem, so that the
/// records describing data already written can always be updated (and
/// files removed) when the data fills it.
const RECORD_RESERVE: u64 = 16 << 20;
use crate::geometry::{chunk_of, Ino, CHUNK_SIZE};
use crate::slice::{normalize, Backing, SliceView};
use crate::store::upper::Change;

impl Rootfs {
    /// The inode's upper record, copying the lower inode's attributes and
    /// slice list up first if the upper does not hold it yet.
    pub(super) fn copy_up(&self, ch: &Change<'_>, ino: Ino) -> Result<Attr, FsError> {
        if let Some(rec) = ch.inode(ino)? {
            return Attr::from_upper(ino, rec);
        }
        let attr = self.lower_attr(ino)?;
        if attr.kind() == InodeKind::Regular {
            let src = *self.lower.sources(ino)?.first().ok_or(FsError::NotFound)?;
            for chunk in 0..attr.inode.size.div_ceil(CHUNK_SIZE) {
                let slices = self.lower.db().chunk_slices(src.layer, src.ino, chunk)?;
                if !slices.is_empty() {
                    ch.put_chunk_slices(ino, chunk, &normalize(&slices))?;
                }
            }
        }
        ch.put_inode(ino, &attr.clone().into_upper())?;
        Ok(attr)
    }

    /// Writes `data` at `offset`; the bytes go to the inode's local data
    /// file and a local slice records them. On an error nothing is recorded.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let up = self.writable()?;
        let ch = up.change();
        let mut attr = self.copy_up(&ch, ino)?;
        match attr.kind() {
            InodeKind::Regular => {}
            InodeKind::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid),
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(FsError::TooLarge)?;
        let available = up
            .available_bytes()
            .map_err(|source| FsError::Data { ino, source })?;
        if available < RECORD_RESERVE + data.len() as u64 {
            return Err(FsError::Data {
                ino,
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        let file = self.data_file(up, ino, true)?.ok_or(FsError::NotFound)?;
        file.write_all_at(data, offset)
            .map_err(|source| FsError::Data { ino, source })?;
        let mut pos = offset;
        while pos < end {
            let (chunk, off) = chunk_of(pos);
            let n = (end - pos).min(CHUNK_SIZE - u64::from(off)) as u32;
            let mut slices = ch.chunk_slices(ino, chunk)?;
            slices.push(SliceView {
                offset_in_chunk: off,
                length: n,
                backing: Backing::UpperData,
            });
            ch.put_chunk_slices(ino, chunk, &normalize(&slices))?;
            pos += u64::from(n);
        }
        let now = Time::now();
        attr.inode.size = attr.inode.size.max(end);
        attr.inode.mtime_sec = now.sec;
        attr.inode.mtime_nsec = now.nsec;
        attr.ctime = now;
        ch.put_inode(ino, &attr.into_upper())?;
        ch.commit(None)?;
        Ok(data.len() as u32)
    }

    /// Sets the size of a copied-up regular file: slices past a smaller
    /// size are dropped (so a later extension reads zeros there), the local
    /// data file is cut to match.
    pub(super) fn truncate(
        &self,
        ch: &Change<'_>,
        attr: &mut Attr,
        size: u64,
    ) -> Result<(), FsError> {
        let ino = attr.ino;
        match attr.kind() {
            InodeKind::Regular => {}
            InodeKind::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid),
        }
        if size > i64::MAX as u64 {
            return Err(FsError::TooLarge);
        }
        if size < attr.inode.size {
            if let Some(file) = self.data_file(ch, ino, false)? {
                file.set_len(size)
                    .map_err(|source| FsError::Data { ino, source })?;
            }
            let (chunk, off) = chunk_of(size);
            let first_gone = if off == 0 {
                chunk
            } else {
                let kept: Vec<SliceView> = ch
                    .chunk_slices(ino, chunk)?
                    .iter()
                    .filter(|s| s.offset_in_chunk < off)
                    .map(|s| s.clip(s.offset_in_chunk, (s.offset_in_chunk + s.length).min(off)))
                    .collect();
                ch.put_chunk_slices(ino, chunk, &kept)?;
                chunk + 1
            };
            ch.truncate_slices(ino, first_gone)?;
        }
        attr.inode.size = size;
        Ok(())
    }
}

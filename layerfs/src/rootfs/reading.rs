//! Reading file bytes: what a read needs is looked up on the caller's
//! thread (local state only); the blocks it needs are fetched on the
//! runtime, under a deadline, so no FUSE worker ever waits on the network.
//! A sequential reader ([`super::streams`]) gets whole blocks and blocks
//! ahead; any other read fetches only the parts of blocks it touches.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use slayerfs_chunkstore::BlockCache;
use slayerfs_proto::index::InodeKind;

use super::{FsError, Rootfs};
use crate::geometry::{Ino, CHUNK_SIZE};
use crate::read::{read_range_shared, Fetch, ReadBytes, ReadError};
use crate::slice::{resolve, Backing, ChunkView, Origin};

/// How a mount reads (set from `[cache]`).
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// The most blocks fetched ahead of a sequential reader, within the
    /// same file (the window is twice what the run has read, up to this).
    pub ahead_blocks: u32,
    /// The longest a read waits for blocks; then it fails with EIO (the
    /// fetch itself goes on, bounded by the store's own timeouts).
    pub timeout: Duration,
}

/// Everything a read needs but the blocks: the file's size, the slices of
/// the chunks it covers, the upper data file.
struct ReadPlan {
    size: u64,
    offset: u64,
    len: u32,
    /// The slices of chunks `first_chunk..`, in order.
    chunks: Vec<ChunkView>,
    first_chunk: u64,
    local: Option<Arc<File>>,
}

impl ReadPlan {
    /// Where the read stops (the end of the file at most).
    fn end(&self) -> u64 {
        self.size
            .min(self.offset.saturating_add(u64::from(self.len)))
    }

    /// Whether every byte the read needs from blocks is in memory (whole
    /// blocks, or the parts that hold them, however the read fetches).
    fn in_memory(&self, cache: &BlockCache) -> bool {
        let (offset, end) = (self.offset, self.end());
        self.chunks.iter().enumerate().all(|(i, view)| {
            let start = (self.first_chunk + i as u64) * CHUNK_SIZE;
            let from = offset.max(start) - start;
            let to = end.min(start + CHUNK_SIZE).saturating_sub(start);
            resolve(&view.slices, from as u32..to.max(from) as u32)
                .into_iter()
                .all(|seg| match seg.origin {
                    Origin::Slice(Backing::Block {
                        id,
                        offset_in_block,
                    }) => {
                        let range = offset_in_block..offset_in_block + seg.length;
                        cache.has_range(&id, range.clone(), view.parts(&id, range))
                    }
                    _ => true,
                })
        })
    }

    async fn fetch(self, cache: &BlockCache, how: Fetch) -> Result<ReadBytes, ReadError> {
        let ReadPlan {
            size,
            offset,
            len,
            mut chunks,
            first_chunk,
            local,
        } = self;
        // Each chunk is asked for once, in order.
        let slices_of = |c: u64| {
            let at = c
                .checked_sub(first_chunk)
                .and_then(|i| usize::try_from(i).ok());
            Ok(at
                .and_then(|i| chunks.get_mut(i))
                .map(std::mem::take)
                .unwrap_or_default())
        };
        read_range_shared(size, offset, len, how, slices_of, cache, local.as_deref()).await
    }
}

impl Rootfs {
    /// Up to `len` bytes at `offset`, handed to `reply`: on this thread if
    /// every block is in memory, else from the runtime once fetched (or
    /// after [`ReadOptions::timeout`], with [`FsError::ReadTimeout`]).
    /// A sequential reader's next blocks are fetched ahead.
    pub fn read<R>(&self, ino: Ino, offset: u64, len: u32, reply: R)
    where
        R: FnOnce(Result<ReadBytes, FsError>) + Send + 'static,
    {
        let plan = match self.plan_read(ino, offset, len) {
            Ok(plan) => plan,
            Err(e) => return reply(Err(e)),
        };
        if let Some(r) = &self.recorder {
            if ino.0 <= self.lower.inode_count() {
                r.note(ino, offset..plan.end());
            }
        }
        let access = self.streams.observe(ino, offset, plan.end());
        tracing::trace!(ino = ino.0, offset, len, ?access, "read");
        let how = if access.sequential {
            Fetch::Whole
        } else {
            Fetch::Parts
        };
        self.read_ahead(ino, plan.size, plan.end(), access.ahead_bytes);
        let in_memory = plan.in_memory(&self.cache);
        let answer = self.fetch(plan, how);
        if in_memory {
            // Nothing to wait for (a block evicted meanwhile is still
            // bounded by the deadline).
            reply(self.runtime.block_on(answer));
        } else {
            crate::metrics::fuse().read_waited();
            self.runtime.spawn(async move { reply(answer.await) });
        }
    }

    /// [`Self::read`] for a caller that may wait (never a FUSE worker):
    /// the bytes, or why not, within the same deadline.
    pub fn read_waiting(&self, ino: Ino, offset: u64, len: u32) -> Result<ReadBytes, FsError> {
        let plan = self.plan_read(ino, offset, len)?;
        self.runtime.block_on(self.fetch(plan, Fetch::Whole))
    }

    /// The bytes of `plan`, or [`FsError::ReadTimeout`] past the deadline.
    fn fetch(
        &self,
        plan: ReadPlan,
        how: Fetch,
    ) -> impl std::future::Future<Output = Result<ReadBytes, FsError>> + Send + 'static {
        let timeout = self.reading.timeout;
        let cache = self.cache.clone();
        async move {
            match tokio::time::timeout(timeout, plan.fetch(&cache, how)).await {
                Ok(read) => read.map_err(FsError::from),
                Err(_) => Err(FsError::ReadTimeout(timeout)),
            }
        }
    }

    fn plan_read(&self, ino: Ino, offset: u64, len: u32) -> Result<ReadPlan, FsError> {
        if let Some(up) = &self.upper {
            if let Some(rec) = up.inode(ino)? {
                let size = super::Attr::from_upper(ino, rec)?.inode.size;
                let local = self.data_file(up, ino, false)?;
                let slices = |c| {
                    up.chunk_slices(ino, c)
                        .map(ChunkView::from)
                        .map_err(ReadError::from)
                };
                return plan(size, offset, len, slices, local);
            }
        }
        let sources = self.lower.sources(ino)?;
        let src = sources.first().ok_or(FsError::NotFound)?;
        let db = self.lower.db();
        let (inode, _) = db.inode(src.layer, src.ino)?.ok_or(FsError::NotFound)?;
        if inode.kind == InodeKind::Directory as i32 {
            return Err(FsError::IsDir);
        }
        let slices = |c| {
            db.chunk_view(src.layer, src.ino, c)
                .map_err(ReadError::from)
        };
        plan(inode.size, offset, len, slices, None)
    }

    /// The slices of chunk `chunk` of `ino`, wherever the inode lives, and
    /// what is known of their blocks' parts.
    fn chunk_view(&self, ino: Ino, chunk: u64) -> Result<ChunkView, FsError> {
        if let Some(up) = &self.upper {
            if up.inode(ino)?.is_some() {
                return Ok(up.chunk_slices(ino, chunk)?.into());
            }
        }
        let sources = self.lower.sources(ino)?;
        let src = sources.first().ok_or(FsError::NotFound)?;
        Ok(self.lower.db().chunk_view(src.layer, src.ino, chunk)?)
    }

    /// Starts fetching the blocks behind bytes `[from, from + window)` of
    /// `ino` that are not in memory yet.
    fn read_ahead(&self, ino: Ino, size: u64, from: u64, window: u64) {
        if window == 0 {
            return;
        }
        let end = size.min(from.saturating_add(window));
        let mut pos = from;
        let mut wanted = Vec::new();
        while pos < end {
            let chunk = pos / CHUNK_SIZE;
            let chunk_start = chunk * CHUNK_SIZE;
            let chunk_end = end.min(chunk_start + CHUNK_SIZE);
            let Ok(view) = self.chunk_view(ino, chunk) else {
                return;
            };
            let range = (pos - chunk_start) as u32..(chunk_end - chunk_start) as u32;
            for seg in resolve(&view.slices, range) {
                if let Origin::Slice(Backing::Block {
                    id,
                    offset_in_block,
                }) = seg.origin
                {
                    // Bytes in memory already, whole or in parts (a
                    // trace's prefetch), need no block.
                    let bytes = offset_in_block..offset_in_block + seg.length;
                    if !wanted.contains(&id)
                        && !self
                            .cache
                            .has_range(&id, bytes.clone(), view.parts(&id, bytes))
                    {
                        wanted.push(id);
                    }
                }
            }
            pos = chunk_end;
        }
        let timeout = self.reading.timeout;
        for id in wanted {
            let cache = self.cache.clone();
            // Under the same deadline as a read: a fetch nobody waits for
            // any more is dropped, and the next reader starts a new one.
            self.runtime.spawn(async move {
                match tokio::time::timeout(timeout, cache.get(&id)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(block = %id, error = %e, "read-ahead failed"),
                    Err(_) => tracing::debug!(block = %id, "read-ahead timed out"),
                }
            });
        }
    }
}

/// The plan of a read of `len` bytes at `offset` of a file of `size` bytes.
fn plan<F>(
    size: u64,
    offset: u64,
    len: u32,
    mut slices_of: F,
    local: Option<Arc<File>>,
) -> Result<ReadPlan, FsError>
where
    F: FnMut(u64) -> Result<ChunkView, ReadError>,
{
    let first_chunk = offset / CHUNK_SIZE;
    let end = size.min(offset.saturating_add(u64::from(len)));
    let mut chunks = Vec::new();
    let mut chunk = first_chunk;
    while chunk * CHUNK_SIZE < end {
        chunks.push(slices_of(chunk)?);
        chunk += 1;
    }
    Ok(ReadPlan {
        size,
        offset,
        len,
        chunks,
        first_chunk,
        local,
    })
}

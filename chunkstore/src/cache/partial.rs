//! Reading part of a block: the parts a range needs, each fetched alone
//! with a ranged GET of its frames (once the object's seek table is known)
//! and checked against its digest from the index; a block in memory or on
//! this node, an object of one frame, or a part that fails its digest is
//! read whole instead, so every byte returned is still verified.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{BlockCache, Key};
use crate::id::BlockId;
use crate::parts::PartDigests;
use crate::seekable::{self, Frame, Layout, HEAD_GUESS};
use crate::store::{FetchError, ObjectKey};

/// Verified plain bytes: a range of a cached block or part.
#[derive(Debug, Clone)]
pub struct Piece {
    pub bytes: Arc<Vec<u8>>,
    pub range: Range<usize>,
}

impl Piece {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

/// Why a part was not read alone.
#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error(transparent)]
    Fetch(Arc<FetchError>),
    /// Read the block whole (no table, or the part failed its digest).
    #[error("read whole")]
    Whole,
}

pub(super) fn layout_weight(l: &Layout) -> u32 {
    match l {
        Layout::Frames(f) => (64 + f.len() * std::mem::size_of::<Frame>()) as u32,
        _ => 64,
    }
}

impl BlockCache {
    /// The plain bytes `range` of block `id`, verified, in pieces in order.
    /// With `parts` (the digests of the block's parts that cover `range`)
    /// only those parts are fetched, unless the block is at hand whole;
    /// without, the block is read whole.
    pub async fn get_range(
        &self,
        id: &BlockId,
        range: Range<u32>,
        parts: Option<PartDigests<'_>>,
    ) -> Result<Vec<Piece>, Arc<FetchError>> {
        self.range_for(id, range, parts, true).await
    }

    /// Fetches the parts of block `id` that hold its bytes `range` into
    /// memory ahead of any read, once no reader waits on a fetch, as
    /// [`BlockCache::prefetch`] does for whole blocks. Whether anything
    /// was fetched now.
    pub async fn prefetch_range(
        &self,
        id: &BlockId,
        range: Range<u32>,
        parts: PartDigests<'_>,
    ) -> Result<bool, Arc<FetchError>> {
        if self.has_range(id, range.clone(), Some(parts)) {
            return Ok(false);
        }
        self.demand.idle().await;
        self.range_for(id, range, Some(parts), false).await?;
        self.stats.prefetched_parts.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// [`Self::get_range`] for a reader (`demand`) or for prefetch.
    async fn range_for(
        &self,
        id: &BlockId,
        range: Range<u32>,
        parts: Option<PartDigests<'_>>,
        demand: bool,
    ) -> Result<Vec<Piece>, Arc<FetchError>> {
        let whole = |bytes: Arc<Vec<u8>>| -> Result<Vec<Piece>, Arc<FetchError>> {
            let r = range.start as usize..range.end as usize;
            if r.end > bytes.len() {
                return Err(Arc::new(FetchError::Short {
                    id: *id,
                    len: bytes.len(),
                    wanted: r.end,
                }));
            }
            Ok(vec![Piece { bytes, range: r }])
        };
        let wanted = parts.and_then(|p| Some((p, p.covering(range.clone())?)));
        let Some((digests, needed)) = wanted else {
            return whole(self.get(id).await?);
        };
        if let Some(hit) = self.memory.get(&Key::Block(*id)).await {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return whole(hit);
        }
        // At hand, or on its way whole: no second fetch.
        if self.loading.contains(id) || self.is_local(id).await {
            return whole(self.get(id).await?);
        }
        let _waiting = demand.then(|| self.demand.enter());
        let size = digests.size().get();
        let fetches = needed.clone().map(|part| {
            let key = Key::Part(*id, part, size);
            async move {
                if let Some(hit) = self.memory.get(&key).await {
                    self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(hit);
                }
                self.stats.memory_misses.fetch_add(1, Ordering::Relaxed);
                self.memory
                    .try_get_with(key, self.load_part(*id, part, digests))
                    .await
            }
        });
        let mut pieces = Vec::with_capacity(needed.len());
        for (part, got) in needed.zip(futures_util::future::join_all(fetches).await) {
            let bytes = match got {
                Ok(bytes) => bytes,
                Err(e) => match &*e {
                    PartError::Whole => return whole(self.get(id).await?),
                    PartError::Fetch(e) => return Err(e.clone()),
                },
            };
            let start = part * size;
            let from = range.start.max(start) - start;
            let to = (range.end.min(start + size) - start) as usize;
            if to > bytes.len() {
                return Err(Arc::new(FetchError::Short {
                    id: *id,
                    len: start as usize + bytes.len(),
                    wanted: range.end as usize,
                }));
            }
            pieces.push(Piece {
                bytes,
                range: from as usize..to,
            });
        }
        Ok(pieces)
    }

    /// Whether [`Self::get_range`] of these would be answered from memory.
    pub fn has_range(
        &self,
        id: &BlockId,
        range: Range<u32>,
        parts: Option<PartDigests<'_>>,
    ) -> bool {
        if self.memory.contains_key(&Key::Block(*id)) {
            return true;
        }
        let Some((p, mut needed)) = parts.and_then(|p| Some((p, p.covering(range)?))) else {
            return false;
        };
        let size = p.size().get();
        needed.all(|part| self.memory.contains_key(&Key::Part(*id, part, size)))
    }

    /// Part `part` of block `id`, fetched alone and verified.
    async fn load_part(
        &self,
        id: BlockId,
        part: u32,
        digests: PartDigests<'_>,
    ) -> Result<Arc<Vec<u8>>, PartError> {
        let layout = self
            .layouts
            .try_get_with(id, self.load_layout(id))
            .await
            .map_err(PartError::Fetch)?;
        let Layout::Frames(frames) = &*layout else {
            return Err(PartError::Whole);
        };
        let block_len = frames.last().map_or(0, |f| f.plain.end);
        let span = digests.size().span(part, block_len);
        let Some(frames) = seekable::covering(frames, span.clone()).filter(|_| !span.is_empty())
        else {
            // The object is shorter than the index says: the whole block
            // will be checked against its id.
            return Err(PartError::Whole);
        };
        let (first, last) = (&frames[0], &frames[frames.len() - 1]);
        let stored_span = first.stored.start..last.stored.end;
        tracing::debug!(block = %id, part, ?stored_span, "fetching a part of a block");
        let read = self
            .store
            .get_range(&ObjectKey::Block(id), stored_span)
            .await
            .map_err(|e| PartError::Fetch(Arc::new(e.into())))?;
        self.stats.part_fetches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fetched_bytes
            .fetch_add(read.bytes.len() as u64, Ordering::Relaxed);
        let frames = frames.to_vec();
        let plain_from = (span.start - first.plain.start) as usize;
        let plain_to = (span.end - first.plain.start) as usize;
        let decoded = tokio::task::spawn_blocking(move || {
            seekable::decode_frames(&frames, &read.bytes).map(|mut plain| {
                plain.truncate(plain_to);
                plain.drain(..plain_from);
                plain
            })
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match decoded {
            Ok(plain) if digests.verify(part, &plain) => Ok(Arc::new(plain)),
            outcome => {
                let why = outcome.err().unwrap_or_else(|| "digest mismatch".into());
                tracing::warn!(block = %id, part, store = %self.store.location(), error = %why,
                    "a part of a block failed verification; reading the block whole");
                self.stats.part_corrupt.fetch_add(1, Ordering::Relaxed);
                Err(PartError::Whole)
            }
        }
    }

    /// What the start of block `id`'s object says about its frames; a
    /// table that does not add up is treated as none (the block is then
    /// read whole and checked against its id).
    async fn load_layout(&self, id: BlockId) -> Result<Arc<Layout>, FetchError> {
        let key = ObjectKey::Block(id);
        let mut want = HEAD_GUESS;
        loop {
            let head = self.store.get_range(&key, 0..want).await?;
            self.stats.part_fetches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .fetched_bytes
                .fetch_add(head.bytes.len() as u64, Ordering::Relaxed);
            match seekable::layout(&head.bytes, head.object_len) {
                Ok(Layout::NeedHead(n)) if n > want => want = n,
                Ok(Layout::NeedHead(_)) => return Ok(Arc::new(Layout::Whole)),
                Ok(layout) => return Ok(Arc::new(layout)),
                Err(e) => {
                    tracing::warn!(block = %id, store = %self.store.location(), error = %e,
                        "ignoring a seek table; reading the block whole");
                    return Ok(Arc::new(Layout::Whole));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

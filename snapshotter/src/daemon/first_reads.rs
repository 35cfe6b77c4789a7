//! The files an image is known to read first (the prefetch list its
//! conversion recorded in each layer index): once a layer is pulled
//! lazily, their blocks are fetched in the background, a few at a time and
//! within a share of the memory cache, so a container's first reads find
//! them here instead of waiting on the store.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use slayerfs_chunkstore::{BlockCache, BlockId};
use slayerfs_layerfs::index::ValidIndex;
use slayerfs_layerfs::BLOCK_SIZE;

/// Block fetches of listed files at once.
const PARALLEL: usize = 4;

/// The blocks behind the files `index` lists as read first, in the list's
/// order, each once; no more than `budget` bytes of them.
pub(super) fn listed_blocks(index: &ValidIndex, budget: u64) -> Vec<BlockId> {
    let most = (budget / BLOCK_SIZE as u64) as usize;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for &ino in &index.prefetch {
        for id in index.blocks_of(ino, None).filter_map(BlockId::from_slice) {
            if seen.insert(id) {
                if out.len() == most {
                    return out;
                }
                out.push(id);
            }
        }
    }
    out
}

/// Fetches `blocks` into `cache` on `runtime`, each within `timeout`; a
/// failure costs only the prefetch (the read that needs the block fetches
/// it again, and sees the error if there is one).
pub(super) fn fetch(
    runtime: &tokio::runtime::Handle,
    cache: Arc<BlockCache>,
    blocks: Vec<BlockId>,
    timeout: std::time::Duration,
) {
    if blocks.is_empty() {
        return;
    }
    runtime.spawn(async move {
        let count = blocks.len();
        futures_util::stream::iter(blocks)
            .for_each_concurrent(PARALLEL, |id| {
                let cache = cache.clone();
                async move {
                    match tokio::time::timeout(timeout, cache.get(&id)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(block = %id, error = %e, "fetching a listed file's block"),
                        Err(_) => tracing::debug!(block = %id, "fetching a listed file's block timed out"),
                    }
                }
            })
            .await;
        tracing::debug!(blocks = count, "fetched the blocks of the files read first");
    });
}

//! Block caches for the read path: memory, then the node's own blocks (if
//! it has a store of its own), then a local disk directory, then the store.
//! However many readers ask for a block (or a part of one) at once, it is
//! fetched once; what comes from the store is verified against its id (a
//! part against its digest) before it is used or kept, a disk copy is
//! checked by its CRC, so a damaged disk copy is dropped and fetched
//! again, and a damaged store object is an error, never data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use moka::notification::RemovalCause;

use crate::codec::{decode_block, CodecError};
use crate::id::BlockId;
use crate::seekable::Layout;
use crate::store::{decode_off_thread, BlockStore, FetchError, ObjectKey, StoreError};

mod partial;
mod priority;

pub use partial::Piece;

/// Capacities of the caches.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Plain bytes kept in memory.
    pub memory_bytes: u64,
    /// A directory for verified blocks (plain bytes and a CRC) and its capacity in bytes;
    /// `None` for no disk cache.
    pub disk: Option<(PathBuf, u64)>,
    /// Bytes of blocks kept on disk for open files beyond the
    /// capacity; blocks past it are cached like any other.
    pub pinned_bytes: u64,
    /// A store of this node's own blocks, read before the disk cache and
    /// the store and never copied into the disk cache (they are on this
    /// disk already).
    pub own_blocks: Option<Arc<dyn BlockStore>>,
}

impl CacheOptions {
    /// `bytes` of memory and nothing else: no disk cache, no store of the
    /// node's own.
    pub fn in_memory(bytes: u64) -> Self {
        CacheOptions {
            memory_bytes: bytes,
            disk: None,
            pinned_bytes: 0,
            own_blocks: None,
        }
    }
}

/// What the caches did, for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    /// Reads of a block or a part of one that memory did not have (one
    /// waiting on a fetch in flight included).
    pub memory_misses: AtomicU64,
    /// Blocks read from the node's own store.
    pub own_block_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    /// Block loads the disk cache did not have (or had damaged).
    pub disk_misses: AtomicU64,
    /// Whole blocks fetched from the store.
    pub fetches: AtomicU64,
    /// Ranged GETs of parts of blocks, and of their seek tables.
    pub part_fetches: AtomicU64,
    /// Parts of blocks whose bytes failed their digest (read whole instead).
    pub part_corrupt: AtomicU64,
    /// Stored bytes fetched from the store, whole blocks and parts.
    pub fetched_bytes: AtomicU64,
    /// Disk copies that failed verification and were dropped.
    pub disk_corrupt: AtomicU64,
    /// Blocks fetched ahead of any read by [`BlockCache::prefetch`].
    pub prefetched: AtomicU64,
    /// Ranges fetched in parts ahead of any read by
    /// [`BlockCache::prefetch_range`].
    pub prefetched_parts: AtomicU64,
}

/// Memory and disk caches in front of a block store.
pub struct BlockCache {
    store: Arc<dyn BlockStore>,
    own_blocks: Option<Arc<dyn BlockStore>>,
    /// Whole blocks and parts of blocks, in one budget.
    memory: moka::future::Cache<Key, Arc<Vec<u8>>>,
    /// What the start of each stored object said about its frames.
    layouts: moka::future::Cache<BlockId, Arc<Layout>>,
    disk: Option<DiskCache>,
    stats: Arc<CacheStats>,
    /// Readers waiting on fetches, which prefetch gives way to.
    demand: priority::Demand,
    loading: priority::Loading,
}

impl BlockCache {
    /// Builds the caches; an existing disk cache directory is taken over
    /// (its blocks count against the capacity and are served).
    pub fn new(store: Arc<dyn BlockStore>, opts: &CacheOptions) -> Result<Self, StoreError> {
        // Least recently used goes first. Moka's default (TinyLFU) admits
        // a new entry only if it was asked for more often than the one it
        // would evict, so once memory is full a streaming reader's next
        // block, read ahead or just read, was turned away and fetched
        // again on each of its reads.
        let memory = moka::future::Cache::builder()
            .max_capacity(opts.memory_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_, v: &Arc<Vec<u8>>| v.len().try_into().unwrap_or(u32::MAX))
            .build();
        let layouts = moka::future::Cache::builder()
            .max_capacity(LAYOUT_BYTES)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_, l: &Arc<Layout>| partial::layout_weight(l))
            .build();
        let disk = match &opts.disk {
            Some((dir, bytes)) if *bytes > 0 => {
                Some(DiskCache::open(dir, *bytes, opts.pinned_bytes)?)
            }
            _ => None,
        };
        Ok(BlockCache {
            store,
            own_blocks: opts.own_blocks.clone(),
            memory,
            layouts,
            disk,
            stats: Arc::default(),
            demand: Default::default(),
            loading: Default::default(),
        })
    }

    /// The memory cache's capacity in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.policy().max_capacity().unwrap_or(0)
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Bytes held now: in memory, and on disk if there is a disk cache
    /// (pinned blocks included).
    pub fn held_bytes(&self) -> (u64, Option<u64>) {
        let disk = self
            .disk
            .as_ref()
            .map(|d| d.index.weighted_size() + d.pins.lock().map_or(0, |p| p.kept));
        (self.memory.weighted_size(), disk)
    }

    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.store
    }

    /// Keeps these blocks in the disk cache while an open file needs them
    /// (no eviction until as many [`Self::unpin`]s); a no-op without a
    /// disk cache.
    pub fn pin(&self, ids: &[BlockId]) {
        if let Some(d) = &self.disk {
            for id in ids {
                d.pin(*id);
            }
        }
    }

    /// Undoes one [`Self::pin`] of these blocks.
    pub fn unpin(&self, ids: &[BlockId]) {
        if let Some(d) = &self.disk {
            for id in ids {
                d.unpin(*id);
            }
        }
    }

    /// Whether block `id` is in memory now.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.memory.contains_key(&Key::Block(*id))
    }

    /// The plain bytes of block `id`, verified.
    pub async fn get(&self, id: &BlockId) -> Result<Arc<Vec<u8>>, Arc<FetchError>> {
        let key = Key::Block(*id);
        if let Some(hit) = self.memory.get(&key).await {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.stats.memory_misses.fetch_add(1, Ordering::Relaxed);
        // A reader whose block is on its way already (a prefetch, another
        // reader) asks nothing more of the link, so prefetch goes on: held
        // back behind a reader waiting on a prefetched block, a trace's
        // prefetch would shrink to the container's own pace, one block at
        // a time.
        let _waiting = (!self.loading.contains(id)).then(|| self.demand.enter());
        // One load per block: concurrent callers wait for the first.
        self.memory.try_get_with(key, self.load(*id)).await
    }

    /// Fetches block `id` into the caches ahead of any read, once no
    /// reader is waiting on a fetch (a read goes first, always). Whether
    /// it was fetched now (rather than at hand already).
    pub async fn prefetch(&self, id: &BlockId) -> Result<bool, Arc<FetchError>> {
        let key = Key::Block(*id);
        if self.memory.contains_key(&key) {
            return Ok(false);
        }
        self.demand.idle().await;
        let mut fetched = false;
        self.memory
            .try_get_with(key, async {
                fetched = true;
                self.load(*id).await
            })
            .await?;
        if fetched {
            self.stats.prefetched.fetch_add(1, Ordering::Relaxed);
        }
        Ok(fetched)
    }

    /// Whether block `id` is on this node (disk cache or own blocks), so
    /// that reading it whole costs no fetch.
    async fn is_local(&self, id: &BlockId) -> bool {
        if self.disk.as_ref().is_some_and(|d| d.has(id)) {
            return true;
        }
        match &self.own_blocks {
            Some(own) => own.exists(&ObjectKey::Block(*id)).await.unwrap_or(false),
            None => false,
        }
    }

    async fn load(&self, id: BlockId) -> Result<Arc<Vec<u8>>, FetchError> {
        let _load = self.loading.start(id);
        if let Some(own) = &self.own_blocks {
            match own.get(&ObjectKey::Block(id)).await {
                Ok(stored) => match decode_off_thread(id, stored).await {
                    Ok((plain, _)) => {
                        self.stats.own_block_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(Arc::new(plain));
                    }
                    // The store may have a good copy; the damage is logged.
                    Err(e) => tracing::error!(
                        block = %id,
                        store = %own.location(),
                        error = %e,
                        "block failed verification"
                    ),
                },
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(disk) = &self.disk {
            match disk.read(id).await {
                Some(Ok(plain)) => {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Arc::new(plain));
                }
                Some(Err(e)) => {
                    tracing::warn!(block = %id, error = %e, "dropping a damaged disk-cache copy");
                    self.stats.disk_corrupt.fetch_add(1, Ordering::Relaxed);
                    disk.remove(id).await;
                }
                None => {}
            }
            self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(block = %id, "fetching a block whole");
        let stored = self.store.get(&ObjectKey::Block(id)).await?;
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fetched_bytes
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        let (plain, _) = decode_off_thread(id, stored)
            .await
            .map_err(|source| {
                tracing::error!(block = %id, store = %self.store.location(), error = %source, "block failed verification");
                FetchError::Block {
                    store: self.store.location(),
                    source,
                }
            })?;
        let plain = Arc::new(plain);
        if let Some(disk) = &self.disk {
            disk.insert(id, plain.clone()).await;
        }
        Ok(plain)
    }
}

/// What the memory cache holds: whole blocks, and parts of blocks read
/// alone ([`crate::parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Block(BlockId),
    /// Part number, part size.
    Part(BlockId, u32, u32),
}

/// A disk copy ends with the CRC-32 of its plain bytes and this.
const COPY_MAGIC: &[u8; 4] = b"SLB1";
const COPY_TRAILER: usize = 8;

/// The plain bytes of a disk copy of block `id`, checked by its CRC; a
/// copy an earlier build left (the block's stored form) is decoded and
/// checked against the id as before.
fn checked_copy(id: BlockId, mut copy: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let n = copy.len();
    if n < COPY_TRAILER || &copy[n - 4..] != COPY_MAGIC {
        return decode_block(&id, &copy);
    }
    let body = n - COPY_TRAILER;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&copy[body..body + 4]);
    if body > crate::codec::MAX_BLOCK_SIZE
        || crc32fast::hash(&copy[..body]) != u32::from_le_bytes(crc)
    {
        return Err(CodecError::Corrupt {
            id,
            reason: "the disk copy fails its CRC".into(),
        });
    }
    copy.truncate(body);
    Ok(copy)
}

/// Memory for the layouts of stored objects (a few hundred bytes each).
const LAYOUT_BYTES: u64 = 8 << 20;

/// Verified plain blocks in a directory, each followed by a CRC-32 of it
/// (a hit costs a read and a CRC, not a decompression and a sha256: the
/// bytes were checked against the block id before they were written),
/// evicted past capacity by moka's policy (TinyLFU admission, least
/// recently used evicted first: a scan past the capacity does not wash
/// out blocks read often; the memory cache, which a reader streams
/// through, admits every block instead) — except blocks
/// pinned by an open file, which stay (outside the capacity, within a
/// budget of their own) until the last file that needs them is closed.
struct DiskCache {
    dir: PathBuf,
    /// Unpinned blocks on disk and their sizes, under moka's eviction.
    index: moka::sync::Cache<BlockId, u32>,
    pins: Arc<Mutex<Pins>>,
}

/// Pinned blocks: how many pins, and their size if they are kept on disk
/// for them; what is kept so counts against the budget.
struct Pins {
    map: HashMap<BlockId, Pin>,
    kept: u64,
    budget: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pin {
    count: u32,
    on_disk: Option<u32>,
}

impl Pins {
    /// Keeps pinned block `id`'s `size` bytes on disk for its pins, if the
    /// budget allows; false if it does not (or `id` is not pinned).
    fn keep(&mut self, id: &BlockId, size: u32) -> bool {
        let budget = self.budget;
        let kept = self.kept;
        match self.map.get_mut(id) {
            Some(pin) if pin.on_disk.is_some() => true,
            Some(pin) if kept + u64::from(size) <= budget => {
                pin.on_disk = Some(size);
                self.kept += u64::from(size);
                true
            }
            _ => false,
        }
    }

    /// Stops keeping `id` on disk for its pins; the size it had.
    fn release(&mut self, id: &BlockId) -> Option<u32> {
        let size = self.map.get_mut(id)?.on_disk.take()?;
        self.kept -= u64::from(size);
        Some(size)
    }
}

fn cache_path(dir: &Path, id: &BlockId) -> PathBuf {
    let h = id.to_hex();
    dir.join(&h[..2]).join(h)
}

impl DiskCache {
    fn open(dir: &Path, capacity: u64, pin_budget: u64) -> Result<Self, StoreError> {
        let open_err = |e: std::io::Error| StoreError::Open {
            store: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        let evict_dir = dir.to_path_buf();
        let pins = Arc::new(Mutex::new(Pins {
            map: HashMap::new(),
            kept: 0,
            budget: pin_budget,
        }));
        let evict_pins = pins.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_, size: &u32| *size)
            .eviction_listener(move |id: Arc<BlockId>, size: u32, cause| {
                if !matches!(cause, RemovalCause::Size | RemovalCause::Explicit) {
                    return;
                }
                // A block pinned meanwhile keeps its file if the budget
                // allows: the pin owns it.
                let mut pins = evict_pins.lock().unwrap_or_else(|p| p.into_inner());
                if !pins.keep(&id, size) {
                    let _ = std::fs::remove_file(cache_path(&evict_dir, &id));
                }
            })
            .build();
        // Take over what an earlier run left; drop half-written files.
        for sub in std::fs::read_dir(dir).map_err(open_err)? {
            let sub = sub.map_err(open_err)?.path();
            let Ok(files) = std::fs::read_dir(&sub) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                let name = f.file_name();
                let parsed = name.to_str().and_then(|n| n.parse::<BlockId>().ok());
                match (parsed, f.metadata()) {
                    (Some(id), Ok(m)) if cache_path(dir, &id) == path => {
                        index.insert(id, m.len().try_into().unwrap_or(u32::MAX));
                    }
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            index,
            pins,
        })
    }

    fn pinned_on_disk(&self, id: &BlockId) -> bool {
        self.lock_pins()
            .map
            .get(id)
            .is_some_and(|p| p.on_disk.is_some())
    }

    /// Whether a copy of `id` is here (not checked until read).
    fn has(&self, id: &BlockId) -> bool {
        self.index.contains_key(id) || self.pinned_on_disk(id)
    }

    fn lock_pins(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `id` on disk (once there) until as many [`Self::unpin`]s.
    fn pin(&self, id: BlockId) {
        let first = {
            let mut pins = self.lock_pins();
            let pin = pins.map.entry(id).or_insert(Pin {
                count: 0,
                on_disk: None,
            });
            pin.count += 1;
            pin.count == 1
        };
        if first {
            // Out of the evictable index if the budget allows (an eviction
            // meanwhile sees the pin and hands the file over).
            if let Some(size) = self.index.get(&id) {
                if self.lock_pins().keep(&id, size) {
                    self.index.invalidate(&id);
                }
            }
        }
    }

    /// Releases a pin; the last one puts the block back under eviction.
    fn unpin(&self, id: BlockId) {
        let back = {
            let mut pins = self.lock_pins();
            let Some(pin) = pins.map.get_mut(&id) else {
                return;
            };
            pin.count = pin.count.saturating_sub(1);
            if pin.count > 0 {
                return;
            }
            let size = pins.release(&id);
            pins.map.remove(&id);
            size
        };
        if let Some(size) = back {
            self.index.insert(id, size);
        }
    }

    /// The verified plain bytes, `None` if not cached, or why the copy is bad.
    async fn read(&self, id: BlockId) -> Option<Result<Vec<u8>, CodecError>> {
        if !self.pinned_on_disk(&id) {
            self.index.get(&id)?;
        }
        let path = cache_path(&self.dir, &id);
        let read = tokio::task::spawn_blocking(move || {
            let copy = std::fs::read(path).ok()?;
            Some(checked_copy(id, copy))
        })
        .await
        .ok()
        .flatten();
        if read.is_none() {
            // Indexed but unreadable (removed behind our back): forget it.
            self.forget(id);
        }
        read
    }

    /// Keeps a verified block; a failure only costs a later refetch.
    async fn insert(&self, id: BlockId, plain: Arc<Vec<u8>>) {
        let path = cache_path(&self.dir, &id);
        let len: u32 = (plain.len() + COPY_TRAILER).try_into().unwrap_or(u32::MAX);
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
            std::io::Write::write_all(&mut tmp, &plain)?;
            std::io::Write::write_all(&mut tmp, &crc32fast::hash(&plain).to_le_bytes())?;
            std::io::Write::write_all(&mut tmp, COPY_MAGIC)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                let kept = self.lock_pins().keep(&id, len);
                if !kept {
                    self.index.insert(id, len);
                }
            }
            Ok(Err(e)) => tracing::warn!(block = %id, error = %e, "cannot write to the disk cache"),
            Err(e) => tracing::warn!(block = %id, error = %e, "disk cache writer failed"),
        }
    }

    /// Forgets a copy that is gone or bad (pinned or not).
    fn forget(&self, id: BlockId) {
        self.lock_pins().release(&id);
        self.index.invalidate(&id);
    }

    async fn remove(&self, id: BlockId) {
        self.forget(id);
        let _ = tokio::fs::remove_file(cache_path(&self.dir, &id)).await;
    }

    #[cfg(test)]
    fn settle(&self) {
        self.index.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;

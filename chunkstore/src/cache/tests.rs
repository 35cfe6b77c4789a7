//! The caches against a local store: one fetch per block, verification, the
//! disk cache's capacity and pins, and demand reads before prefetch.
use super::*;
use crate::codec::encode_block;
use crate::store::LocalStore;

async fn store_with(blocks: &[Vec<u8>]) -> (tempfile::TempDir, Arc<dyn BlockStore>, Vec<BlockId>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&dir.path().join("store")).unwrap());
    let mut ids = Vec::new();
    for b in blocks {
        let (id, stored) = encode_block(b, 3).unwrap();
        store
            .put_if_absent(&ObjectKey::Block(id), stored)
            .await
            .unwrap();
        ids.push(id);
    }
    (dir, store, ids)
}

/// A cache of 64 MiB in memory and nothing on disk.
fn memory_cache(store: Arc<dyn BlockStore>) -> Arc<BlockCache> {
    let options = CacheOptions {
        own_blocks: None,
        memory_bytes: 64 << 20,
        disk: None,
        pinned_bytes: u64::MAX,
    };
    Arc::new(BlockCache::new(store, &options).unwrap())
}

fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_fetch_a_block_once() {
    let data = block(1, 1 << 20);
    let (_dir, store, ids) = store_with(std::slice::from_ref(&data)).await;
    let cache = memory_cache(store);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (cache, id) = (cache.clone(), ids[0]);
        tasks.spawn(async move { cache.get(&id).await.map(|b| b.len()) });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), data.len());
    }
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cache_serves_evicted_blocks_and_heals_damage() {
    let blocks: Vec<Vec<u8>> = (0..4).map(|i| block(i, 1 << 20)).collect();
    let (dir, store, ids) = store_with(&blocks).await;
    let disk_dir = dir.path().join("cache");
    // Memory holds one block; the disk holds all four.
    let opts = CacheOptions {
        own_blocks: None,
        memory_bytes: (1 << 20) + 1,
        disk: Some((disk_dir.clone(), 64 << 20)),
        pinned_bytes: u64::MAX,
    };
    let cache = BlockCache::new(store.clone(), &opts).unwrap();
    for (id, b) in ids.iter().zip(&blocks) {
        assert_eq!(cache.get(id).await.unwrap().as_slice(), b.as_slice());
    }
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 4);
    cache.memory.run_pending_tasks().await;
    // A new cache over the same directory (a restart) serves from disk.
    let cache = BlockCache::new(store.clone(), &opts).unwrap();
    for (id, b) in ids.iter().zip(&blocks) {
        assert_eq!(cache.get(id).await.unwrap().as_slice(), b.as_slice());
    }
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 0);
    assert_eq!(cache.stats().disk_hits.load(Ordering::Relaxed), 4);
    // Disk copies are the plain bytes and a CRC.
    let copy = std::fs::read(cache_path(&disk_dir, &ids[1])).unwrap();
    assert_eq!(&copy[..blocks[1].len()], blocks[1].as_slice());
    // A damaged disk copy (garbage, or one bit flipped) is dropped and the
    // block fetched again, right.
    let cache = BlockCache::new(store.clone(), &opts).unwrap();
    std::fs::write(cache_path(&disk_dir, &ids[2]), b"garbage").unwrap();
    let mut flipped = std::fs::read(cache_path(&disk_dir, &ids[3])).unwrap();
    flipped[1000] ^= 4;
    std::fs::write(cache_path(&disk_dir, &ids[3]), flipped).unwrap();
    for i in [2, 3] {
        assert_eq!(
            cache.get(&ids[i]).await.unwrap().as_slice(),
            blocks[i].as_slice()
        );
    }
    assert_eq!(cache.stats().disk_corrupt.load(Ordering::Relaxed), 2);
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 2);

    // A copy an earlier build left (the block's stored form) still serves.
    let (_, stored) = encode_block(&blocks[0], 3).unwrap();
    std::fs::write(cache_path(&disk_dir, &ids[0]), stored).unwrap();
    let cache = BlockCache::new(store, &opts).unwrap();
    assert_eq!(
        cache.get(&ids[0]).await.unwrap().as_slice(),
        blocks[0].as_slice()
    );
    assert_eq!(cache.stats().disk_hits.load(Ordering::Relaxed), 1);
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn disk_cache_stays_within_capacity() {
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| block(i, 1 << 20)).collect();
    let (dir, store, ids) = store_with(&blocks).await;
    let disk_dir = dir.path().join("cache");
    // Room for three copies (plain bytes and an 8-byte trailer each).
    let cap = (blocks[0].len() as u64 + 8) * 3;
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            own_blocks: None,
            memory_bytes: 1,
            disk: Some((disk_dir.clone(), cap)),
            pinned_bytes: u64::MAX,
        },
    )
    .unwrap();
    for id in &ids {
        cache.get(id).await.unwrap();
    }
    if let Some(d) = &cache.disk {
        d.settle();
    }
    let used: u64 = std::fs::read_dir(&disk_dir)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(
        used <= cap + cap / 3,
        "{used} bytes on disk for a {cap}-byte cache"
    );
    assert!(used > 0);
}

#[tokio::test]
async fn a_damaged_store_object_is_an_error_every_time() {
    let (dir, store, ids) = store_with(&[block(9, 1000)]).await;
    let path = dir
        .path()
        .join("store")
        .join(ObjectKey::Block(ids[0]).relative_path());
    let (_, other) = encode_block(b"not this block", 3).unwrap();
    std::fs::write(path, other).unwrap();
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            own_blocks: None,
            memory_bytes: 1 << 20,
            disk: Some((dir.path().join("cache"), 1 << 20)),
            pinned_bytes: u64::MAX,
        },
    )
    .unwrap();
    for _ in 0..2 {
        let err = cache.get(&ids[0]).await.unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");
    }
    assert_eq!(
        cache.stats().fetches.load(Ordering::Relaxed),
        2,
        "an error is not cached"
    );
}

#[tokio::test]
async fn pinned_blocks_stay_on_disk_until_unpinned() {
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| block(i, 1 << 20)).collect();
    let (dir, store, ids) = store_with(&blocks).await;
    let disk_dir = dir.path().join("cache");
    // Room for two disk copies (plain bytes and an 8-byte trailer each).
    let copy = blocks[0].len() as u64 + 8;
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            own_blocks: None,
            memory_bytes: 1,
            disk: Some((disk_dir.clone(), copy * 2)),
            pinned_bytes: u64::MAX,
        },
    )
    .unwrap();
    let settle = |c: &BlockCache| {
        if let Some(d) = &c.disk {
            d.settle();
        }
    };
    let on_disk = |id: &BlockId| cache_path(&disk_dir, id).exists();
    // Pinned before and after it is fetched: both stay through a cache's
    // worth of other blocks many times over.
    cache.pin(&ids[..1]);
    cache.get(&ids[0]).await.unwrap();
    cache.get(&ids[1]).await.unwrap();
    cache.pin(&ids[1..2]);
    for id in &ids[2..] {
        cache.get(id).await.unwrap();
        settle(&cache);
    }
    assert!(on_disk(&ids[0]) && on_disk(&ids[1]));
    let fetches = cache.stats().fetches.load(Ordering::Relaxed);
    cache.get(&ids[0]).await.unwrap();
    assert_eq!(
        cache.stats().fetches.load(Ordering::Relaxed),
        fetches,
        "served from disk"
    );

    // Pinned twice, unpinned once: still kept. Unpinned again: an ordinary
    // cached block, evicted by the next ones.
    cache.pin(&ids[..1]);
    cache.unpin(&ids[..1]);
    for id in &ids[2..] {
        cache.get(id).await.unwrap();
        settle(&cache);
    }
    assert!(on_disk(&ids[0]));
    cache.unpin(&ids[..2]);
    for id in &ids[2..] {
        cache.get(id).await.unwrap();
        settle(&cache);
    }
    assert!(
        !on_disk(&ids[0]) && !on_disk(&ids[1]),
        "unpinned blocks are evicted again"
    );
}

#[tokio::test]
async fn pinned_blocks_count_against_their_budget() {
    let blocks: Vec<Vec<u8>> = (0..10).map(|i| block(i + 40, 1 << 20)).collect();
    let (dir, store, ids) = store_with(&blocks).await;
    let disk_dir = dir.path().join("cache");
    // A disk copy: the plain bytes and an 8-byte trailer.
    let size = blocks[0].len() as u64 + 8;
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            own_blocks: None,
            memory_bytes: 1,
            disk: Some((disk_dir.clone(), size * 2)),
            pinned_bytes: size * 2,
        },
    )
    .unwrap();
    let settle = |c: &BlockCache| {
        if let Some(d) = &c.disk {
            d.settle();
        }
    };
    let on_disk = |id: &BlockId| cache_path(&disk_dir, id).exists();
    // A file of five blocks is opened: two fit the budget, the rest are
    // cached like any other (kept or evicted by the cache's own policy).
    cache.pin(&ids[..5]);
    for id in &ids {
        cache.get(id).await.unwrap();
        settle(&cache);
    }
    let kept = ids[..5].iter().filter(|id| on_disk(id)).count();
    let files = ids.iter().filter(|id| on_disk(id)).count();
    assert!(kept >= 2, "the budget's worth of the open file is kept");
    assert!(
        files <= 4,
        "{files} blocks on disk: capacity 2 and budget 2"
    );
    let pins = |c: &BlockCache| {
        let p = c.disk.as_ref().unwrap().lock_pins();
        (p.kept, p.map.len())
    };
    assert_eq!(pins(&cache), (size * 2, 5));
    // Closed: the budget is free for the next file.
    cache.unpin(&ids[..5]);
    assert_eq!(pins(&cache), (0, 0));
}

/// A store with room for two GETs at a time, each slow, that notes when
/// each began: a link a prefetch keeps busy, as on a slow uplink.
#[derive(Debug)]
struct NarrowLink {
    inner: Arc<dyn BlockStore>,
    link: tokio::sync::Semaphore,
    began: std::sync::Mutex<Vec<(ObjectKey, std::time::Instant)>>,
}

impl NarrowLink {
    fn over(inner: Arc<dyn BlockStore>) -> Arc<Self> {
        Arc::new(NarrowLink {
            inner,
            link: tokio::sync::Semaphore::new(2),
            began: std::sync::Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl BlockStore for NarrowLink {
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        let _link = self.link.acquire().await.unwrap();
        let now = std::time::Instant::now();
        self.began.lock().unwrap().push((*key, now));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.inner.get(key).await
    }
    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }
    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put_replacing(key, data).await
    }
    async fn list_traces(
        &self,
        chain: &crate::ChainDigest,
    ) -> Result<Vec<crate::TraceDigest>, StoreError> {
        self.inner.list_traces(chain).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn location(&self) -> String {
        "a narrow link".into()
    }
}

/// While a reader waits on the store, no prefetch starts a fetch: the ones
/// under way finish, the queued ones wait until the reader has its block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prefetch_starts_while_a_reader_waits() {
    let blocks: Vec<Vec<u8>> = (0..6).map(|i| block(i, 64 << 10)).collect();
    let (_dir, inner, ids) = store_with(&blocks).await;
    let store = NarrowLink::over(inner);
    let cache = memory_cache(store.clone());
    // Five blocks prefetched two at a time, as a trace's prefetch does.
    let prefetch = {
        let (cache, ids) = (cache.clone(), ids[..5].to_vec());
        tokio::spawn(async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(ids)
                .for_each_concurrent(2, |id| {
                    let cache = cache.clone();
                    async move {
                        cache.prefetch(&id).await.unwrap();
                    }
                })
                .await;
        })
    };
    // Two prefetches fill the link when the reader asks; without the
    // reader going first, a third would take the link's next free place
    // beside it.
    while store.began.lock().unwrap().len() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let asked = std::time::Instant::now();
    let got = cache.get(&ids[5]).await.unwrap();
    assert_eq!(*got, blocks[5]);
    prefetch.await.unwrap();
    let began = store.began.lock().unwrap().clone();
    let read = ObjectKey::Block(ids[5]);
    // The reader's GET took 100 ms from its start; a prefetch that waited
    // for it begins as it ends (not before half of it).
    let (_, read_began) = *began.iter().find(|(k, _)| *k == read).unwrap();
    let served = read_began + std::time::Duration::from_millis(50);
    let during: Vec<&ObjectKey> = began
        .iter()
        .filter(|(k, t)| *k != read && *t > asked && *t < served)
        .map(|(k, _)| k)
        .collect();
    assert!(
        during.is_empty(),
        "prefetches began while a reader waited: {during:?}"
    );
    assert_eq!(began.len(), 6);
    assert_eq!(cache.stats().prefetched.load(Ordering::Relaxed), 5);
}

/// A reader waiting on a block a prefetch is fetching adds nothing to the
/// link: other prefetches go on beside it (held back, a trace's prefetch
/// would shrink to the reader's pace, one block at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_a_block_on_its_way_does_not_hold_prefetch_back() {
    let blocks: Vec<Vec<u8>> = (0..2).map(|i| block(i, 64 << 10)).collect();
    let (_dir, inner, ids) = store_with(&blocks).await;
    let store = NarrowLink::over(inner);
    let cache = memory_cache(store.clone());
    let t0 = std::time::Instant::now();
    let first = {
        let (cache, id) = (cache.clone(), ids[0]);
        tokio::spawn(async move { cache.prefetch(&id).await.unwrap() })
    };
    while store.began.lock().unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // A reader joins the GET under way; another prefetch is asked for.
    let reader = {
        let (cache, id) = (cache.clone(), ids[0]);
        tokio::spawn(async move { cache.get(&id).await.map(|b| b.len()) })
    };
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let second = {
        let (cache, id) = (cache.clone(), ids[1]);
        tokio::spawn(async move { cache.prefetch(&id).await.unwrap() })
    };
    assert_eq!(reader.await.unwrap().unwrap(), blocks[0].len());
    assert!(first.await.unwrap() && second.await.unwrap());
    let began = store.began.lock().unwrap().clone();
    let (_, second_began) = *began
        .iter()
        .find(|(k, _)| *k == ObjectKey::Block(ids[1]))
        .unwrap();
    // The first GET takes 100 ms; the second began well before it ended.
    assert!(
        second_began < t0 + std::time::Duration::from_millis(60),
        "the second prefetch waited for the reader: {:?}",
        second_began - t0
    );
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 2);
}

/// A reader streaming through more blocks than memory holds: each block
/// fetched stays until newer ones push it out, however often the older
/// blocks were read (an admission policy that weighs past reads would turn
/// every later block away, and each of its reads would fetch it again).
#[tokio::test]
async fn a_stream_past_the_memory_budget_fetches_each_block_once() {
    let blocks: Vec<Vec<u8>> = (0..12).map(|i| block(i, 1 << 20)).collect();
    let (_dir, store, ids) = store_with(&blocks).await;
    let options = CacheOptions {
        own_blocks: None,
        memory_bytes: 4 << 20,
        disk: None,
        pinned_bytes: u64::MAX,
    };
    let cache = BlockCache::new(store, &options).unwrap();
    for id in &ids {
        // A block is read in several requests, as the kernel sends them.
        for _ in 0..8 {
            cache.get(id).await.unwrap();
            cache.memory.run_pending_tasks().await;
        }
    }
    assert_eq!(cache.stats().fetches.load(Ordering::Relaxed), 12);
}

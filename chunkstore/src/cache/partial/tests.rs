//! Reading parts of blocks from a local store: only the parts asked for
//! are fetched, every byte is verified, and anything that does not add up
//! is read whole (and checked against the block id) instead.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cache::{BlockCache, CacheOptions};
use crate::codec::Compressor;
use crate::id::BlockId;
use crate::parts::{part_digests, PartDigests, PartSize};
use crate::seekable;
use crate::store::{BlockStore, LocalStore, ObjectKey};

const PART: u32 = 16 << 10;

fn plain(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) ^ seed) as u8)
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn BlockStore>,
    cache: BlockCache,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&dir.path().join("s")).unwrap());
    let cache = BlockCache::new(store.clone(), &CacheOptions::in_memory(64 << 20)).unwrap();
    Fixture {
        _dir: dir,
        store,
        cache,
    }
}

async fn put(store: &dyn BlockStore, id: BlockId, stored: Vec<u8>) {
    store
        .put_replacing(&ObjectKey::Block(id), stored)
        .await
        .unwrap();
}

fn seekable_form(bytes: &[u8], part: u32) -> Vec<u8> {
    seekable::encode(&mut Compressor::new(3).unwrap(), bytes, part as usize).unwrap()
}

fn counts(c: &BlockCache) -> (u64, u64, u64) {
    let s = c.stats();
    (
        s.fetches.load(Ordering::Relaxed),
        s.part_fetches.load(Ordering::Relaxed),
        s.part_corrupt.load(Ordering::Relaxed),
    )
}

fn joined(pieces: &[crate::Piece]) -> Vec<u8> {
    pieces.iter().flat_map(|p| p.as_slice().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fetch_only_their_parts() {
    let f = fixture();
    let data = plain(1, 200_000);
    let id = BlockId::of(&data);
    put(f.store.as_ref(), id, seekable_form(&data, PART)).await;
    let size = PartSize::new(PART).unwrap();
    let digests = part_digests(&data, size);
    let parts = PartDigests::new(size, 0, &digests).unwrap();

    let got = f
        .cache
        .get_range(&id, 40_000..44_096, Some(parts))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[40_000..44_096]);
    assert_eq!(counts(&f.cache), (0, 2, 0), "the table, then one part");
    let fetched = f.cache.stats().fetched_bytes.load(Ordering::Relaxed);
    assert!(fetched < 2 * PART as u64, "{fetched} bytes fetched");

    // The same part again is in memory; a read over a seam fetches the
    // next part alone, in two pieces.
    let got = f
        .cache
        .get_range(&id, 41_000..41_100, Some(parts))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[41_000..41_100]);
    assert_eq!(counts(&f.cache), (0, 2, 0));
    let seam = 3 * PART - 10..3 * PART + 10;
    let got = f
        .cache
        .get_range(&id, seam.clone(), Some(parts))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(joined(&got), &data[seam.start as usize..seam.end as usize]);
    assert_eq!(counts(&f.cache), (0, 3, 0));

    // The last, short part.
    let got = f
        .cache
        .get_range(&id, 199_990..200_000, Some(parts))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[199_990..]);

    // Without digests the block is read whole, and then serves every range.
    let got = f.cache.get_range(&id, 0..10, None).await.unwrap();
    assert_eq!(joined(&got), &data[..10]);
    assert_eq!(counts(&f.cache).0, 1);
    let got = f
        .cache
        .get_range(&id, 100_000..100_010, Some(parts))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[100_000..100_010]);
    assert_eq!(counts(&f.cache).0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_one_frame_or_other_parts_still_read() {
    let f = fixture();
    let size = PartSize::new(PART).unwrap();
    // Written by an earlier build: one frame, no table.
    let old = plain(2, 100_000);
    let old_id = BlockId::of(&old);
    put(
        f.store.as_ref(),
        old_id,
        zstd::bulk::compress(&old, 3).unwrap(),
    )
    .await;
    let d = part_digests(&old, size);
    let got = f
        .cache
        .get_range(&old_id, 50_000..50_100, PartDigests::new(size, 0, &d))
        .await
        .unwrap();
    assert_eq!(joined(&got), &old[50_000..50_100]);
    assert_eq!(
        counts(&f.cache),
        (1, 1, 0),
        "the tail, then the block whole"
    );

    // Stored with frames of 64 KiB while the index cuts 16 KiB parts: the
    // frame holding a part is fetched.
    let other = plain(3, 150_000);
    let other_id = BlockId::of(&other);
    put(f.store.as_ref(), other_id, seekable_form(&other, 64 << 10)).await;
    let d = part_digests(&other, size);
    let got = f
        .cache
        .get_range(&other_id, 70_000..70_100, PartDigests::new(size, 0, &d))
        .await
        .unwrap();
    assert_eq!(joined(&got), &other[70_000..70_100]);
    assert_eq!(counts(&f.cache), (1, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_never_returned() {
    let f = fixture();
    let size = PartSize::new(PART).unwrap();
    let data = plain(4, 100_000);
    let id = BlockId::of(&data);
    put(f.store.as_ref(), id, seekable_form(&data, PART)).await;

    // Digests that do not match the object: read whole, checked by id.
    let wrong = part_digests(&plain(5, 100_000), size);
    let got = f
        .cache
        .get_range(&id, 20_000..20_010, PartDigests::new(size, 0, &wrong))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[20_000..20_010]);
    assert_eq!(counts(&f.cache), (1, 2, 1));

    // An object with other content under the id: neither the part nor the
    // whole block verifies, so the read fails.
    let g = fixture();
    let evil = plain(6, 100_000);
    put(g.store.as_ref(), id, seekable_form(&evil, PART)).await;
    let d = part_digests(&data, size);
    let err = g
        .cache
        .get_range(&id, 20_000..20_010, PartDigests::new(size, 0, &d))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");

    // A table that lies about its frames is ignored.
    let h = fixture();
    let mut stored = seekable_form(&data, PART);
    // The first frame's stored size.
    stored[8..12].copy_from_slice(&1u32.to_le_bytes());
    put(h.store.as_ref(), id, stored).await;
    let got = h
        .cache
        .get_range(&id, 90_000..90_010, PartDigests::new(size, 0, &d))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[90_000..90_010]);
    assert_eq!(counts(&h.cache).0, 1);
}

/// A prefetch of a range brings its parts into memory, once: a read of
/// them then fetches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_range_is_read_from_memory() {
    let f = fixture();
    let data = plain(5, 200_000);
    let id = BlockId::of(&data);
    put(f.store.as_ref(), id, seekable_form(&data, PART)).await;
    let size = PartSize::new(PART).unwrap();
    let digests = part_digests(&data, size);
    let parts = PartDigests::new(size, 0, &digests).unwrap();

    assert!(f
        .cache
        .prefetch_range(&id, 20_000..50_000, parts)
        .await
        .unwrap());
    assert!(!f
        .cache
        .prefetch_range(&id, 20_000..50_000, parts)
        .await
        .unwrap());
    let s = f.cache.stats();
    assert_eq!(s.prefetched_parts.load(Ordering::Relaxed), 1);
    assert!(f.cache.has_range(&id, 20_000..50_000, Some(parts)));
    assert!(!f.cache.contains(&id), "only parts, not the block");
    let before = counts(&f.cache);
    let got = f
        .cache
        .get_range(&id, 30_000..40_000, Some(parts))
        .await
        .unwrap();
    assert_eq!(joined(&got), &data[30_000..40_000]);
    assert_eq!(counts(&f.cache), before, "nothing fetched for the read");
}

//! Reads that fetch parts of blocks, through a layer's records: a layer
//! converted now carries part digests from its index into its records, so
//! a read fetches only the parts it touches; an index written before parts
//! existed (no digests) still loads and reads, a block at a time; digests
//! that lie cost a whole-block read, never wrong bytes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockStore, CacheOptions, LocalStore, PartSize};
use slayerfs_layerfs::index::ValidIndex;
use slayerfs_layerfs::read::{read_range_shared, Fetch};
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_layerfs::test_support::{convert_for_test, noise, tar_of};
use slayerfs_layerfs::Ino;
use slayerfs_proto::index::LayerIndex;

const MIB: usize = 1 << 20;

fn cache(store: &Arc<dyn BlockStore>) -> BlockCache {
    BlockCache::new(store.clone(), &CacheOptions::in_memory(64 << 20)).unwrap()
}

fn file_ino(index: &LayerIndex, name: &str) -> Ino {
    let d = index.inodes[0]
        .children
        .iter()
        .find(|d| d.name == name.as_bytes())
        .unwrap();
    Ino(d.ino)
}

/// Reads `len` bytes at `offset` of the layer's file, fetching as `how`.
async fn read(
    db: &LayerDb,
    layer: slayerfs_layerfs::store::layers::LayerId,
    ino: Ino,
    size: u64,
    (offset, len): (u64, u32),
    how: Fetch,
    cache: &BlockCache,
) -> Vec<u8> {
    read_range_shared(
        size,
        offset,
        len,
        how,
        |c| Ok(db.chunk_view(layer, ino, c)?),
        cache,
        None,
    )
    .await
    .unwrap()
    .into_vec()
}

fn counts(c: &BlockCache) -> (u64, u64) {
    let s = c.stats();
    (
        s.fetches.load(Ordering::Relaxed),
        s.part_fetches.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_fetch_parts_and_old_indexes_read_whole_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&dir.path().join("s")).unwrap());
    let data = noise(10 * MIB, 7);
    let conv = convert_for_test(tar_of(&[("model", &data)]), &store).await;
    let index = conv.index.clone();
    assert_eq!(index.part_size, PartSize::DEFAULT.get());
    assert_eq!(index.part_digests.len(), index.blocks.len());
    assert_eq!(index.part_digests[0].len(), 32 * 32, "32 parts of 128 KiB");

    let db = LayerDb::open(&dir.path().join("db")).unwrap();
    let layer = db.load_index(&conv.digest, &conv.index).unwrap();
    let ino = file_ino(&index, "model");
    let size = data.len() as u64;
    let c = cache(&store);
    let ranges = [
        (5 * MIB as u64 + 123, 4096u32),
        (131_000, 200),
        (9 * MIB as u64, 300_000),
    ];
    for r in ranges {
        let got = read(&db, layer.id, ino, size, r, Fetch::Parts, &c).await;
        assert_eq!(got, &data[r.0 as usize..r.0 as usize + r.1 as usize]);
    }
    let (whole, parts) = counts(&c);
    assert_eq!(whole, 0, "no block read whole");
    // One table per block touched (3) and one GET per part (1 + 2 + 3).
    assert_eq!(parts, 3 + 6);
    let fetched = c.stats().fetched_bytes.load(Ordering::Relaxed);
    assert!(fetched < 7 * (128 << 10), "{fetched} bytes fetched");

    // A sequential reader's fetch of bytes whose parts are in memory (the
    // first part, read above) is served from them; of others it reads the
    // block whole.
    let got = read(&db, layer.id, ino, size, (0, 4096), Fetch::Whole, &c).await;
    assert_eq!(got, &data[..4096]);
    assert_eq!(counts(&c), (0, 9));
    let at = 2 * MIB;
    let got = read(
        &db,
        layer.id,
        ino,
        size,
        (at as u64, 4096),
        Fetch::Whole,
        &c,
    )
    .await;
    assert_eq!(got, &data[at..at + 4096]);
    assert_eq!(counts(&c).0, 1);

    // The same layer as an index of an earlier build, without digests: it
    // loads, and reads fetch whole blocks.
    let mut old = conv.index.clone().into_inner();
    old.part_size = 0;
    old.part_digests.clear();
    let old = ValidIndex::check(old).unwrap();
    let old_digest = slayerfs_chunkstore::IndexDigest::of(b"an index of an earlier build");
    let old_layer = db.load_index(&old_digest, &old).unwrap();
    let c = cache(&store);
    let r = (5 * MIB as u64 + 123, 4096);
    let got = read(&db, old_layer.id, ino, size, r, Fetch::Parts, &c).await;
    assert_eq!(got, &data[r.0 as usize..r.0 as usize + 4096]);
    assert_eq!(counts(&c), (1, 0));

    // Digests that lie: the part fails, the block is read whole and
    // verified by its id, and the bytes are right.
    let mut lying = conv.index.clone().into_inner();
    for d in &mut lying.part_digests {
        d.iter_mut().for_each(|b| *b ^= 0x55);
    }
    let lying = ValidIndex::check(lying).unwrap();
    let lying_digest = slayerfs_chunkstore::IndexDigest::of(b"an index whose digests lie");
    let lying_layer = db.load_index(&lying_digest, &lying).unwrap();
    let c = cache(&store);
    let got = read(&db, lying_layer.id, ino, size, r, Fetch::Parts, &c).await;
    assert_eq!(got, &data[r.0 as usize..r.0 as usize + 4096]);
    assert_eq!(counts(&c).0, 1);
    assert_eq!(c.stats().part_corrupt.load(Ordering::Relaxed), 1);
}

#[test]
fn hostile_part_fields_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let conv = rt.block_on(convert_for_test(tar_of(&[("f", &noise(MIB, 1))]), &store));
    let good = conv.index.into_inner();
    type Spoil = fn(&mut LayerIndex);
    let cases: [(&str, Spoil); 5] = [
        ("part size", |i| i.part_size = 100_000),
        ("part size", |i| i.part_size = 8 << 20),
        ("part digest lists", |i| i.part_digests.push(Vec::new())),
        ("bytes of part digests", |i| i.part_digests[0].push(1)),
        ("bytes of part digests", |i| {
            i.part_digests[0] = vec![0; 33 * 32];
        }),
    ];
    for (what, spoil) in cases {
        let mut index = good.clone();
        spoil(&mut index);
        let err = ValidIndex::check(index).unwrap_err().to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
    // Digests without a part size are refused too.
    let mut index = good.clone();
    index.part_size = 0;
    assert!(ValidIndex::check(index).is_err());
}

#[test]
fn hostile_prefetch_entries_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
    let conv = rt.block_on(convert_for_test(tar_of(&[("f", b"x")]), &store));
    let good = conv.index.into_inner();
    // The root (a directory), past the table, zero, more entries than inodes.
    for prefetch in [vec![1], vec![99], vec![0], vec![2, 2, 2]] {
        let mut index = good.clone();
        index.prefetch = prefetch.clone();
        let err = ValidIndex::check(index).unwrap_err().to_string();
        assert!(err.contains("prefetch"), "{prefetch:?}: {err}");
    }
    let mut index = good;
    index.prefetch = vec![2];
    ValidIndex::check(index).unwrap();
}

//! The S3 block store against a real S3 server on 127.0.0.1 (`s3s-fs`), and
//! `slayerfs convert` writing into it.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use slayerfs_chunkstore::parts::part_digests;
use slayerfs_chunkstore::seekable;
use slayerfs_chunkstore::{
    encode_block, fetch_block, fetch_index, BlockCache, BlockId, BlockStore, CacheOptions,
    Compressor, FetchError, IndexDigest, ObjectKey, PartDigests, PartSize, PutOutcome, S3Store,
    StoreError,
};
use slayerfs_config::S3Config;
use slayerfs_integration::fixtures::{awkward_layers, write_image};
use slayerfs_integration::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use slayerfs_snapshotter::image::converted::ConvertedImage;
use slayerfs_snapshotter::image::reference::ImageRef;

fn s3_config(endpoint: &str) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_string()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        max_attempts: 2,
        initial_backoff_ms: 10,
        connect_timeout_ms: 500,
        operation_timeout_ms: 5_000,
        ..S3Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_puts_gets_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(tmp.path(), &["blocks"]).unwrap();
    let store = S3Store::open("blocks", "pre/fix", &s3_config(&server.endpoint()))
        .await
        .unwrap();

    let plain = b"hello blocks".repeat(1000);
    let (id, stored) = encode_block(&plain, 3).unwrap();
    let key = ObjectKey::Block(id);
    assert!(!store.exists(&key).await.unwrap());
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.put_if_absent(&key, stored.clone()).await.unwrap(),
        PutOutcome::Written
    );
    let puts = server.counters.puts.load(Ordering::Relaxed);
    // Idempotent: the second put uploads nothing.
    assert_eq!(
        store.put_if_absent(&key, stored.clone()).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(server.counters.puts.load(Ordering::Relaxed), puts);
    assert_eq!(fetch_block(&store, &id).await.unwrap(), plain);
    // The object sits under the prefix at blocks/<2 hex>/<hex>.
    let hex = id.to_hex();
    let on_disk = tmp
        .path()
        .join("blocks/pre/fix/blocks")
        .join(&hex[..2])
        .join(&hex);
    assert!(on_disk.is_file(), "{}", on_disk.display());

    // Bytes changed behind our back are an error, never data.
    let (_, other) = encode_block(b"something else", 3).unwrap();
    std::fs::write(&on_disk, other).unwrap();
    match fetch_block(&store, &id).await {
        Err(FetchError::Block { .. }) => {}
        other => panic!("corrupt block returned {other:?}"),
    }
    // An object larger than any block could be is refused, not buffered.
    let huge_id = BlockId::of(b"huge");
    let huge_key = ObjectKey::Block(huge_id);
    let h = huge_id.to_hex();
    let huge_path = tmp
        .path()
        .join("blocks/pre/fix/blocks")
        .join(&h[..2])
        .join(&h);
    std::fs::create_dir_all(huge_path.parent().unwrap()).unwrap();
    std::fs::write(
        &huge_path,
        vec![0u8; huge_key.max_stored_bytes() as usize + 10],
    )
    .unwrap();
    let got = store.get(&huge_key).await;
    assert!(
        matches!(got, Err(StoreError::TooLarge { .. })),
        "oversized object accepted: {:?}",
        got.map(|b| b.len())
    );
    // Index blobs are checked against their digest.
    let blob = b"an index blob".to_vec();
    let digest = IndexDigest::of(&blob);
    store
        .put_if_absent(&ObjectKey::Index(digest), blob.clone())
        .await
        .unwrap();
    assert_eq!(fetch_index(&store, &digest).await.unwrap(), blob);
    let wrong = IndexDigest::of(b"other");
    store
        .put_if_absent(&ObjectKey::Index(wrong), blob)
        .await
        .unwrap();
    assert!(matches!(
        fetch_index(&store, &wrong).await,
        Err(FetchError::IndexDigest { .. })
    ));
}

/// Many readers of one block at once: the S3 server sees one GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_fetch_each_block_once_from_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), &["blocks"]).unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(
        S3Store::open("blocks", "", &s3_config(&server.endpoint()))
            .await
            .unwrap(),
    );
    let plain: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
    let (id, stored) = encode_block(&plain, 3).unwrap();
    store
        .put_if_absent(&ObjectKey::Block(id), stored)
        .await
        .unwrap();
    let gets_before = server.counters.gets.load(Ordering::Relaxed);
    let opts = CacheOptions {
        own_blocks: None,
        memory_bytes: 64 << 20,
        disk: Some((tmp.path().join("cache"), 64 << 20)),
        pinned_bytes: u64::MAX,
    };
    let cache = Arc::new(BlockCache::new(store.clone(), &opts).unwrap());
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let cache = cache.clone();
        readers.spawn(async move { cache.get(&id).await.map(|b| b.len()) });
    }
    while let Some(r) = readers.join_next().await {
        assert_eq!(r.unwrap().unwrap(), plain.len());
    }
    assert_eq!(
        server.counters.gets.load(Ordering::Relaxed) - gets_before,
        1
    );
    // After a restart the disk cache answers; S3 is not asked again.
    drop(cache);
    let cache = BlockCache::new(store, &opts).unwrap();
    assert_eq!(cache.get(&id).await.unwrap().len(), plain.len());
    assert_eq!(
        server.counters.gets.load(Ordering::Relaxed) - gets_before,
        1
    );
}

/// Ranged GETs: a span, one longer than the object and one past its end,
/// each answered with exactly those bytes and the object's length; then a
/// part of a block read through the cache alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_gets_read_parts_of_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), &["blocks"]).unwrap();
    let store = S3Store::open("blocks", "p", &s3_config(&server.endpoint()))
        .await
        .unwrap();
    let object: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let key = ObjectKey::Block(BlockId::of(&object));
    store.put_replacing(&key, object.clone()).await.unwrap();
    let n = object.len() as u64;
    for (range, want) in [
        (1000..1500, 1000..1500),
        (0..1 << 20, 0..n as usize),
        (n - 10..n + 90, n as usize - 10..n as usize),
    ] {
        let bytes_before = server.counters.get_bytes.load(Ordering::Relaxed);
        let got = store.get_range(&key, range.clone()).await.unwrap();
        assert_eq!(got.object_len, n, "{range:?}");
        assert_eq!(got.start as usize, want.start, "{range:?}");
        assert_eq!(got.bytes, &object[want.clone()], "{range:?}");
        let sent = server.counters.get_bytes.load(Ordering::Relaxed) - bytes_before;
        assert_eq!(
            sent,
            want.len() as u64,
            "{range:?}: the server sent {sent} bytes"
        );
    }

    // A block stored in parts, one part read through the cache.
    let plain: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let id = BlockId::of(&plain);
    let size = PartSize::DEFAULT;
    let stored = seekable::encode(
        &mut Compressor::new(3).unwrap(),
        &plain,
        size.get() as usize,
    )
    .unwrap();
    store
        .put_replacing(&ObjectKey::Block(id), stored.clone())
        .await
        .unwrap();
    let digests = part_digests(&plain, size);
    let cache = BlockCache::new(Arc::new(store), &CacheOptions::in_memory(64 << 20)).unwrap();
    let (gets, bytes) = (
        server.counters.gets.load(Ordering::Relaxed),
        server.counters.get_bytes.load(Ordering::Relaxed),
    );
    let got = cache
        .get_range(&id, 500_000..504_096, PartDigests::new(size, 0, &digests))
        .await
        .unwrap();
    let joined: Vec<u8> = got.iter().flat_map(|p| p.as_slice().to_vec()).collect();
    assert_eq!(joined, &plain[500_000..504_096]);
    let sent = server.counters.get_bytes.load(Ordering::Relaxed) - bytes;
    assert_eq!(
        server.counters.gets.load(Ordering::Relaxed) - gets,
        2,
        "the table, then the part"
    );
    assert!(
        sent < size.get() as u64 + 2048,
        "{sent} bytes for one part of {}",
        stored.len()
    );
}

#[tokio::test]
async fn bad_credentials_and_dead_endpoints_fail_fast_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(tmp.path(), &["blocks"]).unwrap();
    let mut cfg = s3_config(&server.endpoint());
    cfg.secret_access_key = Some("wrong".into());
    let store = S3Store::open("blocks", "", &cfg).await.unwrap();
    let err = store
        .get(&ObjectKey::Block(BlockId::of(b"x")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("s3://blocks") && err.contains("GET"), "{err}");

    // Nothing listens on this port: bounded retries, then an error.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let store = S3Store::open(
        "blocks",
        "",
        &s3_config(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = store
        .exists(&ObjectKey::Block(BlockId::of(b"x")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("HEAD"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_into_s3_and_read_everything_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), &["images"]).unwrap();
    let layers = awkward_layers();
    let src = tmp.path().join("src");
    write_image(&src, "v1", &layers).unwrap();
    let dst = tmp.path().join("dst");
    let args = |tag: &str| {
        vec![
            "convert".to_string(),
            format!("oci:{}:v1", src.display()),
            format!("oci:{}:{tag}", dst.display()),
            "--store".into(),
            "s3://images/slayer".into(),
            "--s3-endpoint".into(),
            server.endpoint(),
        ]
    };
    let run = |tag: &str| {
        let a = args(tag);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        slayerfs(
            &refs,
            &server
                .env()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>(),
        )
    };
    let out = assert_ok(&run("one"));
    let (written, _) = blocks_line(&out);
    assert!(written > 0, "{out}");
    let puts = server.counters.puts.load(Ordering::Relaxed);
    assert_eq!(
        puts,
        written + 3,
        "one PUT per new block plus the three indexes"
    );

    let store: Arc<dyn BlockStore> = Arc::new(
        S3Store::open("images", "slayer", &s3_config(&server.endpoint()))
            .await
            .unwrap(),
    );
    let img =
        ConvertedImage::open(&ImageRef::parse(&format!("oci:{}:one", dst.display())).unwrap())
            .unwrap();
    for (desc, layer) in img.manifest.layers().iter().zip(&layers) {
        let index = img.layer_index(desc).unwrap();
        assert_layer_matches(&index, layer, &store).await;
    }

    // Again: no block is uploaded twice.
    let again = assert_ok(&run("two"));
    assert_eq!(blocks_line(&again), (0, written), "{again}");
    assert_eq!(
        server.counters.puts.load(Ordering::Relaxed),
        puts,
        "a second conversion uploaded something"
    );
}

#[test]
fn convert_to_an_unreachable_s3_fails_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_image(&src, "v1", &awkward_layers()[1..2]).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[store.s3]\nmax_attempts = 2\nconnect_timeout_ms = 300\ninitial_backoff_ms = 10\n",
    )
    .unwrap();
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "k".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "s".to_string()),
    ];
    let started = Instant::now();
    let o = slayerfs(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "convert",
            &format!("oci:{}:v1", src.display()),
            &format!("oci:{}/dst:v1", tmp.path().display()),
            "--store",
            "s3://images",
            "--s3-endpoint",
            &endpoint,
        ],
        &env,
    );
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("s3://images"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!tmp.path().join("dst").exists());
}

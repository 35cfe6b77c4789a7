//! A trace's prefetch plan over a real converted layer: small files read
//! whole share a block they read little of, so only their parts are
//! planned (one range where they lie side by side); a file read only in
//! part is read ahead past its range, so its block comes whole; a block a
//! trace reads most of comes whole; the budget bounds the plan.

use std::sync::Arc;

use slayerfs_chunkstore::{BlockStore, LocalStore};
use slayerfs_layerfs::build::path::LayerPath;
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_layerfs::store::merged::MergedView;
use slayerfs_layerfs::test_support::{convert_and_load, noise, tar_of};
use slayerfs_layerfs::trace::{blocks_to_fetch, Trace, TracedFile};
use slayerfs_layerfs::BLOCK_SIZE;

/// `path` read at bytes `range`.
fn read(path: &str, range: std::ops::Range<u64>) -> TracedFile {
    TracedFile {
        path: LayerPath::parse(path.as_bytes()).unwrap(),
        ranges: vec![range],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_planned_as_parts_and_partly_read_files_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&dir.path().join("store")).unwrap());
    let db = Arc::new(LayerDb::open(&dir.path().join("db")).unwrap());
    // a, b, c (10 KiB each) share a block; big (6 MiB) has two of its own.
    let (a, b, c, big) = (
        noise(10 << 10, 1),
        noise(10 << 10, 2),
        noise(10 << 10, 3),
        noise(6 << 20, 4),
    );
    let layer = convert_and_load(
        tar_of(&[("a", &a), ("b", &b), ("c", &c), ("big", &big)]),
        &store,
        &db,
    )
    .await;
    let view = MergedView::open(&db, &[layer]).unwrap();
    let all = u64::MAX;

    // a and b whole: two neighbouring ranges of the first block, one fetch.
    let trace = Trace {
        files: vec![read("a", 0..10 << 10), read("b", 0..10 << 10)],
    };
    let plan = blocks_to_fetch(&view, &trace, all).unwrap();
    assert!(plan.blocks.is_empty(), "{plan:?}");
    assert_eq!(plan.parts.len(), 1, "{plan:?}");
    assert_eq!(
        plan.parts[0].range.end - plan.parts[0].range.start,
        20 << 10
    );
    assert!(plan.parts[0].digests().is_some());
    assert_eq!((plan.files, plan.missing), (2, 0));

    // c whole, and big only at its start: c's part, and big's first block
    // whole (a reader of big reads ahead past what it read).
    let trace = Trace {
        files: vec![
            read("c", 0..10 << 10),
            read("big", 0..128 << 10),
            read("nowhere", 0..1),
        ],
    };
    let plan = blocks_to_fetch(&view, &trace, all).unwrap();
    assert_eq!(plan.blocks.len(), 1, "{plan:?}");
    assert_eq!(plan.parts.len(), 1, "{plan:?}");
    assert_eq!(plan.parts[0].range, 20 << 10..30 << 10);
    assert_ne!(plan.parts[0].id, plan.blocks[0]);
    assert_eq!((plan.files, plan.missing), (2, 1));

    // big read whole: most of both blocks; both whole. A budget of one
    // block stops the plan after the first.
    let trace = Trace {
        files: vec![read("big", 0..6 << 20)],
    };
    assert_eq!(blocks_to_fetch(&view, &trace, all).unwrap().blocks.len(), 2);
    let one = blocks_to_fetch(&view, &trace, BLOCK_SIZE as u64).unwrap();
    assert_eq!((one.blocks.len(), one.parts.len()), (1, 0));
}

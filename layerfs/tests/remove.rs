//! Removing layers and merged views from the layer store: every record of
//! the removed one goes, the others still read, and the blocks in use are
//! exactly those of the layers left. Blocks come from a real local store.

use std::collections::HashSet;
use std::sync::Arc;

use slayerfs_chunkstore::{BlockId, BlockStore, LocalStore, ObjectKey};
use slayerfs_layerfs::store::layers::{Layer, LayerDb};
use slayerfs_layerfs::store::merged::{chain_key, chains, remove_chain, MergedView};
use slayerfs_layerfs::test_support::{convert_and_load, tar_of};
use slayerfs_layerfs::Ino;

/// A tar of regular files with the given contents.
async fn load(db: &LayerDb, store: &Arc<dyn BlockStore>, tar: Vec<u8>) -> Layer {
    convert_and_load(tar, store, db).await
}

fn noise(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_layers_and_views_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(&dir.path().join("store")).unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(local.clone());
    let db = Arc::new(LayerDb::open(&dir.path().join("db")).unwrap());

    let shared = noise(5 << 20, 1);
    let a = load(
        &db,
        &store,
        tar_of(&[("shared", &shared), ("a-only", &noise(1 << 20, 2))]),
    )
    .await;
    let b = load(
        &db,
        &store,
        tar_of(&[("shared", &shared), ("b-only", &noise(1 << 20, 3))]),
    )
    .await;
    let both = MergedView::open(&db, &[a.clone(), b.clone()]).unwrap();
    let only_a = MergedView::open(&db, std::slice::from_ref(&a)).unwrap();
    assert!(both.lookup(Ino::ROOT, b"b-only").unwrap().is_some());
    assert_eq!(chains(&db).unwrap().len(), 2);

    let mut in_use = HashSet::new();
    db.blocks_in_use(&mut in_use).unwrap();
    let stored: HashSet<BlockId> = local
        .list()
        .unwrap()
        .into_iter()
        .filter_map(|k| match k {
            ObjectKey::Block(id) => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(in_use, stored, "every stored block is some layer's");

    // The view over both and layer b go.
    assert!(remove_chain(&db, &chain_key(&[a.clone(), b.clone()])).unwrap());
    assert!(!remove_chain(&db, &chain_key(&[a.clone(), b.clone()])).unwrap());
    let b_digest = b.record.index_digest.parse().unwrap();
    assert!(db.remove_layer(&b_digest).unwrap());
    assert!(!db.remove_layer(&b_digest).unwrap());
    assert_eq!(db.layer(&b_digest).unwrap(), None);
    assert_eq!(db.layers().unwrap(), vec![a.clone()]);
    assert!(db.usage(b.id).is_err(), "b's records are gone");
    assert!(db.children(b.id, Ino::ROOT).is_err());
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("db/tables"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "a's records and the view over a: {files:?}");
    assert!(files.contains(&format!("layer-{}", a.id.0)), "{files:?}");
    let left = chains(&db).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].layers, vec![a.id]);

    // What is left reads as before; the blocks in use are a's: the shared
    // file's and a-only's, not b-only's.
    let ino = only_a.lookup(Ino::ROOT, b"a-only").unwrap().unwrap();
    assert_eq!(only_a.attrs(ino).unwrap().0.size, 1 << 20);
    assert_eq!(db.usage(a.id).unwrap(), (3, 6 << 20));
    let mut after = HashSet::new();
    db.blocks_in_use(&mut after).unwrap();
    assert!(after.len() < in_use.len() && after.is_subset(&in_use));

    // Reopened, a view over both is built afresh and sees b's files again
    // once b is loaded again.
    drop((both, only_a));
    let b2 = load(
        &db,
        &store,
        tar_of(&[
            ("shared", &noise(5 << 20, 1)),
            ("b-only", &noise(1 << 20, 3)),
        ]),
    )
    .await;
    assert_ne!(b2.id, b.id, "a reload gets a fresh id");
    let again = MergedView::open(&db, &[a, b2]).unwrap();
    assert!(again.lookup(Ino::ROOT, b"b-only").unwrap().is_some());
}

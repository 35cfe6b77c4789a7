//! A 128-layer chain: the merged view resolves every name as OCI layer
//! semantics say, and a mount of the 128-layer image shows what the
//! kernel's overlayfs shows over the same layers. (That a lookup costs the same on 128 layers as on one is by
//! construction — one dentry read in the materialized merge — and is for the
//! filesystem benchmark to measure, not this test.)

mod common;

use std::sync::Arc;

use slayerfs_layerfs::test_support::convert_and_load;

use common::{assert_ok, convert};
use slayerfs_chunkstore::{BlockStore, LocalStore};
use slayerfs_integration::fixtures::{layer_tar, write_image, Compression, FEntry, FKind, FLayer};
use slayerfs_integration::mount::SlayerMount;
use slayerfs_integration::tree::{assert_same_trees, extract_for_overlay, mount_overlay, snapshot};
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_layerfs::store::merged::MergedView;
use slayerfs_layerfs::Ino;

const LAYERS: usize = 128;

/// Layer i: adds `f/<i>`, rewrites `shared` (mode encodes i), whites out
/// `f/<i-1>` when i is even, and at i = 64 makes `d` opaque over the
/// `d/below-<j>` files of the layers before.
fn layer(i: usize) -> FLayer {
    let mut entries = vec![
        FEntry::new("f", FKind::Dir),
        FEntry::new(
            format!("f/{i}"),
            FKind::File(format!("file {i}").into_bytes()),
        ),
        FEntry::new("shared", FKind::File(format!("layer {i}").into_bytes()))
            .mode(0o600 + (i as u32 % 64)),
    ];
    if i.is_multiple_of(2) && i > 0 {
        entries.push(FEntry::new(format!("f/{}", i - 1), FKind::Whiteout));
    }
    if i < 64 {
        entries.push(FEntry::new(
            format!("d/below-{i}"),
            FKind::File(b"x".to_vec()),
        ));
    } else if i == 64 {
        entries.push(FEntry::new("d", FKind::Opaque));
        entries.push(FEntry::new("d/kept", FKind::File(b"k".to_vec())));
    }
    FLayer {
        entries,
        compression: Compression::None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_128_layer_chain_resolves_like_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&tmp.path().join("store")).unwrap());
    let db = std::sync::Arc::new(LayerDb::open(&tmp.path().join("db")).unwrap());
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        layers.push(convert_and_load(layer_tar(&layer(i)), &store, &db).await);
    }
    let view = MergedView::open(&db, &layers).unwrap();
    let f = view.lookup(Ino::ROOT, b"f").unwrap().unwrap();
    for i in 0..LAYERS {
        let whited_out = i % 2 == 1 && i + 1 < LAYERS;
        let found = view.lookup(f, i.to_string().as_bytes()).unwrap();
        assert_eq!(found.is_some(), !whited_out, "f/{i}");
    }
    let shared = view.lookup(Ino::ROOT, b"shared").unwrap().unwrap();
    let (attrs, _) = view.attrs(shared).unwrap();
    assert_eq!(
        attrs.mode,
        0o600 + ((LAYERS as u32 - 1) % 64),
        "the top layer's copy wins"
    );
    let sources = view.sources(shared).unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].layer, layers[LAYERS - 1].id);
    let d = view.lookup(Ino::ROOT, b"d").unwrap().unwrap();
    let names: Vec<Vec<u8>> = view
        .children(d)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        vec![b"kept".to_vec()],
        "an opaque directory hides every lower child"
    );
    // `f` merges all 128 layers' directories.
    assert_eq!(view.sources(f).unwrap().len(), LAYERS);
    assert_eq!(view.children(f).unwrap().len(), LAYERS / 2 + 1);

    // A second view of the same chain is the same materialized merge.
    let again = MergedView::open(&db, &layers).unwrap();
    assert_eq!(again.chain(), view.chain());
    // Another chain (its bottom layer alone) is a merge of its own.
    let one = MergedView::open(&db, &layers[..1]).unwrap();
    assert!(one.lookup(Ino::ROOT, b"shared").unwrap().is_some());
    assert_ne!(one.chain(), view.chain());
}

#[test]
fn a_128_layer_image_mounts_and_looks_like_overlayfs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers: Vec<FLayer> = (0..LAYERS).map(layer).collect();
    write_image(&root.join("src"), "v1", &layers).unwrap();
    let store = root.join("store");
    let image = format!("oci:{}:v1", root.join("conv").display());
    assert_ok(&convert(
        &format!("oci:{}:v1", root.join("src").display()),
        &image,
        store.to_str().unwrap(),
    ));
    let m = SlayerMount::start(
        &image,
        &root.join("mnt"),
        store.to_str().unwrap(),
        &root.join("state"),
        &[],
    )
    .unwrap();
    let mnt = &m.mountpoint;
    for i in 0..LAYERS {
        let whited_out = i % 2 == 1 && i + 1 < LAYERS;
        let p = mnt.join(format!("f/{i}"));
        assert_eq!(p.exists(), !whited_out, "f/{i}");
        if !whited_out {
            assert_eq!(std::fs::read(&p).unwrap(), format!("file {i}").into_bytes());
        }
    }
    assert_eq!(
        std::fs::read(mnt.join("shared")).unwrap(),
        format!("layer {}", LAYERS - 1).into_bytes()
    );
    let d: Vec<_> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(d, vec![std::ffi::OsString::from("kept")]);

    // The kernel's overlayfs over the same 128 layers shows the same tree
    // (short layer paths: the mount options must fit in a page).
    let mut lowers = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dir = root.join(format!("{i}"));
        extract_for_overlay(&layer_tar(l), &dir, root, &lowers);
        lowers.push(dir);
    }
    let _k = mount_overlay(&lowers, None, &root.join("k"));
    let strip = |t: std::collections::BTreeMap<Vec<u8>, slayerfs_integration::tree::Entry>| {
        t.into_iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, mut e)| {
                if e.kind == 'd' {
                    e.mtime = None;
                }
                (p, e)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let ours = strip(snapshot(mnt));
    let kernel = strip(snapshot(&root.join("k")));
    assert_same_trees(&ours, &kernel);
    assert!(ours.len() > LAYERS / 2);
    m.unmount().unwrap();
}

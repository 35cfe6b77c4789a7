//! The merged view of a layer chain against the kernel's own overlayfs over
//! the same layers, entry by entry: names, types, modes, owners, sizes,
//! contents, symlink targets, devices, user xattrs, hardlink groups, mtimes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use slayerfs_chunkstore::{BlockCache, BlockStore, CacheOptions, LocalStore};
use slayerfs_integration::fixtures::{awkward_layers, compress, layer_tar};
use slayerfs_integration::tree::{
    assert_same_trees, extract_for_overlay, mount_overlay, sha, snapshot, with_link_groups, Entry,
};
use slayerfs_layerfs::store::layers::LayerDb;
use slayerfs_layerfs::store::merged::MergedView;
use slayerfs_layerfs::test_support::convert_and_load;
use slayerfs_layerfs::test_support::read_range;
use slayerfs_layerfs::Ino;
use slayerfs_proto::index::InodeKind;

async fn merged_tree(
    view: &MergedView,
    db: &LayerDb,
    cache: &BlockCache,
) -> BTreeMap<Vec<u8>, Entry> {
    let mut out: BTreeMap<Vec<u8>, (Entry, Ino)> = BTreeMap::new();
    let mut stack = vec![(Ino::ROOT, Vec::<u8>::new())];
    while let Some((ino, rel)) = stack.pop() {
        let (inode, _) = view.attrs(ino).unwrap();
        let top = view.sources(ino).unwrap()[0];
        let (top_inode, _) = db.inode(top.layer, top.ino).unwrap().unwrap();
        let kind = match InodeKind::from_i32(inode.kind).unwrap() {
            InodeKind::Directory => 'd',
            InodeKind::Regular => '-',
            InodeKind::Symlink => 'l',
            InodeKind::CharDevice => 'c',
            InodeKind::BlockDevice => 'b',
            _ => 'p',
        };
        let content = if kind == '-' {
            let data = read_range(
                inode.size,
                0,
                inode.size as u32,
                |c| Ok(db.chunk_slices(top.layer, top.ino, c)?),
                cache,
                None,
            )
            .await
            .unwrap();
            Some(sha(&data))
        } else {
            None
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = inode
            .xattrs
            .iter()
            .filter(|x| x.name.starts_with(b"user."))
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        xattrs.sort();
        let entry = Entry {
            kind,
            mode: inode.mode,
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            content,
            target: (kind == 'l').then(|| inode.symlink_target.clone()),
            rdev: matches!(kind, 'c' | 'b').then_some((inode.rdev_major, inode.rdev_minor)),
            // A directory that the top layer only implies was created by
            // tar at extraction time on the kernel side: no mtime to compare.
            mtime: (!top_inode.implicit).then_some((inode.mtime_sec, inode.mtime_nsec)),
            xattrs,
            link_group: Vec::new(),
        };
        if kind == 'd' {
            for (name, child) in view.children(ino).unwrap() {
                let mut r = rel.clone();
                r.push(b'/');
                r.extend_from_slice(&name);
                stack.push((child, r));
            }
        }
        out.insert(rel, (entry, ino));
    }
    with_link_groups(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_view_equals_kernel_overlayfs() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = awkward_layers();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&tmp.path().join("store")).unwrap());
    let db = std::sync::Arc::new(LayerDb::open(&tmp.path().join("db")).unwrap());
    let mut loaded = Vec::new();
    let mut lowerdirs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let tar = layer_tar(layer);
        loaded.push(convert_and_load(compress(&tar, layer.compression), &store, &db).await);
        let dir = tmp.path().join(format!("l{i}"));
        extract_for_overlay(&tar, &dir, tmp.path(), &lowerdirs);
        lowerdirs.push(dir);
    }
    let view = MergedView::open(&db, &loaded).unwrap();
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            own_blocks: None,
            memory_bytes: 64 << 20,
            disk: None,
            pinned_bytes: u64::MAX,
        },
    )
    .unwrap();
    let ours = merged_tree(&view, &db, &cache).await;

    let mnt = tmp.path().join("mnt");
    let _unmount = mount_overlay(&lowerdirs, None, &mnt);
    let mut kernel = snapshot(&mnt);
    // Merged directories' mtimes are only compared where our view has one.
    for (p, e) in kernel.iter_mut() {
        if ours.get(p).is_some_and(|o| o.mtime.is_none()) {
            e.mtime = None;
        }
    }
    // The root's attributes are the extraction directory's on the kernel side.
    kernel.remove(&Vec::new());
    let mut ours = ours;
    ours.remove(&Vec::new());

    assert_same_trees(&ours, &kernel);
    assert!(
        kernel.len() > 30,
        "the comparison covered {} entries",
        kernel.len()
    );
    // Spot checks that the fixture exercises what it should.
    assert!(!ours.contains_key(b"/etc/hosts".as_slice()), "whiteout");
    assert!(
        !ours.contains_key(b"/opq/old-a".as_slice()),
        "opaque directory"
    );
    assert_eq!(ours[&b"/was-dir".to_vec()].kind, '-');
    assert_eq!(
        ours[&b"/links/third".to_vec()].link_group,
        b"/links/second".to_vec()
    );
}

//! The reference users compare with: containerd's own unpack. Test images
//! are imported into a private containerd (the Debian package) with its
//! overlayfs snapshotter, the top snapshot is viewed and mounted, and our
//! mount of the converted image must show the same tree entry by entry:
//! type, mode, owner, size, content, link target, device numbers, xattrs
//! (every namespace the kernel shows), hardlink groups and mtimes — except
//! the mtimes of directories containerd created itself, which are the time
//! of the unpack. Layers containerd refuses, we refuse too.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use slayerfs_integration::daemon::{self, sh, Proc};
use slayerfs_integration::fixtures::{
    awkward_layers, layer_blob, raw_tar, unpack_order_layers, write_image_blobs, Compression,
};
use slayerfs_integration::mount::SlayerMount;
use slayerfs_integration::tree::{assert_same_trees, snapshot_with, Entry, Unmount};
use slayerfs_snapshotter::image::chain_ids;

mod common;

/// Every xattr but overlayfs's own (which it never shows anyway).
fn shown_xattr(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.overlay.")
}

fn ctr(dir: &Path, args: &[&str]) -> (bool, String) {
    daemon::ctr_in(dir, None, args)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Containerd {
    dir: std::path::PathBuf,
    _proc: Proc,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        // No proxy snapshotter is used here: only containerd's overlayfs.
        let proc = daemon::start_containerd(dir, &dir.join("unused.sock"), "");
        Containerd {
            dir: dir.to_path_buf(),
            _proc: proc,
        }
    }

    /// Imports the OCI layout at `layout` (tag `v1`) with the overlayfs
    /// snapshotter, whose top snapshot is `chain`; `Err` with ctr's words
    /// if containerd refuses it.
    fn import(&self, layout: &Path, name: &str, chain: &str) -> Result<(), String> {
        let tar = self.dir.join(format!("{name}.tar"));
        sh(
            &format!("tar -C {} -cf {} .", layout.display(), tar.display()),
            &self.dir,
            &[],
        );
        let image = format!("ref/{name}:v1");
        let (ok, text) = ctr(
            &self.dir,
            &[
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                "--index-name",
                &image,
                tar.to_str().unwrap(),
            ],
        );
        if !ok {
            return Err(text);
        }
        // The unpack made the image's top snapshot.
        let (ok, info) = ctr(
            &self.dir,
            &["snapshots", "--snapshotter", "overlayfs", "info", chain],
        );
        if ok {
            Ok(())
        } else {
            Err(format!("{text}{info}"))
        }
    }

    /// Mounts a view of the committed snapshot `chain` at `mnt`. The view
    /// and its mount command come from one call: a view holds no lease,
    /// and containerd's garbage collection (after an import) may remove it
    /// before a second call asks for its mounts (seen once).
    fn mount_view(&self, chain: &str, key: &str, mnt: &Path) -> Unmount {
        std::fs::create_dir_all(mnt).unwrap();
        let (ok, cmd) = ctr(
            &self.dir,
            &[
                "snapshots",
                "--snapshotter",
                "overlayfs",
                "view",
                "--target",
                mnt.to_str().unwrap(),
                key,
                chain,
            ],
        );
        assert!(ok && cmd.starts_with("mount "), "view of {chain}: {cmd}");
        sh(&cmd, &self.dir, &[]);
        Unmount(mnt.to_path_buf())
    }
}

/// Our tree and containerd's for the image `layers`, with the mtimes of
/// directories containerd made at unpack time left out on both sides.
fn both_trees(
    root: &Path,
    containerd: &Containerd,
    name: &str,
    layers: &[(Vec<u8>, Compression)],
) -> (BTreeMap<Vec<u8>, Entry>, BTreeMap<Vec<u8>, Entry>) {
    let layout = root.join(name);
    let img = write_image_blobs(&layout, "v1", layers).unwrap();
    let unpack_start = now() - 1;
    let chain = chain_ids(&img.diff_ids).pop().unwrap();
    containerd
        .import(&layout, name, &chain)
        .unwrap_or_else(|e| panic!("containerd refused {name}: {e}"));
    let rmnt = root.join(format!("{name}-containerd"));
    let _ref_mount = containerd.mount_view(&chain, &format!("{name}-view"), &rmnt);
    let mut reference = snapshot_with(&rmnt, shown_xattr);

    let store = root.join("store");
    let conv = root.join(format!("{name}-conv"));
    common::assert_ok(&common::convert(
        &format!("oci:{}:v1", layout.display()),
        &format!("oci:{}:v1", conv.display()),
        store.to_str().unwrap(),
    ));
    let mnt = root.join(format!("{name}-ours"));
    let m = SlayerMount::start(
        &format!("oci:{}:v1", conv.display()),
        &mnt,
        store.to_str().unwrap(),
        &root.join(format!("{name}-state")),
        &[],
    )
    .unwrap();
    let mut ours = snapshot_with(&mnt, shown_xattr);
    m.unmount().unwrap();

    for (path, e) in reference.iter_mut() {
        if e.kind == 'd' && e.mtime.is_some_and(|(s, _)| s >= unpack_start) {
            e.mtime = None;
            if let Some(o) = ours.get_mut(path) {
                o.mtime = None;
            }
        }
    }
    (ours, reference)
}

#[test]
fn converted_images_look_as_containerd_unpacks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let containerd = Containerd::start(&root.join("containerd"));

    let awkward: Vec<(Vec<u8>, Compression)> = awkward_layers().iter().map(layer_blob).collect();
    let (ours, reference) = both_trees(root, &containerd, "awkward", &awkward);
    assert_same_trees(&ours, &reference);
    assert!(reference.len() > 30, "{} entries", reference.len());
    // The comparison saw what it is about: xattrs beyond user.*, and a time
    // before 1970 as the epoch.
    let xattrs = &reference[&b"/data/xattrs".to_vec()].xattrs;
    assert!(xattrs.iter().any(|(n, _)| n == b"security.capability"));
    assert_eq!(reference[&b"/old-mtime".to_vec()].mtime, Some((0, 0)));

    let (ours, reference) = both_trees(root, &containerd, "order", &unpack_order_layers());
    assert_same_trees(&ours, &reference);
    let at = |p: &str| &reference[&p.as_bytes().to_vec()];
    // A hardlink's header applies to both names.
    let (t, l) = (at("/h/target"), at("/h/link"));
    assert_eq!((t.mode, t.uid, t.gid), (0o600, 2, 3));
    assert_eq!(t.mtime, Some((1_650_000_000, 5)));
    assert_eq!(t.link_group, l.link_group);
    assert_eq!(
        t.xattrs,
        vec![
            (b"user.both".to_vec(), b"link".to_vec()),
            (b"user.l".to_vec(), b"2".to_vec()),
            (b"user.t".to_vec(), b"1".to_vec()),
        ]
    );
    // A directory described twice: the later header, xattrs of both.
    assert_eq!(at("/twice").mode, 0o750);
    assert_eq!(at("/twice").xattrs.len(), 2);
    // A replaced file's other name keeps the old inode.
    assert_ne!(at("/rep").content, at("/rep-link").content);
    // `.wh.x` then `x/`: the lower `x` still shows through.
    assert!(reference.contains_key(b"/x/lower-child".as_slice()));
    assert!(reference.contains_key(b"/x/new".as_slice()));
    // An opaque marker hides the lower entries only, whatever the order.
    assert!(
        reference.contains_key(b"/o/a".as_slice()) && reference.contains_key(b"/o/b".as_slice())
    );
    assert!(!reference.contains_key(b"/o/old".as_slice()));
    // Parents through symlinks of the layer; a lower symlink replaced.
    assert!(reference.contains_key(b"/real/via-link".as_slice()));
    assert!(reference.contains_key(b"/made/by/link/f".as_slice()));
    assert_eq!(at("/lowlink").kind, 'd');
    // An implied parent shows the lower directory's mode, owner, xattrs.
    assert_eq!((at("/base").mode, at("/base").uid), (0o700, 5));
    // Names from outside the root land inside it; the root entry is ignored.
    assert!(reference.contains_key(b"/abs-entry".as_slice()));
    assert!(reference.contains_key(b"/climb".as_slice()));
    assert_eq!(reference[&Vec::new()].mode, 0o755);
    // Namespaces containerd drops, and out-of-range times.
    assert_eq!(at("/xs").xattrs.len(), 2, "{:?}", at("/xs").xattrs);
    assert!(at("/sym-x").xattrs.is_empty() && at("/fifo-x").xattrs.is_empty());
    assert_eq!(at("/neg").mtime, Some((0, 0)));
    assert_eq!(at("/future").mtime, Some((0, 0)));
    assert_eq!(at("/frac").mtime, Some((1_700_000_000, 123_456_789)));
    // A 0/0 character device is a whiteout, of the lower file and of the
    // layer's own.
    assert!(!reference.contains_key(b"/gone-by-device".as_slice()));
    assert!(!reference.contains_key(b"/own-device-over-file".as_slice()));
}

/// What containerd's overlayfs unpack refuses, conversion refuses too, with
/// a message naming the entry. (Over a parent layer: containerd unpacks a
/// bottom layer onto a plain directory, where a whiteout removes what the
/// layer wrote before it.)
#[test]
fn layers_containerd_refuses_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let containerd = Containerd::start(&root.join("containerd"));
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "whiteout-after-entry",
            raw_tar(&[
                (b"x/", tar::EntryType::Directory, b"", b""),
                (b".wh.x", tar::EntryType::Regular, b"", b""),
            ]),
            "`.wh.x`: whiteout of `x`, which this layer already has",
            "file exists",
        ),
        (
            "entry-under-whiteout",
            raw_tar(&[
                (b".wh.x", tar::EntryType::Regular, b"", b""),
                (b"x/f", tar::EntryType::Regular, b"f", b""),
            ]),
            "`x/f`: `x` is not a directory",
            "not a directory",
        ),
        (
            "link-over-its-target",
            raw_tar(&[
                (b"f", tar::EntryType::Regular, b"f", b""),
                (b"f", tar::EntryType::Link, b"", b"f"),
            ]),
            "`f`: hardlink target `f` does not exist in this layer",
            "no such file or directory",
        ),
    ];
    for (name, tar, expect, containerd_says) in cases {
        let layout = root.join(name);
        // A base layer of the case's own: containerd may be collecting the
        // base of a refused image while the next one unpacks.
        let base = raw_tar(&[(b"base", tar::EntryType::Regular, name.as_bytes(), b"")]);
        let img = write_image_blobs(
            &layout,
            "v1",
            &[(base, Compression::None), (tar, Compression::None)],
        )
        .unwrap();
        let chain = chain_ids(&img.diff_ids).pop().unwrap();
        let refused = containerd.import(&layout, name, &chain);
        eprintln!("{name}: containerd says {refused:?}");
        let why = refused.expect_err("containerd accepted it");
        assert!(why.contains(containerd_says), "{name}: {why}");
        let out = common::convert(
            &format!("oci:{}:v1", layout.display()),
            &format!("oci:{}:v1", root.join(format!("{name}-conv")).display()),
            root.join("store").to_str().unwrap(),
        );
        let (_, stderr) = common::text(&out);
        assert!(!out.status.success(), "{name}: converted");
        assert!(
            stderr.contains(expect),
            "{name}: `{stderr}` lacks `{expect}`"
        );
    }
}

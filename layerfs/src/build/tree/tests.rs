//! The tree's rules, one by one.
use super::*;

fn lp(s: &str) -> LayerPath {
    LayerPath::parse(s.as_bytes()).unwrap()
}

fn attrs(mode: u32) -> Attrs {
    Attrs {
        mode,
        ..Attrs::implicit_dir()
    }
}

fn xattrs(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn replace_merge_and_whiteout_rules() {
    let mut t = LayerTree::new();
    let f = t
        .insert(&lp("a/b/f"), NodeKind::Regular, attrs(0o644))
        .unwrap();
    let a = t.lookup(&lp("a")).unwrap();
    assert!(t.node(a).implicit);
    // A directory entry over an implicit one merges and keeps children.
    t.insert(&lp("a"), NodeKind::Directory, attrs(0o700))
        .unwrap();
    assert_eq!(t.lookup(&lp("a/b/f")), Some(f));
    assert!(!t.node(a).implicit);
    assert_eq!(t.node(a).attrs.mode, 0o700);
    // A file replacing a directory drops its subtree.
    t.insert(&lp("a/b"), NodeKind::Regular, attrs(0o600))
        .unwrap();
    assert_eq!(t.lookup(&lp("a/b/f")), None);
    assert_eq!(
        t.insert(&lp("a/b/g"), NodeKind::Regular, attrs(0o600)),
        Err(TreeError::NotADirectory(lp("a/b")))
    );
    // Hardlinks share the inode; a directory cannot be linked.
    let l = t.hardlink(&lp("c"), &lp("a/b"), attrs(0o600)).unwrap();
    assert_eq!(Some(l), t.lookup(&lp("a/b")));
    assert!(matches!(
        t.hardlink(&lp("d"), &lp("nope"), attrs(0)),
        Err(TreeError::MissingLinkTarget(_))
    ));
    assert!(matches!(
        t.hardlink(&lp("d"), &lp("a"), attrs(0)),
        Err(TreeError::LinkToDirectory(_))
    ));
    // Whiteouts: recorded; nothing goes under one; an entry written
    // over one later replaces it and is not opaque.
    t.whiteout(&lp("w"), b"gone").unwrap();
    assert_eq!(
        t.node(t.lookup(&lp("w")).unwrap())
            .children
            .get(&b"gone"[..]),
        Some(&Child::Whiteout)
    );
    assert_eq!(
        t.insert(&lp("w/gone/x"), NodeKind::Regular, attrs(0o644)),
        Err(TreeError::NotADirectory(lp("w/gone")))
    );
    let g = t
        .insert(&lp("w/gone"), NodeKind::Directory, attrs(0o755))
        .unwrap();
    assert!(!t.node(g).opaque);
    // A whiteout of a name this layer has is refused.
    assert_eq!(
        t.whiteout(&lp("w"), b"gone"),
        Err(TreeError::WhiteoutOfOwnEntry(lp("w/gone")))
    );
    assert_eq!(t.whiteout(&lp(""), b"."), Err(TreeError::WhiteoutOfRoot));
    assert!(matches!(
        t.whiteout(&lp(""), b""),
        Err(TreeError::EmptyWhiteout(_))
    ));
    // A 0/0 device replaces the layer's entry with a whiteout.
    t.insert(&lp("dev0"), NodeKind::Regular, attrs(0o644))
        .unwrap();
    t.whiteout_device(&lp("dev0")).unwrap();
    assert_eq!(t.lookup(&lp("dev0")), None);
    // An entry naming the root is ignored.
    assert_eq!(
        t.insert(&lp("./"), NodeKind::Regular, attrs(0)),
        Ok(Ino::ROOT)
    );
    assert_eq!(t.node(Ino::ROOT).attrs, Attrs::implicit_dir());
    // The walk visits each reachable inode once, root first.
    let order = t.walk_order();
    assert_eq!(order[0], Ino::ROOT);
    let mut dedup = order.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), order.len());
}

#[test]
fn later_headers_apply_their_metadata_like_containerd() {
    let mut t = LayerTree::new();
    let mut first = attrs(0o644);
    first.uid = 1;
    first.mtime_sec = 100;
    first.xattrs = xattrs(&[("user.t", "1"), ("user.both", "target")]);
    let f = t.insert(&lp("f"), NodeKind::Regular, first).unwrap();
    let mut link = attrs(0o600);
    link.uid = 2;
    link.gid = 3;
    link.mtime_sec = 200;
    link.xattrs = xattrs(&[("user.l", "2"), ("user.both", "link")]);
    assert_eq!(t.hardlink(&lp("g"), &lp("f"), link).unwrap(), f);
    let a = &t.node(f).attrs;
    assert_eq!((a.mode, a.uid, a.gid, a.mtime_sec), (0o600, 2, 3, 200));
    assert_eq!(
        a.xattrs,
        xattrs(&[("user.both", "link"), ("user.l", "2"), ("user.t", "1")])
    );
    // A directory described twice: the later header wins, xattrs add up.
    let mut d1 = attrs(0o700);
    d1.xattrs = xattrs(&[("user.one", "1")]);
    let d = t.insert(&lp("d"), NodeKind::Directory, d1).unwrap();
    let mut d2 = attrs(0o750);
    d2.mtime_sec = 5;
    d2.xattrs = xattrs(&[("user.two", "2")]);
    assert_eq!(t.insert(&lp("d"), NodeKind::Directory, d2).unwrap(), d);
    let a = &t.node(d).attrs;
    assert_eq!((a.mode, a.mtime_sec), (0o750, 5));
    assert_eq!(a.xattrs, xattrs(&[("user.one", "1"), ("user.two", "2")]));
    // A file replaced: the other name keeps the old inode.
    let r = t.insert(&lp("r"), NodeKind::Regular, attrs(0o644)).unwrap();
    t.hardlink(&lp("r2"), &lp("r"), attrs(0o644)).unwrap();
    let r_new = t.insert(&lp("r"), NodeKind::Regular, attrs(0o644)).unwrap();
    assert_ne!(r, r_new);
    assert_eq!(t.lookup(&lp("r2")), Some(r));
    // What containerd cannot keep is dropped.
    let kept = Attrs {
        xattrs: xattrs(&[
            ("user.a", "1"),
            ("trusted.x", "1"),
            ("security.capability", "1"),
            ("system.other", "1"),
            ("other.ns", "1"),
        ]),
        ..attrs(0)
    };
    assert_eq!(
        kept.clone().kept_for(&NodeKind::Regular).xattrs,
        xattrs(&[("security.capability", "1"), ("user.a", "1")])
    );
    assert_eq!(
        kept.kept_for(&NodeKind::Symlink(b"x".to_vec())).xattrs,
        xattrs(&[("security.capability", "1")])
    );
}

#[test]
fn parents_resolve_through_symlinks_of_the_layer() {
    let mut t = LayerTree::new();
    let real = t
        .insert(&lp("real"), NodeKind::Directory, attrs(0o755))
        .unwrap();
    t.insert(
        &lp("rel"),
        NodeKind::Symlink(b"real".to_vec()),
        attrs(0o777),
    )
    .unwrap();
    t.insert(
        &lp("sub/abs"),
        NodeKind::Symlink(b"/real/../real".to_vec()),
        attrs(0o777),
    )
    .unwrap();
    t.insert(
        &lp("up"),
        NodeKind::Symlink(b"../../../elsewhere".to_vec()),
        attrs(0o777),
    )
    .unwrap();
    let f = t
        .insert(&lp("rel/f"), NodeKind::Regular, attrs(0o644))
        .unwrap();
    assert_eq!(t.lookup(&lp("real/f")), Some(f));
    let g = t
        .insert(&lp("sub/abs/g"), NodeKind::Regular, attrs(0o644))
        .unwrap();
    assert_eq!(t.lookup(&lp("real/g")), Some(g));
    // `..` stops at the root; a target not in the layer is created.
    let h = t
        .insert(&lp("up/h"), NodeKind::Regular, attrs(0o644))
        .unwrap();
    assert_eq!(t.lookup(&lp("elsewhere/h")), Some(h));
    assert!(t.node(t.lookup(&lp("elsewhere")).unwrap()).implicit);
    // A link over its own target, or over a directory holding it, finds
    // no target (containerd removes the name first).
    assert!(matches!(
        t.hardlink(&lp("real/f"), &lp("rel/f"), attrs(0o644)),
        Err(TreeError::MissingLinkTarget(_))
    ));
    assert!(matches!(
        t.hardlink(&lp("real"), &lp("real/f"), attrs(0o644)),
        Err(TreeError::MissingLinkTarget(_))
    ));
    // Links resolve their target's parent the same way.
    assert_eq!(t.hardlink(&lp("k"), &lp("rel/f"), attrs(0o644)), Ok(f));
    assert_eq!(t.lookup(&lp("real")), Some(real));
    // A loop is an error, not a hang.
    t.insert(
        &lp("loop"),
        NodeKind::Symlink(b"loop".to_vec()),
        attrs(0o777),
    )
    .unwrap();
    assert_eq!(
        t.insert(&lp("loop/x"), NodeKind::Regular, attrs(0o644)),
        Err(TreeError::SymlinkLoop(lp("loop")))
    );
}

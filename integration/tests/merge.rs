//! The merged view of a layer chain against the kernel's own overlayfs over
//! the same layers, entry by entry: names, types, modes, owners, sizes,
//! contents, symlink targets, devices, user xattrs, hardlink groups, mtimes.

mod common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::convert_and_load;
use sha2::{Digest, Sha256};
use slayerfs_chunkstore::{BlockCache, BlockStore, CacheOptions, LocalStore};
use slayerfs_integration::fixtures::{awkward_layers, compress, layer_tar};
use slayerfs_layerfs::db::LayerDb;
use slayerfs_layerfs::merge::MergedView;
use slayerfs_layerfs::read::read_range;
use slayerfs_layerfs::Ino;
use slayerfs_proto::index::InodeKind;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: Option<String>,
    target: Option<Vec<u8>>,
    rdev: Option<(u32, u32)>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first path (in byte order) of this entry's hardlink group.
    link_group: Vec<u8>,
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn user_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffers are valid for the lengths given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(len >= 0, "getxattr {}", path.display());
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extracts a layer the way the kernel's overlayfs wants it: `.wh.NAME` as a
/// 0/0 character device, `.wh..wh..opq` as `trusted.overlay.opaque=y`, with
/// the touched directories' mtimes put back.
fn extract_for_overlay(tar: &[u8], dir: &Path, scratch: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let tar_path = scratch.join("layer.tar");
    std::fs::write(&tar_path, tar).unwrap();
    run(Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--same-permissions",
            "-xf",
        ])
        .arg(&tar_path)
        .arg("-C")
        .arg(dir));
    let mut whiteouts = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name();
            if name.as_bytes().starts_with(b".wh.") {
                whiteouts.push(e.path());
            } else if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    for w in whiteouts {
        let parent = w.parent().unwrap().to_path_buf();
        let meta = std::fs::symlink_metadata(&parent).unwrap();
        std::fs::remove_file(&w).unwrap();
        let name = w.file_name().unwrap().as_bytes();
        if name == b".wh..wh..opq" {
            let p = CString::new(parent.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid C strings and value buffer.
            let rc = unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    c"trusted.overlay.opaque".as_ptr(),
                    b"y".as_ptr().cast(),
                    1,
                    0,
                )
            };
            assert_eq!(rc, 0, "set opaque on {}", parent.display());
        } else {
            let target = parent.join(OsStr::from_bytes(&name[4..]));
            let t = CString::new(target.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid C string.
            let rc = unsafe { libc::mknod(t.as_ptr(), libc::S_IFCHR, 0) };
            assert_eq!(rc, 0, "mknod {}", target.display());
        }
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        let p = CString::new(parent.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string and two timespecs.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
}

/// Fills in each entry's hardlink group: for a non-directory, the smallest
/// path sharing its inode (`K`: the kernel's st_ino, or our merged inode).
fn with_link_groups<K: Ord + Clone>(
    tree: BTreeMap<Vec<u8>, (Entry, K)>,
) -> BTreeMap<Vec<u8>, Entry> {
    let mut first: BTreeMap<K, Vec<u8>> = BTreeMap::new();
    for (p, (e, ino)) in &tree {
        if e.kind != 'd' {
            first.entry(ino.clone()).or_insert_with(|| p.clone());
        }
    }
    tree.into_iter()
        .map(|(p, (mut e, ino))| {
            e.link_group = if e.kind == 'd' {
                p.clone()
            } else {
                first[&ino].clone()
            };
            (p, e)
        })
        .collect()
}

fn kernel_tree(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    while let Some((path, rel)) = stack.pop() {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            '-'
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                'p'
            }
        };
        let rdev = m.rdev();
        let entry = Entry {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: if kind == '-' { m.size() } else { 0 },
            content: (kind == '-').then(|| sha(&std::fs::read(&path).unwrap())),
            target: (kind == 'l').then(|| {
                std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            rdev: matches!(kind, 'c' | 'b').then(|| (libc::major(rdev), libc::minor(rdev))),
            mtime: Some((m.mtime(), m.mtime_nsec() as u32)),
            xattrs: user_xattrs(&path),
            link_group: Vec::new(),
        };
        if kind == 'd' {
            for e in std::fs::read_dir(&path).unwrap().flatten() {
                let mut r = rel.clone();
                r.push(b'/');
                r.extend_from_slice(e.file_name().as_bytes());
                stack.push((e.path(), r));
            }
        }
        out.insert(rel, (entry, m.ino()));
    }
    with_link_groups(out)
}

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

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
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
        extract_for_overlay(&tar, &dir, tmp.path());
        lowerdirs.push(dir);
    }
    let view = MergedView::open(&db, &loaded).unwrap();
    let cache = BlockCache::new(
        store,
        &CacheOptions {
            memory_bytes: 64 << 20,
            disk: None,
        },
    )
    .unwrap();
    let ours = merged_tree(&view, &db, &cache).await;

    // The kernel's overlay: topmost lower directory first.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let lower: Vec<String> = lowerdirs
        .iter()
        .rev()
        .map(|d| d.display().to_string())
        .collect();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(&mnt));
    let _unmount = Unmount(mnt.clone());
    let mut kernel = kernel_tree(&mnt);
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

    let show = |p: &Vec<u8>| String::from_utf8_lossy(p).into_owned();
    let only_ours: Vec<String> = ours
        .keys()
        .filter(|p| !kernel.contains_key(*p))
        .map(show)
        .collect();
    let only_kernel: Vec<String> = kernel
        .keys()
        .filter(|p| !ours.contains_key(*p))
        .map(show)
        .collect();
    assert!(
        only_ours.is_empty() && only_kernel.is_empty(),
        "only ours: {only_ours:?}\nonly kernel: {only_kernel:?}"
    );
    for (p, k) in &kernel {
        assert_eq!(&ours[p], k, "{}", show(p));
    }
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

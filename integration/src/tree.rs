//! Snapshots of directory trees for equivalence tests: every entry's type,
//! mode, owner, size, content hash, symlink target, device numbers, user
//! xattrs, hardlink group and mtime, as `stat` and `read` see them through
//! any mount; and layers extracted the way the kernel's overlayfs wants them.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub mtime: Option<(i64, u32)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first path (in byte order) of this entry's hardlink group.
    pub link_group: Vec<u8>,
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn user_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    xattrs_where(path, |n| n.starts_with(b"user."))
}

/// Every xattr of `path` whose name `keep` accepts, in name order.
pub fn xattrs_where(path: &Path, keep: impl Fn(&[u8]) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
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
        .filter(|n| !n.is_empty() && keep(n))
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

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extracts a layer the way the kernel's overlayfs wants it: `.wh.NAME` as a
/// 0/0 character device, `.wh..wh..opq` as `trusted.overlay.opaque=y`, with
/// the touched directories' mtimes put back. Where GNU tar differs from
/// containerd's unpack (the first reference), containerd's rule is applied
/// after it: a parent directory the layer does not describe gets the mode,
/// owner and user xattrs of the directory below it in `lowers` (extracted
/// before, bottom first), and a time before 1970 becomes the epoch.
pub fn extract_for_overlay(tar: &[u8], dir: &Path, scratch: &Path, lowers: &[PathBuf]) {
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
    like_containerd(tar, dir, lowers);
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
        set_times(
            &parent,
            (meta.atime(), meta.atime_nsec()),
            (meta.mtime(), meta.mtime_nsec()),
        );
    }
}

/// The directories a layer's tar describes, relative and without `./`.
fn described_dirs(tar: &[u8]) -> std::collections::BTreeSet<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Directory {
            let p = e.path().unwrap();
            out.insert(p.components().collect::<PathBuf>());
        }
    }
    out
}

/// Sets `path`'s atime and mtime (seconds, nanoseconds), not following a
/// symlink.
fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = |(tv_sec, tv_nsec): (i64, i64)| libc::timespec { tv_sec, tv_nsec };
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts(atime), ts(mtime)].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// containerd's rules where GNU tar has others (see [`extract_for_overlay`]).
fn like_containerd(tar: &[u8], dir: &Path, lowers: &[PathBuf]) {
    let described = described_dirs(tar);
    let mut stack = vec![PathBuf::new()];
    let mut implicit = Vec::new();
    while let Some(rel) = stack.pop() {
        let path = dir.join(&rel);
        let m = std::fs::symlink_metadata(&path).unwrap();
        if m.mtime() < 0 {
            set_times(&path, (0, 0), (0, 0));
        }
        if m.is_dir() {
            if !rel.as_os_str().is_empty() && !described.contains(&rel) {
                implicit.push(rel.clone());
            }
            for e in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    for rel in implicit {
        let path = dir.join(&rel);
        for lower in lowers.iter().rev() {
            let Ok(m) = std::fs::symlink_metadata(lower.join(&rel)) else {
                continue;
            };
            if m.is_dir() {
                let times = std::fs::symlink_metadata(&path).unwrap();
                std::os::unix::fs::lchown(&path, Some(m.uid()), Some(m.gid())).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777),
                )
                .unwrap();
                for (name, value) in user_xattrs(&lower.join(&rel)) {
                    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
                    let n = CString::new(name).unwrap();
                    // SAFETY: valid C strings and value buffer.
                    let rc = unsafe {
                        libc::lsetxattr(
                            c.as_ptr(),
                            n.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            0,
                        )
                    };
                    assert_eq!(rc, 0, "setxattr {}", path.display());
                }
                set_times(
                    &path,
                    (times.atime(), times.atime_nsec()),
                    (times.mtime(), times.mtime_nsec()),
                );
            }
            // A non-directory below (a whiteout device among them) was
            // replaced: nothing to copy.
            break;
        }
    }
}

/// Fills in each entry's hardlink group: for a non-directory, the smallest
/// path sharing its inode (`K`: the kernel's st_ino, or our merged inode).
pub fn with_link_groups<K: Ord + Clone>(
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

/// Every entry under `root`, keyed by its path relative to `root`
/// (`/a/b`; the root itself is the empty path), with its user xattrs.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    snapshot_with(root, |n| n.starts_with(b"user."))
}

/// [`snapshot`] with the xattrs whose names `keep` accepts.
pub fn snapshot_with(root: &Path, keep: impl Fn(&[u8]) -> bool) -> BTreeMap<Vec<u8>, Entry> {
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
            } else if ft.is_socket() {
                's'
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
            xattrs: xattrs_where(&path, &keep),
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

/// Unmounts a kernel mount when dropped.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts the kernel's overlayfs over `lowers` (bottom first) at `mnt`:
/// read-only, or writable with `upper` and `work` directories.
pub fn mount_overlay(lowers: &[PathBuf], rw: Option<(&Path, &Path)>, mnt: &Path) -> Unmount {
    std::fs::create_dir_all(mnt).expect("create overlay mount point");
    let lower: Vec<String> = lowers
        .iter()
        .rev()
        .map(|d| d.display().to_string())
        .collect();
    let opts = match rw {
        None => format!("ro,lowerdir={}", lower.join(":")),
        Some((upper, work)) => {
            std::fs::create_dir_all(upper).expect("create upperdir");
            std::fs::create_dir_all(work).expect("create workdir");
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            )
        }
    };
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(opts)
        .arg(mnt));
    Unmount(mnt.to_path_buf())
}

/// Asserts that two snapshots hold the same paths with the same entries,
/// naming the paths only one side has and the first entry that differs.
pub fn assert_same_trees(ours: &BTreeMap<Vec<u8>, Entry>, reference: &BTreeMap<Vec<u8>, Entry>) {
    let show = |p: &Vec<u8>| String::from_utf8_lossy(p).into_owned();
    let only_ours: Vec<String> = ours
        .keys()
        .filter(|p| !reference.contains_key(*p))
        .map(show)
        .collect();
    let only_reference: Vec<String> = reference
        .keys()
        .filter(|p| !ours.contains_key(*p))
        .map(show)
        .collect();
    assert!(
        only_ours.is_empty() && only_reference.is_empty(),
        "only ours: {only_ours:?}\nonly the reference: {only_reference:?}"
    );
    for (p, r) in reference {
        assert_eq!(&ours[p], r, "{}", show(p));
    }
}

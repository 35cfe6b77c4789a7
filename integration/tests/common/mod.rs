//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use slayerfs_chunkstore::BlockStore;
use slayerfs_integration::bins::bin;
use slayerfs_integration::fixtures::{write_image, FEntry, FKind, FLayer};
use slayerfs_integration::s3::S3Server;
use slayerfs_layerfs::test_support::read_file;
use slayerfs_proto::index::{Inode, InodeKind, LayerIndex};

/// An empty config file: defaults only, whatever the machine has in /etc.
fn empty_config() -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("slayerfs-test-empty-{}.toml", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, "").expect("write empty config");
    }
    path
}

/// Runs `slayerfs` with `args` and an empty config unless `--config` is
/// given, so the machine's own config never leaks in.
pub fn slayerfs(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(bin("slayerfs"));
    cmd.args(args).env("SLAYERFS_CONFIG", empty_config());
    if args.contains(&"--config") {
        cmd.env_remove("SLAYERFS_CONFIG");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run slayerfs")
}

/// `layers` written as an image under `dir/src` and converted into the
/// bucket `images` of `s3` (through `s3`'s own address); the converted
/// image's reference (`dir/conv`, tag v1).
pub fn convert_to_s3(s3: &S3Server, layers: &[FLayer], dir: &Path) -> String {
    write_image(&dir.join("src"), "v1", layers).expect("write the source image");
    let src = format!("oci:{}:v1", dir.join("src").display());
    let image = format!("oci:{}:v1", dir.join("conv").display());
    let endpoint = s3.endpoint();
    let args = [
        "convert",
        "-q",
        &src,
        &image,
        "--store",
        "s3://images",
        "--s3-endpoint",
        &endpoint,
    ];
    assert_ok(&slayerfs(&args, &s3.env()));
    image
}

/// `slayerfs convert -q SRC DST --store STORE`.
pub fn convert(src: &str, dst: &str, store: &str) -> Output {
    slayerfs(&["convert", "-q", src, dst, "--store", store], &[])
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn assert_ok(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(o.status.success(), "slayerfs failed: {err}\n{out}");
    out
}

/// `(written, present)` from a convert summary.
pub fn blocks_line(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("blocks"))
        .expect("blocks line");
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

pub fn count_files(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Inode number of `path` in an index (`None` if absent or whited out).
pub fn lookup(index: &LayerIndex, path: &[u8]) -> Option<u64> {
    let mut ino = 1u64;
    for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let d = index.inodes[(ino - 1) as usize]
            .children
            .iter()
            .find(|d| d.name == name)?;
        if d.whiteout {
            return None;
        }
        ino = d.ino;
    }
    Some(ino)
}

fn inode(index: &LayerIndex, ino: u64) -> &Inode {
    &index.inodes[(ino - 1) as usize]
}

fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// Checks that `index` records exactly the entries of `layer`, with the
/// file contents readable from `store`.
pub async fn assert_layer_matches(index: &LayerIndex, layer: &FLayer, store: &Arc<dyn BlockStore>) {
    let mut explicit = 0usize;
    let mut whiteouts = 0usize;
    for e in &layer.entries {
        let name = String::from_utf8_lossy(&e.path).into_owned();
        match &e.kind {
            FKind::Whiteout => {
                whiteouts += 1;
                let (parent, last) = split_parent(&e.path);
                let dir = lookup(index, parent).unwrap_or_else(|| panic!("{name}: parent missing"));
                let d = inode(index, dir).children.iter().find(|d| d.name == last);
                assert!(
                    d.is_some_and(|d| d.whiteout && d.ino == 0),
                    "{name}: no whiteout record"
                );
                continue;
            }
            FKind::Opaque => {
                let dir = lookup(index, &e.path).unwrap_or_else(|| panic!("{name}: missing"));
                assert!(inode(index, dir).opaque, "{name}: not opaque");
                continue;
            }
            FKind::Hardlink(target) => {
                assert_eq!(
                    lookup(index, &e.path),
                    lookup(index, target),
                    "{name}: not the target's inode"
                );
                assert!(lookup(index, &e.path).is_some(), "{name}: missing");
                continue;
            }
            _ => explicit += 1,
        }
        let ino = lookup(index, &e.path).unwrap_or_else(|| panic!("{name}: missing"));
        let got = inode(index, ino);
        check_attrs(&name, got, e);
        let want_kind = match &e.kind {
            FKind::Dir => InodeKind::Directory,
            FKind::File(_) => InodeKind::Regular,
            FKind::Symlink(_) => InodeKind::Symlink,
            FKind::Char(..) => InodeKind::CharDevice,
            FKind::Block(..) => InodeKind::BlockDevice,
            FKind::Fifo => InodeKind::Fifo,
            _ => unreachable!(),
        };
        assert_eq!(got.kind, want_kind as i32, "{name}: kind");
        match &e.kind {
            FKind::File(data) => {
                assert_eq!(got.size, data.len() as u64, "{name}: size");
                let mut hasher = HashWriter(Sha256::new());
                read_file(index, got, store, &mut hasher)
                    .await
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
                assert_eq!(
                    hasher.0.finalize()[..],
                    Sha256::digest(data)[..],
                    "{name}: content"
                );
            }
            FKind::Symlink(t) => assert_eq!(&got.symlink_target, t, "{name}: target"),
            FKind::Char(ma, mi) | FKind::Block(ma, mi) => {
                assert_eq!((got.rdev_major, got.rdev_minor), (*ma, *mi), "{name}: rdev")
            }
            _ => {}
        }
    }
    let recorded = index.inodes.iter().skip(1).filter(|i| !i.implicit).count();
    assert_eq!(recorded, explicit, "entries beyond the layer's own");
    let recorded_whiteouts = index
        .inodes
        .iter()
        .flat_map(|i| &i.children)
        .filter(|d| d.whiteout)
        .count();
    assert_eq!(recorded_whiteouts, whiteouts, "whiteout records");
}

fn check_attrs(name: &str, got: &Inode, e: &FEntry) {
    assert_eq!(got.mode, e.mode, "{name}: mode");
    assert_eq!((got.uid, got.gid), (e.uid, e.gid), "{name}: owner");
    // containerd sets a time before 1970 to the epoch.
    let want_mtime = if e.mtime.0 < 0 { (0, 0) } else { e.mtime };
    assert_eq!((got.mtime_sec, got.mtime_nsec), want_mtime, "{name}: mtime");
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = e
        .xattrs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect();
    want.sort();
    let have: Vec<(Vec<u8>, Vec<u8>)> = got
        .xattrs
        .iter()
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect();
    assert_eq!(have, want, "{name}: xattrs");
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! `slayerfs mount` against the kernel's overlayfs over the same layers: the
//! read-only trees are equal entry by entry, and the same script of changes
//! (copy-on-write writes, truncates, renames of lower directories, unlinks,
//! whiteouts, links, xattrs, device nodes, and operations that must fail)
//! gives the same answers and the same tree on both; the writable tree
//! survives unmount and remount.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use common::{assert_ok, convert};
use slayerfs_chunkstore::{BlockStore, LocalStore};
use slayerfs_config::Config;
use slayerfs_integration::fixtures::{
    awkward_layers, layer_blob, layer_tar, write_image, write_image_blobs, Compression,
};
use slayerfs_integration::mount::SlayerMount;
use slayerfs_integration::tree::{
    assert_same_trees, extract_for_overlay, mount_overlay, snapshot, Entry,
};
use slayerfs_snapshotter::cli::mount::image_rootfs;
use slayerfs_snapshotter::image::converted::ConvertedImage;
use slayerfs_snapshotter::image::reference::ImageRef;

const MIB: u64 = 1 << 20;

/// A change to make, or to see fail, on a mounted tree.
#[derive(Debug, Clone)]
enum Op {
    Write(&'static str, u64, &'static [u8]),
    CreateNew(&'static str, &'static [u8]),
    Truncate(&'static str, u64),
    Mkdir(&'static str),
    Rmdir(&'static str),
    Unlink(&'static str),
    Rename(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Link(&'static str, &'static str),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    SetXattr(&'static str, &'static str, &'static [u8]),
    RemoveXattr(&'static str, &'static str),
    Mknod(&'static str, u32, u32, u32),
    Open(&'static str),
    /// Binds a unix socket there (and closes it: the name stays).
    Bind(&'static str),
}

fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

fn errno_of(rc: i32) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn io(r: std::io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &str| root.join(rel);
    match *op {
        Op::Write(rel, off, data) => io((|| {
            let f = std::fs::OpenOptions::new().write(true).open(p(rel))?;
            f.write_all_at(data, off)
        })()),
        Op::CreateNew(rel, data) => io((|| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p(rel))?;
            f.write_all(data)
        })()),
        Op::Truncate(rel, size) => io((|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p(rel))?
                .set_len(size)
        })()),
        Op::Mkdir(rel) => io(std::fs::create_dir(p(rel))),
        Op::Rmdir(rel) => io(std::fs::remove_dir(p(rel))),
        Op::Unlink(rel) => io(std::fs::remove_file(p(rel))),
        Op::Rename(a, b) => io(std::fs::rename(p(a), p(b))),
        Op::Symlink(target, rel) => io(std::os::unix::fs::symlink(target, p(rel))),
        Op::Link(a, b) => io(std::fs::hard_link(p(a), p(b))),
        Op::Chmod(rel, mode) => io(std::fs::set_permissions(
            p(rel),
            std::fs::Permissions::from_mode(mode),
        )),
        Op::Chown(rel, uid, gid) => io(std::os::unix::fs::lchown(p(rel), Some(uid), Some(gid))),
        Op::SetXattr(rel, name, value) => {
            let n = CString::new(name).unwrap();
            // SAFETY: valid C strings and a value buffer of the given length.
            errno_of(unsafe {
                libc::lsetxattr(
                    cpath(root, rel).as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            })
        }
        Op::RemoveXattr(rel, name) => {
            let n = CString::new(name).unwrap();
            // SAFETY: valid C strings.
            errno_of(unsafe { libc::lremovexattr(cpath(root, rel).as_ptr(), n.as_ptr()) })
        }
        Op::Mknod(rel, mode, major, minor) => {
            // SAFETY: a valid C string.
            errno_of(unsafe {
                libc::mknod(cpath(root, rel).as_ptr(), mode, libc::makedev(major, minor))
            })
        }
        Op::Open(rel) => io(std::fs::File::open(p(rel)).map(drop)),
        Op::Bind(rel) => io(std::os::unix::net::UnixListener::bind(p(rel)).map(drop)),
    }
}

/// The changes: each row is what both filesystems must answer.
fn script() -> Vec<Op> {
    use Op::*;
    vec![
        // Copy-on-write into lower files, holes by truncation and sparse writes.
        Write("data/big", 6 * MIB + 3, b"XYZ"),
        Write("data/big", 13 * MIB + 2, b"past the old end"),
        Truncate("data/zero-run", 5 * MIB),
        Truncate("data/zero-run", 20 * MIB),
        CreateNew("newfile", b"hello"),
        Write("newfile", 10 * MIB, b"tail"),
        CreateNew("data/empty", b"x"),
        // Names.
        Mkdir("etc"),
        Mkdir("newdir/sub"),
        Mkdir("newdir"),
        Mkdir("newdir/sub"),
        Rmdir("newdir"),
        Rmdir("data"),
        Rmdir("etc/passwd"),
        Unlink("etc"),
        Unlink("missing"),
        Open("etc/passwd/x"),
        Unlink("etc/passwd"),
        CreateNew("etc/passwd", b"a new passwd\n"),
        Unlink("opq/new-c"),
        Rename("usr/bin", "usr/sbin"),
        Rename("was-file", "opq"),
        Rename("etc/localtime", "tmp"),
        Rename("tmp", "etc/localtime"),
        Rename("opq", "etc/opq-moved"),
        Rename("newfile", "was-dir"),
        Rename("unicode", "uni2"),
        Rename("data/added", "added-moved"),
        Rename("etc/localtime", "etc/localtime"),
        Rmdir("was-file"),
        Unlink("was-file/inside"),
        Rmdir("was-file"),
        Mkdir("was-file"),
        Symlink("/absolute/target", "sym"),
        Symlink("relative/target", "newdir/rel"),
        Link("data/empty", "data/empty2"),
        Link("newdir", "newdir-link"),
        Link("data/empty", "data/xattrs"),
        // Attributes.
        Chmod("data/xattrs", 0o600),
        Chmod("usr/sbin", 0o700),
        Chown("data/empty", 123, 456),
        Chown("sym", 7, 8),
        SetXattr("data/xattrs", "user.new", b"v"),
        SetXattr("data", "user.dir", b"changed"),
        RemoveXattr("data/xattrs", "user.text"),
        RemoveXattr("data/xattrs", "user.none"),
        Mknod("fifo2", libc::S_IFIFO | 0o640, 0, 0),
        Mknod("chr", libc::S_IFCHR | 0o600, 1, 5),
        Mknod("blk", libc::S_IFBLK | 0o600, 8, 1),
        Bind("tmp/app.sock"),
        Bind("tmp/app.sock"),
        Unlink("tmp/app.sock"),
        Bind("run.sock"),
    ]
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// The awkward image converted into a local store; the layers extracted
/// for the kernel's overlayfs.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    image: String,
    store: String,
    lowers: Vec<PathBuf>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let layers = awkward_layers();
    write_image(&root.join("src"), "v1", &layers).unwrap();
    let store = root.join("store").display().to_string();
    assert_ok(&convert(
        &oci(&root.join("src"), "v1"),
        &oci(&root.join("conv"), "v1"),
        &store,
    ));
    let mut lowers = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dir = root.join(format!("l{i}"));
        extract_for_overlay(&layer_tar(layer), &dir, &root, &lowers);
        lowers.push(dir);
    }
    Fixture {
        image: oci(&root.join("conv"), "v1"),
        store,
        lowers,
        root,
        _tmp: tmp,
    }
}

fn without_root(mut t: BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    t.remove(&Vec::new());
    t
}

/// Directory mtimes are the extraction's on the kernel side; after changes,
/// every mtime is "when the change ran", different on both sides.
fn without_mtimes(t: BTreeMap<Vec<u8>, Entry>, all: bool) -> BTreeMap<Vec<u8>, Entry> {
    t.into_iter()
        .map(|(p, mut e)| {
            if all || e.kind == 'd' {
                e.mtime = None;
            }
            (p, e)
        })
        .collect()
}

#[test]
fn read_only_mount_equals_kernel_overlayfs() {
    let fx = fixture();
    let mnt = fx.root.join("ours");
    let m = SlayerMount::start(&fx.image, &mnt, &fx.store, &fx.root.join("state"), &[]).unwrap();
    let ours = without_mtimes(without_root(snapshot(&mnt)), false);
    let _k = mount_overlay(&fx.lowers, None, &fx.root.join("kernel"));
    let kernel = without_mtimes(without_root(snapshot(&fx.root.join("kernel"))), false);
    assert_same_trees(&ours, &kernel);
    assert!(kernel.len() > 30, "{} entries compared", kernel.len());
    // File mtimes were compared; one before 1970 is the epoch, as
    // containerd sets it.
    assert_eq!(ours[&b"/old-mtime".to_vec()].mtime, Some((0, 0)));
    // Writes are refused on a read-only mount.
    assert_eq!(apply(&mnt, &Op::CreateNew("x", b"x")), Err(libc::EROFS));
    m.unmount().unwrap();
}

#[test]
fn the_same_changes_give_the_same_answers_and_tree_as_overlayfs() {
    let fx = fixture();
    let mnt = fx.root.join("ours");
    let upper = fx.root.join("upper");
    let state = fx.root.join("state");
    let args = ["--rw", "--upper", upper.to_str().unwrap()];
    let m = SlayerMount::start(&fx.image, &mnt, &fx.store, &state, &args).unwrap();
    let kmnt = fx.root.join("kernel");
    let kernel_rw = (fx.root.join("kupper"), fx.root.join("kwork"));
    // redirect_dir=on lets the kernel rename lower directories, as we do.
    let _k = {
        let lower: Vec<String> = fx
            .lowers
            .iter()
            .rev()
            .map(|d| d.display().to_string())
            .collect();
        std::fs::create_dir_all(&kmnt).unwrap();
        std::fs::create_dir_all(&kernel_rw.0).unwrap();
        std::fs::create_dir_all(&kernel_rw.1).unwrap();
        slayerfs_integration::tree::run(
            std::process::Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={},redirect_dir=on",
                    lower.join(":"),
                    kernel_rw.0.display(),
                    kernel_rw.1.display()
                ))
                .arg(&kmnt),
        );
        slayerfs_integration::tree::Unmount(kmnt.clone())
    };
    let mut failures = 0;
    for op in script() {
        let theirs = apply(&kmnt, &op);
        let got = apply(&mnt, &op);
        assert_eq!(got, theirs, "{op:?}: ours vs the kernel's");
        failures += usize::from(theirs.is_err());
    }
    assert!(failures >= 12, "the script checks errors too ({failures})");
    let ours = without_mtimes(without_root(snapshot(&mnt)), true);
    let kernel = without_mtimes(without_root(snapshot(&kmnt)), true);
    assert_same_trees(&ours, &kernel);

    // Spot checks of what the script did.
    let big = std::fs::read(mnt.join("data/big")).unwrap();
    assert_eq!(&big[(6 * MIB + 3) as usize..(6 * MIB + 6) as usize], b"XYZ");
    let zr = std::fs::read(mnt.join("data/zero-run")).unwrap();
    assert_eq!(zr.len() as u64, 20 * MIB);
    assert!(
        zr[(5 * MIB) as usize..].iter().all(|&b| b == 0),
        "extended part reads zeros"
    );
    assert!(
        std::fs::read_dir(mnt.join("was-file"))
            .unwrap()
            .next()
            .is_none(),
        "a new directory hides nothing"
    );

    // Everything survives unmount and remount.
    m.unmount().unwrap();
    let m = SlayerMount::start(&fx.image, &mnt, &fx.store, &state, &args).unwrap();
    let again = without_mtimes(without_root(snapshot(&mnt)), true);
    assert_same_trees(&again, &kernel);
    m.unmount().unwrap();

    // The upper written out as an OCI layer: the image's layers plus that
    // one, converted and mounted read-only, show the same tree again.
    let diff = upper_as_layer(&fx, &upper);
    let mut blobs: Vec<(Vec<u8>, Compression)> = awkward_layers().iter().map(layer_blob).collect();
    blobs.push((diff, Compression::None));
    write_image_blobs(&fx.root.join("src"), "with-diff", &blobs).unwrap();
    let stacked = oci(&fx.root.join("conv"), "with-diff");
    assert_ok(&convert(
        &oci(&fx.root.join("src"), "with-diff"),
        &stacked,
        &fx.store,
    ));
    let m = SlayerMount::start(&stacked, &fx.root.join("stacked"), &fx.store, &state, &[]).unwrap();
    let stacked_tree = without_mtimes(without_root(snapshot(&m.mountpoint)), true);
    // A socket cannot be part of a layer (tar leaves sockets out too).
    let mut expected = kernel.clone();
    assert_eq!(
        expected.remove(b"/run.sock".as_slice()).map(|e| e.kind),
        Some('s')
    );
    assert_same_trees(&stacked_tree, &expected);
    m.unmount().unwrap();
}

/// The tar of an upper layer's changes, through the same code a commit uses.
fn upper_as_layer(fx: &Fixture, upper: &Path) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = ConvertedImage::open(&ImageRef::parse(&fx.image).unwrap()).unwrap();
    let config = Config::from_toml(&format!(
        "state_dir = {:?}",
        fx.root.join("state").display().to_string()
    ))
    .unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(Path::new(&fx.store)).unwrap());
    let rootfs = image_rootfs(&image, store, &config, Some(upper), rt.handle().clone()).unwrap();
    let mut tar = Vec::new();
    let stats = rootfs.write_diff(&mut tar).unwrap();
    assert!(stats.entries > 10 && stats.whiteouts > 3, "{stats:?}");
    tar
}

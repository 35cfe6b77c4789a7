//! State a node already has keeps working after an upgrade: a state
//! directory made by an earlier build (`data/state-v1.tar.zst`: a converted
//! image, its block store, an upper of `slayerfs mount --rw` with changes,
//! and a snapshotter root with a committed layer and an active snapshot
//! written into) is opened by this build, read, written and built upon.
//!
//! The fixture was made by `make_state_fixture` below, run (it is ignored
//! otherwise) by the code before the crates were laid out anew; running it
//! again would make a fixture of this build, which tests nothing.

use std::path::Path;

use slayerfs_integration::daemon::local_store;
use slayerfs_integration::fixtures::{write_image, Compression, FEntry, FKind, FLayer};
use slayerfs_integration::mount::SlayerMount;
use slayerfs_integration::snapshots_api::{self as api, Daemon};

mod common;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/state-v1.tar.zst");

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// `slayerfs mount --rw` of the converted image with the upper in `dir`.
fn mount_upper(dir: &Path) -> SlayerMount {
    SlayerMount::start(
        &oci(&dir.join("conv"), "v1"),
        &dir.join("mnt"),
        dir.join("store").to_str().unwrap(),
        &dir.join("state"),
        &["--rw", "--upper", dir.join("upper").to_str().unwrap()],
    )
    .unwrap()
}

fn daemon_config(dir: &Path) -> String {
    local_store(&dir.join("store"))
}

#[test]
#[ignore = "makes the fixture; run by hand with the build whose state is to be kept"]
fn make_state_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let layer = FLayer {
        entries: vec![
            FEntry::new("etc", FKind::Dir),
            FEntry::new("etc/motd", FKind::File(b"from the image\n".to_vec())),
            FEntry::new("data", FKind::Dir),
            FEntry::new(
                "data/big",
                FKind::File(slayerfs_integration::fixtures::noise(300_000, 11)),
            ),
        ],
        compression: Compression::Gzip,
    };
    write_image(&dir.join("src"), "v1", &[layer]).unwrap();
    let store = dir.join("store");
    common::assert_ok(&common::convert(
        &oci(&dir.join("src"), "v1"),
        &oci(&dir.join("conv"), "v1"),
        store.to_str().unwrap(),
    ));
    let m = mount_upper(dir);
    std::fs::write(dir.join("mnt/etc/motd"), b"changed in the upper\n").unwrap();
    std::fs::write(dir.join("mnt/new-file"), b"new\n").unwrap();
    m.unmount().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(dir.join("daemon")).unwrap();
        let d = Daemon::start_with(&dir.join("daemon"), &daemon_config(dir));
        let mut c = d.client().await;
        let fs = api::prepare(&mut c, "a", "").await.unwrap();
        std::fs::write(Path::new(&fs).join("in-layer-1"), b"committed\n").unwrap();
        api::commit(&mut c, "layer-1", "a").await.unwrap();
        let fs = api::prepare(&mut c, "b", "layer-1").await.unwrap();
        std::fs::write(Path::new(&fs).join("in-b"), b"active\n").unwrap();
        drop(c);
        drop(d);
    });
    for f in ["daemon/snap.sock", "daemon/snapshotter.log", "mnt", "src"] {
        let p = dir.join(f);
        let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
    }
    std::fs::create_dir_all(Path::new(FIXTURE).parent().unwrap()).unwrap();
    let out = std::process::Command::new("tar")
        .args(["--zstd", "-cf", FIXTURE, "-C"])
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(out.success());
}

#[test]
fn state_of_an_earlier_build_opens_and_works() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let st = std::process::Command::new("tar")
        .args(["--zstd", "-xf", FIXTURE, "-C"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "extracting {FIXTURE}");

    // The upper of `slayerfs mount --rw`, with what was written into it.
    let m = mount_upper(dir);
    let mnt = dir.join("mnt");
    assert_eq!(
        std::fs::read(mnt.join("etc/motd")).unwrap(),
        b"changed in the upper\n"
    );
    assert_eq!(std::fs::read(mnt.join("new-file")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read(mnt.join("data/big")).unwrap(),
        slayerfs_integration::fixtures::noise(300_000, 11)
    );
    std::fs::write(mnt.join("new-file"), b"written by this build\n").unwrap();
    m.unmount().unwrap();

    // The snapshotter's root: the active snapshot over the committed layer.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = Daemon::start_with(&dir.join("daemon"), &daemon_config(dir));
        let mut c = d.client().await;
        let fs = api::mounts(&mut c, "b").await.unwrap();
        let fs = Path::new(&fs);
        assert_eq!(
            std::fs::read(fs.join("in-layer-1")).unwrap(),
            b"committed\n"
        );
        assert_eq!(std::fs::read(fs.join("in-b")).unwrap(), b"active\n");
        std::fs::write(fs.join("in-b-later"), b"later\n").unwrap();
        api::commit(&mut c, "layer-2", "b").await.unwrap();
        let top = api::prepare(&mut c, "c", "layer-2").await.unwrap();
        let top = Path::new(&top);
        for (f, want) in [
            ("in-layer-1", &b"committed\n"[..]),
            ("in-b", b"active\n"),
            ("in-b-later", b"later\n"),
        ] {
            assert_eq!(std::fs::read(top.join(f)).unwrap(), want, "{f}");
        }
        let side = api::prepare(&mut c, "d", "layer-1").await.unwrap();
        assert!(!Path::new(&side).join("in-b").exists());
        api::remove(&mut c, "d").await.unwrap();
    });
}

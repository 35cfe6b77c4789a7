//! The same end-to-end run on every containerd line the project supports —
//! Debian's 1.6, trixie's 1.7 and unstable's 2.x, the last two unpacked
//! into the checkout by `scripts/install-deps.sh` — each with the
//! configuration its README section gives: an image imported and run; a
//! converted image pulled lazily by `slayerfs pull`, by the CRI plugin as
//! kubelet calls it, and on 2.x by a plain `ctr image pull` through the
//! transfer service; containers run from each; and removing it all leaves
//! no snapshot and no mount behind.

mod lazy_images;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lazy_images::*;
use slayerfs_integration::daemon::{sh, start_snapshotter_with_env, SnapshotterPaths};
use slayerfs_integration::runtime::{Containerd, Cri};

#[test]
fn containerd_1_6_end_to_end() {
    end_to_end(Containerd::V1_6);
}

#[test]
fn containerd_1_7_end_to_end() {
    end_to_end(Containerd::V1_7);
}

#[test]
fn containerd_2_end_to_end() {
    end_to_end(Containerd::V2);
}

/// The namespace images are imported into.
const IMPORT: Option<&str> = Some("import");

/// The namespace of `ctr image pull` through the transfer service.
const TRANSFER: Option<&str> = Some("transfer");

/// Lazy pulls so far, by the snapshotter's log.
fn lazy_layers(paths: &SnapshotterPaths) -> usize {
    paths.log_text().matches("layer pulled lazily").count()
}

fn end_to_end(v: Containerd) {
    // Fail at once, naming the install step, when the runtime is missing.
    v.bin_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = publish_images(dir);
    let reg = images.registry.addr.clone();
    let paths = SnapshotterPaths::in_dir(dir);
    let _snapshotter = start_snapshotter_with_env(&paths, &images.config, &images.env);
    let cri = Cri {
        registry: &reg,
        // 1.x: the local pull is CRI's only way, and passes the labels only
        // with annotations on; 2.x: the transfer service, by default.
        local_pull: !v.is_2x(),
        sandbox_image: None,
    };
    let mut containerd = v.start(dir, &paths.socket, Some(&cri));
    let log = || {
        format!(
            "snapshotter log:\n{}\ncontainerd log:\n{}",
            paths.log_text(),
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        )
    };
    let ctr = |ns: Option<&str>, args: &[&str]| v.ctr(dir, ns, args);
    let run = |ns: Option<&str>, image: &str, name: &str, cmd: &[&str]| {
        let mut args = vec!["run", "--rm", "--snapshotter", "slayerfs", image, name];
        args.extend_from_slice(cmd);
        ctr(ns, &args)
    };
    let s3_bytes = || images.s3.counters.get_bytes.load(Ordering::Relaxed);
    // Removing every image leaves no snapshot and no mount; each way of
    // pulling below starts from there (2.x shares a committed layer across
    // namespaces: a pull finding it would prepare nothing).
    let namespaces = [IMPORT, None, K8S, TRANSFER];
    let remove_all = || {
        for ns in namespaces {
            let (_, list) = ctr(ns, &["images", "ls", "-q"]);
            for name in list.lines().filter(|l| !l.is_empty()) {
                let (ok, out) = ctr(ns, &["images", "rm", "--sync", name]);
                assert!(ok, "{name}: {out}\n{}", log());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for ns in namespaces {
            loop {
                let (ok, out) = ctr(ns, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
                assert!(ok, "{out}");
                // The header line only.
                if out.lines().count() <= 1 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "snapshots left in {ns:?}:\n{out}\n{}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = paths.root.display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(left.is_empty(), "mounts left: {left:#?}");
    };
    let (ok, version) = ctr(None, &["version"]);
    assert!(ok, "{version}\n{}", log());
    eprintln!("{version}");

    // Import + run: containerd unpacks the layers through our mounts (in a
    // namespace of its own: snapshots are per namespace, and the lazy pulls
    // below share the layers).
    sh(
        "skopeo copy -q oci:img:v1 docker-archive:plain.tar:example.com/plain:v1",
        dir,
        &[],
    );
    let tar = dir.join("plain.tar");
    let (ok, out) = ctr(
        IMPORT,
        &[
            "images",
            "import",
            "--snapshotter",
            "slayerfs",
            tar.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}\n{}", log());
    let (ok, out) = run(
        IMPORT,
        "example.com/plain:v1",
        "imported",
        &["/bin/cat", "/etc/small"],
    );
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    remove_all();

    // `slayerfs pull`: lazy, the indexes and config only.
    let image = format!("{reg}/lazy:v1");
    let before = s3_bytes();
    let (ok, out) = slayerfs_pull(dir, &image);
    assert!(
        ok && out.contains("2 lazily, 0 unpacked"),
        "{out}\n{}",
        log()
    );
    assert!(s3_bytes() - before <= images.index_bytes, "{}", log());
    let before = s3_bytes();
    let (ok, out) = run(None, &image, "pulled", &["/bin/cat", "/etc/small"]);
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    let big = (BIG_MIB as u64) << 20;
    assert!(s3_bytes() - before < big / 10, "{}", log());
    remove_all();

    // The registry serves a lazy pull the manifest and config, and the
    // indexes unless S3 has them: never the original layers.
    let only_small_blobs = |mark: usize| {
        let beyond = images.blobs_beyond_indexes_since(mark);
        assert!(
            beyond.is_empty(),
            "the registry served {beyond:?}\n{}",
            log()
        );
    };

    // 1.x: a plain `ctr image pull` unpacks through `Image.Unpack`, which
    // passes no labels: our layers (indexes, not tars) cannot be unpacked,
    // and the pull says so. (Use `slayerfs pull` there.)
    if !v.is_2x() {
        let (ok, out) = ctr(
            TRANSFER,
            &[
                "image",
                "pull",
                "--plain-http",
                "--snapshotter",
                "slayerfs",
                &image,
            ],
        );
        assert!(
            !ok,
            "a 1.x ctr image pull of a converted image worked:\n{out}"
        );
        eprintln!(
            "1.x ctr image pull: {}",
            out.lines().last().unwrap_or_default()
        );
        remove_all();
    }

    // 2.x: a plain `ctr image pull` through the transfer service is lazy.
    if v.is_2x() {
        let lazy_before = lazy_layers(&paths);
        let mark = images.registry.mark();
        let hosts = dir.join("certs.d");
        let (ok, out) = ctr(
            TRANSFER,
            &[
                "image",
                "pull",
                "--snapshotter",
                "slayerfs",
                "--hosts-dir",
                hosts.to_str().unwrap(),
                &image,
            ],
        );
        assert!(ok, "{out}\n{}", log());
        assert_eq!(lazy_layers(&paths) - lazy_before, 2, "{out}\n{}", log());
        only_small_blobs(mark);
        let (ok, out) = run(TRANSFER, &image, "transferred", &["/bin/cat", "/etc/small"]);
        assert!(ok && out.contains("a small file"), "{out}\n{}", log());
        remove_all();
    }

    // CRI PullImage, as kubelet calls it: lazy, then a container runs.
    let cri_lazily = |name: &str| {
        let lazy_before = lazy_layers(&paths);
        let mark = images.registry.mark();
        let pulled = cri_pull_retrying(dir, &image).unwrap_or_else(|e| panic!("{e}\n{}", log()));
        assert!(pulled.starts_with("sha256:"), "{pulled}");
        assert_eq!(lazy_layers(&paths) - lazy_before, 2, "{}", log());
        only_small_blobs(mark);
        let (ok, out) = run(K8S, &image, name, &["/bin/cat", "/etc/small"]);
        assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    };
    cri_lazily("cri");

    // An image never converted, through CRI: unpacked through our mounts.
    let plain = format!("{reg}/plain:v2");
    cri_pull_blocking(dir, &plain).unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let (ok, out) = run(K8S, &plain, "cri-plain", &["/bin/cat", "/etc/extra"]);
    assert!(ok && out.contains("an extra layer"), "{out}\n{}", log());

    remove_all();

    // 2.x: CRI's local pull (annotations on, the transfer service off) is
    // lazy too.
    if v.is_2x() {
        drop(containerd);
        let local = Cri {
            registry: &reg,
            local_pull: true,
            sandbox_image: None,
        };
        containerd = v.start(dir, &paths.socket, Some(&local));
        cri_lazily("cri-local");
        remove_all();
    }
    drop(containerd);
    assert!(!paths.log_text().contains("panicked"), "{}", log());
}

/// PullImage, retried while the CRI plugin is still starting (it answers
/// Unavailable then).
fn cri_pull_retrying(dir: &Path, image: &str) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        match cri_pull_blocking(dir, image) {
            Err(e) if e.starts_with("Unavailable") && t0.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(300))
            }
            r => return r,
        }
    }
}

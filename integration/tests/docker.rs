//! Docker Engine on our snapshotter, real parts only: a private `dockerd`
//! (its own data-root, exec-root and socket; no iptables, no bridge) with
//! the containerd image store on a test containerd 2.x, `"storage-driver":
//! "slayerfs"`. `docker pull` of a converted image moves its config and
//! indexes, not its data; `docker run` reads a file; `docker commit` of a
//! changed container makes an image that runs; an image never converted
//! is pulled and unpacked through our mounts.

mod lazy_images;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lazy_images::{publish_images, BIG_MIB};
use slayerfs_integration::daemon::{start_snapshotter_with_env, SnapshotterPaths};
use slayerfs_integration::docker::Dockerd;
use slayerfs_integration::runtime::Containerd;

#[test]
fn docker_pulls_lazily_runs_and_commits_on_slayerfs() {
    let v = Containerd::V2;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = publish_images(dir);
    let reg = images.registry.addr.clone();
    let paths = SnapshotterPaths::in_dir(dir);
    let _snapshotter = start_snapshotter_with_env(&paths, &images.config, &images.env);
    let containerd = v.start(dir, &paths.socket, None);
    let dockerd = Dockerd::start(dir, v);
    let log = || {
        format!(
            "snapshotter log:\n{}\ndockerd log:\n{}",
            paths.log_text(),
            dockerd.log_text()
        )
    };
    let docker = |args: &[&str]| dockerd.docker(args);
    let (ok, info) = docker(&["info", "--format", "{{.Driver}} {{.ServerVersion}}"]);
    assert!(ok && info.contains("slayerfs"), "{info}\n{}", log());
    eprintln!("docker info: {info}");
    let s3_bytes = || images.s3.counters.get_bytes.load(Ordering::Relaxed);
    let lazy = || paths.log_text().matches("layer pulled lazily").count();

    // The pull: lazy, the registry serving manifest, config and indexes.
    let image = format!("{reg}/lazy:v1");
    let mark = images.registry.mark();
    let (before, lazy_before) = (s3_bytes(), lazy());
    let (ok, out) = docker(&["pull", &image]);
    assert!(ok, "{out}\n{}", log());
    assert_eq!(lazy() - lazy_before, 2, "{out}\n{}", log());
    let beyond = images.blobs_beyond_indexes_since(mark);
    assert!(
        beyond.is_empty(),
        "the registry served {beyond:?}\n{}",
        log()
    );
    let big = (BIG_MIB as u64) << 20;
    let pulled = s3_bytes() - before;
    assert!(
        pulled < big / 10,
        "the pull fetched {pulled} bytes\n{}",
        log()
    );

    // A container reads a file; it fetches about what it reads.
    let before = s3_bytes();
    let (ok, out) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "cat",
        "/etc/small",
    ]);
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    let ran = s3_bytes() - before;
    assert!(ran < big / 10, "the run fetched {ran} bytes\n{}", log());
    eprintln!("docker pull: {pulled} bytes from S3; docker run: {ran}");

    // Commit of a changed container: an image that runs, with the change.
    let (ok, out) = docker(&[
        "run",
        "--name",
        "changed",
        "--network",
        "none",
        &image,
        "sh",
        "-c",
        "echo changed > /etc/new && rm /etc/small",
    ]);
    assert!(ok, "{out}\n{}", log());
    let (ok, out) = docker(&["commit", "changed", "example.com/committed:v1"]);
    assert!(ok, "{out}\n{}", log());
    let (ok, out) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "example.com/committed:v1",
        "sh",
        "-c",
        "cat /etc/new; ls /etc/small 2>&1 || true",
    ]);
    assert!(
        ok && out.contains("changed") && out.contains("No such file"),
        "{out}\n{}",
        log()
    );

    // An image never converted: pulled and unpacked through our mounts.
    let plain = format!("{reg}/plain:v2");
    let (ok, out) = docker(&["pull", &plain]);
    assert!(ok, "{out}\n{}", log());
    let (ok, out) = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &plain,
        "cat",
        "/etc/extra",
    ]);
    assert!(ok && out.contains("an extra layer"), "{out}\n{}", log());

    // Removing it all leaves no snapshot in Docker's namespace.
    let (ok, out) = docker(&["rm", "-f", "changed"]);
    assert!(ok, "{out}");
    for i in [&image, &plain, &"example.com/committed:v1".to_string()] {
        let (ok, out) = docker(&["rmi", "-f", i]);
        assert!(ok, "{i}: {out}\n{}", log());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = v.ctr(
            dir,
            Some("moby"),
            &["snapshots", "--snapshotter", "slayerfs", "ls"],
        );
        assert!(ok, "{out}");
        if out.lines().count() <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots left:\n{out}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!paths.log_text().contains("panicked"), "{}", log());
    drop(dockerd);
    drop(containerd);
}

//! Lazy pull end to end, real parts only: an image converted into a real
//! S3 server on 127.0.0.1 and pushed to a real registry (Debian's
//! `docker-registry`), pulled by containerd's CRI plugin (the flow kubelet
//! and nerdctl use: layer annotations become Prepare labels) onto our
//! snapshotter, then run with `ctr` and runc. Only the layer indexes move at
//! pull time; a container reading one small file fetches about what it
//! reads; with S3 gone, what was read still reads and the rest is EIO,
//! until S3 is back. An image that was never converted, pulled the same
//! way, is unpacked through our mounts instead.

mod lazy_images;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lazy_images::*;
use slayerfs_integration::bins::bin;
use slayerfs_integration::daemon::{
    local_store, run_text, sh, start_containerd, start_snapshotter_with_env, write_config,
    Registry, SnapshotterPaths,
};
use slayerfs_integration::s3::S3Server;

#[test]
fn a_converted_image_pulled_through_cri_starts_without_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Images {
        s3,
        s3_root,
        registry,
        config,
        env,
        index_digests,
        index_bytes,
        config_digest,
    } = publish_images(dir);
    let mut s3 = s3;
    let s3_addr = s3.addr;

    let paths = SnapshotterPaths::in_dir(dir);
    let _snapshotter = start_snapshotter_with_env(&paths, &config, &env);
    let cri = format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "slayerfs"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{r}"]
    endpoint = ["http://{r}"]
"#,
        r = registry.addr
    );
    let _containerd = start_containerd(dir, &paths.socket, &cri);
    let log = || {
        format!(
            "snapshotter log:\n{}\ncontainerd log:\n{}",
            paths.log_text(),
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        )
    };

    // The pull moves the indexes and the config, not the data.
    let before_pull = s3.counters.get_bytes.load(Ordering::Relaxed);
    let mark = registry.mark();
    let image = format!("{}/lazy:v1", registry.addr);
    let t0 = Instant::now();
    // The CRI plugin may still be starting; it answers Unavailable then.
    let pulled = loop {
        match cri_pull_blocking(dir, &image) {
            Ok(r) => break r,
            Err(e) if e.starts_with("Unavailable") && t0.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(300))
            }
            Err(e) => panic!("PullImage: {e}\n{}", log()),
        }
    };
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let pull_bytes = s3.counters.get_bytes.load(Ordering::Relaxed) - before_pull;
    assert!(
        pull_bytes <= index_bytes,
        "the pull fetched {pull_bytes} bytes from S3; the indexes are {index_bytes}"
    );
    let (_, snaps) = ctr(dir, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
    assert_eq!(snaps.matches("Committed").count(), 2, "{snaps}\n{}", log());
    assert!(
        paths.log_text().contains("layer pulled lazily"),
        "{}",
        log()
    );
    let allowed: Vec<&String> = index_digests.iter().chain([&config_digest]).collect();
    for blob in registry.blobs_served_since(mark) {
        assert!(allowed.contains(&&blob), "the registry served blob {blob}");
    }

    // A container reading one small file fetches about what it reads: the
    // block holding busybox and the file, not the big file's.
    let before_run = s3.counters.get_bytes.load(Ordering::Relaxed);
    let (ok, out) = run(dir, K8S, &image, "c1", &["/bin/cat", "/etc/small"]);
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    let run_bytes = s3.counters.get_bytes.load(Ordering::Relaxed) - before_run;
    let read = std::fs::metadata("/bin/busybox").unwrap().len() + 13;
    eprintln!(
        "pull: {pull_bytes} bytes from S3 (indexes {index_bytes}); first run: {run_bytes} bytes for {read} read"
    );
    assert!(
        run_bytes < 2 * (read + index_bytes),
        "fetched {run_bytes} bytes for a container that read {read}"
    );
    assert!(
        run_bytes < ((BIG_MIB as u64) << 20) / 10,
        "fetched {run_bytes} bytes"
    );

    // S3 gone: what was read still reads; the big file fails with EIO in
    // bounded time; S3 back: it reads.
    drop(s3);
    let (ok, out) = run(dir, K8S, &image, "c2", &["/bin/cat", "/etc/small"]);
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    let t0 = Instant::now();
    let (ok, out) = run(
        dir,
        K8S,
        &image,
        "c3",
        &["/bin/head", "-c", "100", "/data/big"],
    );
    assert!(!ok, "read the big file with S3 down: {out}");
    assert!(
        out.contains("I/O error") || out.contains("Input/output error"),
        "{out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    s3 = S3Server::start_at(&s3_root, &["images"], s3_addr).unwrap();
    let (ok, out) = run(
        dir,
        K8S,
        &image,
        "c4",
        &["/bin/sh", "-c", "head -c 1000000 /data/big | wc -c"],
    );
    assert!(ok && out.trim() == "1000000", "{out}\n{}", log());
    drop(s3);

    // An image that was never converted still runs: the CRI plugin unpacks
    // it through our mounts.
    let plain = format!("{}/plain:v1", registry.addr);
    cri_pull_blocking(dir, &plain).unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let (ok, out) = run(dir, K8S, &plain, "c5", &["/bin/cat", "/etc/small"]);
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    assert!(!paths.log_text().contains("panicked"), "{}", log());
}

#[test]
fn slayerfs_pull_is_lazy_for_converted_images_and_unpacks_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = publish_images(dir);
    let paths = SnapshotterPaths::in_dir(dir);
    let _snapshotter = start_snapshotter_with_env(&paths, &images.config, &images.env);
    let _containerd = start_containerd(dir, &paths.socket, "");
    let log = || paths.log_text();
    let reg = &images.registry.addr;

    // The indexes are gone from S3 (only the blocks are there): the
    // snapshotter fetches them from the registry, where they are the
    // converted image's layers.
    std::fs::remove_dir_all(images.s3_root.join("images/indexes")).unwrap();
    let before = images.s3.counters.get_bytes.load(Ordering::Relaxed);
    let mark = images.registry.mark();
    let (ok, out) = slayerfs_pull(dir, &format!("{reg}/lazy:v1"));
    assert!(ok, "{out}\n{}", log());
    assert!(
        out.contains("layer 1/2") && out.contains("(2 layers: 2 lazily, 0 unpacked, 0 present)"),
        "{out}"
    );
    let fetched = images.s3.counters.get_bytes.load(Ordering::Relaxed) - before;
    assert_eq!(fetched, 0, "{fetched} bytes fetched from S3");
    let beyond = images.blobs_beyond_indexes_since(mark);
    assert!(beyond.is_empty(), "the registry served {beyond:?}");
    let served = images.registry.blobs_served_since(mark);
    assert!(served.contains(&images.index_digests[0]), "{served:?}");
    let (ok, out) = run(
        dir,
        None,
        &format!("{reg}/lazy:v1"),
        "p1",
        &["/bin/cat", "/etc/small"],
    );
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());

    // Pulling again finds everything there; --json says so to a script
    // (its progress lines on stderr, the summary alone on stdout).
    let out = Command::new(bin("slayerfs"))
        .args(["pull", "--json", &format!("{reg}/lazy:v1"), "--address"])
        .arg(dir.join("containerd.sock"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(
        summary["layers"],
        serde_json::json!({"total": 2, "lazy": 0, "unpacked": 0, "present": 2}),
        "{summary}"
    );
    assert_eq!(summary["image"], format!("{reg}/lazy:v1"), "{summary}");
    assert!(summary["chain_id"].as_str().unwrap().starts_with("sha256:"));
    assert!(stderr.contains("layer 1/2"), "{stderr}");

    // A never-converted image sharing the two layers: they are there, the
    // third is downloaded and unpacked by containerd through our mount.
    let (ok, out) = slayerfs_pull(dir, &format!("{reg}/plain:v2"));
    assert!(ok, "{out}\n{}", log());
    assert!(out.contains("0 lazily, 1 unpacked, 2 present"), "{out}");
    let (ok, out) = run(
        dir,
        None,
        &format!("{reg}/plain:v2"),
        "p2",
        &["/bin/cat", "/etc/extra", "/etc/small"],
    );
    assert!(
        ok && out.contains("an extra layer\na small file"),
        "{out}\n{}",
        log()
    );

    // An image the registry does not have: a clear error, nothing created.
    let (_, snaps_before) = ctr_default(dir, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
    let (ok, out) = slayerfs_pull(dir, &format!("{reg}/missing:v1"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("slayerfs:") && out.contains("missing") && out.contains("manifest unknown"),
        "{out}"
    );
    let (_, images_now) = ctr_default(dir, &["images", "ls", "-q"]);
    assert!(!images_now.contains("missing"), "{images_now}");
    let (_, snaps_after) = ctr_default(dir, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
    assert_eq!(snaps_before, snaps_after);

    // Converting from a registry that lacks the image, or from none at all:
    // a clear error, no destination made.
    let dead = format!("127.0.0.1:{}", slayerfs_integration::daemon::free_port());
    for (src, needle) in [
        (format!("docker://{reg}/missing:v1"), "manifest unknown"),
        (format!("docker://{dead}/x:v1"), "Connection refused"),
    ] {
        let (ok, err) = run_text(
            Command::new(bin("slayerfs"))
                .args(["convert", &src, "oci:out", "--quiet"])
                .env("SLAYERFS_CONFIG", &images.config)
                .envs(images.env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir),
        );
        assert!(!ok && err.contains(needle), "{src}: {err}");
        assert!(!dir.join("out").exists(), "{src}: a destination was made");
    }
    assert!(!log().contains("panicked"), "{}", log());
}

/// Adds to the layout in `dir` an image index tagged `tag` over the
/// manifests tagged `amd` and `arm`, as linux/amd64 and linux/arm64.
fn make_index(dir: &Path, tag: &str) {
    use sha2::Digest;
    let index_path = dir.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let find = |t: &str| -> serde_json::Value {
        top["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == t)
            .unwrap()
            .clone()
    };
    let entry = |t: &str, arch: &str| {
        let mut m = find(t);
        m.as_object_mut().unwrap().remove("annotations");
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("amd", "amd64"), entry("arm", "arm64")],
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    std::fs::write(dir.join("blobs/sha256").join(&hex), &bytes).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();
}

#[test]
fn multi_platform_images_convert_every_platform_or_the_one_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = &registry.addr;
    sh(
        r#"
        umoci init --layout img
        umoci new --image img:amd
        umoci unpack --image img:amd b
        mkdir -p b/rootfs/etc && echo amd > b/rootfs/etc/arch
        umoci repack --image img:amd b && rm -rf b
        umoci new --image img:arm
        umoci unpack --image img:arm b
        mkdir -p b/rootfs/etc && echo arm > b/rootfs/etc/arch
        umoci repack --image img:arm b && rm -rf b
        "#,
        dir,
        &[],
    );
    make_index(&dir.join("img"), "multi");
    let config = write_config(dir, &local_store(&dir.join("store")));
    let env = [("SLAYERFS_CONFIG", config.display().to_string())];
    let slayerfs = bin("slayerfs").display().to_string();
    sh(
        &format!(
            "skopeo copy -q --all --dest-tls-verify=false oci:img:multi docker://{reg}/multi:v1\n\
             {slayerfs} convert -q docker://{reg}/multi:v1 docker://{reg}/multi:slayerfs\n\
             {slayerfs} convert -q --platform linux/arm64 docker://{reg}/multi:v1 oci:arm:only\n"
        ),
        dir,
        &env,
    );

    // Every platform: an index of two converted manifests, platforms kept.
    let raw = sh(
        &format!("skopeo inspect --raw --tls-verify=false docker://{reg}/multi:slayerfs"),
        dir,
        &[],
    );
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    let arches: Vec<&str> = entries
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    for m in entries {
        let raw = sh(
            &format!(
                "skopeo inspect --raw --tls-verify=false docker://{reg}/multi@{}",
                m["digest"].as_str().unwrap()
            ),
            dir,
            &[],
        );
        let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
        for l in manifest["layers"].as_array().unwrap() {
            assert_eq!(
                l["mediaType"], "application/vnd.oci.image.layer.slayerfs.index.v1",
                "{raw}"
            );
        }
    }
    // One platform: a plain manifest, with that platform's files.
    let tree = sh(
        &format!("{slayerfs} inspect --tree oci:arm:only"),
        dir,
        &env,
    );
    assert!(tree.contains("etc/arch"), "{tree}");
    let arch = sh(
        &format!(
            "mkdir -p mnt && {slayerfs} mount --daemon oci:arm:only mnt >/dev/null\n\
             cat mnt/etc/arch; fusermount3 -u mnt"
        ),
        dir,
        &env,
    );
    assert_eq!(arch.trim(), "arm");
    // A platform the index lacks: a clear error.
    let (ok, err) = run_text(
        Command::new(bin("slayerfs"))
            .args(["convert", "-q", "--platform", "linux/s390x"])
            .arg(format!("docker://{reg}/multi:v1"))
            .arg("oci:none")
            .env("SLAYERFS_CONFIG", &config)
            .current_dir(dir),
    );
    assert!(!ok && err.contains("linux/s390x"), "{err}");
    assert!(!dir.join("none").exists());
}

//! End to end with real containerd and runc: an image imported through our
//! snapshotter (containerd unpacks it through our mounts and commits every
//! layer), containers run on our rootfs, writes stay in each container's
//! own snapshot, a SIGKILLed daemon comes back with every snapshot, and
//! removing the image leaves no mount behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slayerfs_integration::daemon::{self, sh, write_config, Proc, SnapshotterPaths};

fn start_snapshotter(dir: &Path) -> Proc {
    daemon::start_snapshotter(&SnapshotterPaths::in_dir(dir), &dir.join("slayerfs.toml"))
}

fn ctr(dir: &Path, args: &[&str]) -> (bool, String) {
    daemon::ctr_in(dir, None, args)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (success, text) = ctr(dir, args);
    assert!(
        success,
        "ctr {args:?}: {text}\nsnapshotter log:\n{}",
        std::fs::read_to_string(dir.join("snapshotter.log")).unwrap_or_default()
    );
    text
}

/// `ctr run --rm` of `cmd` in a new container `name` of the test image.
fn run_in(dir: &Path, name: &str, cmd: &[&str]) -> String {
    let (success, text) = daemon::ctr_run(dir, None, "test/img:v1", name, cmd);
    assert!(
        success,
        "ctr run {cmd:?}: {text}\nsnapshotter log:\n{}",
        std::fs::read_to_string(dir.join("snapshotter.log")).unwrap_or_default()
    );
    text
}

/// Three layers made with umoci: busybox and files; a second file and a
/// whiteout; a changed file.
fn build_image(dir: &Path) -> PathBuf {
    sh(
        r#"
        umoci init --layout img
        umoci new --image img:v1
        umoci unpack --image img:v1 b
        mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/tmp
        cp /bin/busybox b/rootfs/bin/busybox
        for a in sh cat ls echo; do ln -s busybox b/rootfs/bin/$a; done
        echo one > b/rootfs/etc/one
        echo doomed > b/rootfs/etc/doomed
        umoci repack --image img:v1 b && rm -rf b
        umoci unpack --image img:v1 b
        echo two > b/rootfs/etc/two
        rm b/rootfs/etc/doomed
        umoci repack --image img:v1 b && rm -rf b
        umoci unpack --image img:v1 b
        echo changed > b/rootfs/etc/one
        umoci repack --image img:v1 b && rm -rf b
        umoci config --image img:v1 --config.cmd /bin/sh
        tar -C img -cf img.tar .
        "#,
        dir,
        &[],
    );
    dir.join("img.tar")
}

/// Block files and index blobs of our snapshotter.
fn stored_objects(dir: &Path) -> (usize, usize) {
    daemon::stored_objects(&dir.join("snap"))
}

fn our_mounts(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

#[test]
fn containers_run_on_our_snapshots_and_survive_a_daemon_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_config(dir, "");
    let mut snapshotter = start_snapshotter(dir);
    let containerd = daemon::start_containerd(dir, &dir.join("snap.sock"), "");
    let image = build_image(dir);
    ok(
        dir,
        &[
            "images",
            "import",
            "--snapshotter",
            "slayerfs",
            "--index-name",
            "test/img:v1",
            image.to_str().unwrap(),
        ],
    );
    let snaps = ok(dir, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
    assert_eq!(snaps.matches("Committed").count(), 3, "{snaps}");
    let (blocks, indexes) = stored_objects(dir);
    assert!(
        blocks >= 1 && indexes == 4,
        "{blocks} blocks, {indexes} indexes"
    );

    let out = run_in(
        dir,
        "c1",
        &[
            "/bin/sh",
            "-c",
            "cat /etc/one /etc/two; ls /etc/doomed 2>&1; echo mine > /etc/new; cat /etc/new",
        ],
    );
    assert!(
        out.contains("changed\ntwo\n"),
        "files of several layers: {out}"
    );
    assert!(
        out.contains("/etc/doomed: No such file"),
        "whited out: {out}"
    );
    assert!(out.contains("mine"), "written and read back: {out}");
    let out = run_in(dir, "c2", &["/bin/sh", "-c", "ls /etc"]);
    assert!(
        !out.contains("new"),
        "a second container sees its own rootfs: {out}"
    );

    // SIGKILL: the snapshots are still there after a restart, and a new
    // container runs.
    snapshotter.0.kill().unwrap();
    snapshotter.0.wait().unwrap();
    snapshotter = start_snapshotter(dir);
    // containerd's connection to the proxy comes back on its own, after
    // a reconnect back-off. (`snapshots ls` reads containerd's own
    // records; a Prepare reaches the daemon.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctr(
        dir,
        &["snapshots", "--snapshotter", "slayerfs", "prepare", "probe"],
    )
    .0
    {
        assert!(Instant::now() < deadline, "containerd never reconnected");
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(
        dir,
        &["snapshots", "--snapshotter", "slayerfs", "rm", "probe"],
    );
    let again = ok(dir, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
    assert_eq!(again.matches("Committed").count(), 3, "{again}");
    let out = run_in(dir, "c3", &["/bin/cat", "/etc/two"]);
    assert_eq!(out.trim(), "two");

    // Removing the image (the import names it twice: ours and the layout's
    // own tag) removes its snapshots and leaves no mount.
    for name in ok(dir, &["images", "ls", "-q"]).lines() {
        ok(dir, &["images", "rm", "--sync", name]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ok(dir, &["snapshots", "--snapshotter", "slayerfs", "ls"]);
        if !left.contains("Committed") && !left.contains("Active") {
            break;
        }
        assert!(Instant::now() < deadline, "snapshots left: {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(our_mounts(dir), Vec::<String>::new());
    // containerd's garbage collection calls our Cleanup: every block and
    // index of the image goes; the empty base layer's index stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_objects(dir) != (0, 1) {
        assert!(
            Instant::now() < deadline,
            "objects left after removing the image: {:?}",
            stored_objects(dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(containerd);
    drop(snapshotter);
    let log = std::fs::read_to_string(dir.join("snapshotter.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

//! What a crash may break, and what it must not. A stand-in container
//! storms a snapshot's mount (names churned by two threads, files made
//! durable with fsync, directly or by rename), the daemon and the fd holder
//! are killed with SIGKILL at a random point (so the connection is gone
//! and the next daemon mounts the snapshot fresh from what it wrote), and
//! the mount is checked: every name points at an inode, link counts are
//! right, every file reads, every fsynced file holds its bytes. Then the
//! storm goes on over what is there, for the next crash.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use slayerfs_integration::bins::bin;
use slayerfs_integration::snapshots_api::{holder_pids, mounts, prepare, Daemon};

/// Crashes per run (more by hand: `SLAYERFS_CRASH_POINTS=200`).
fn crash_points() -> u64 {
    std::env::var("SLAYERFS_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn verify(mp: &str, log: &Path) -> (bool, String) {
    let out = Command::new(bin("slayerfs-fs-workload"))
        .args(["verify", mp])
        .arg(log)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_breaks_no_invariant() {
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(tmp.path());
    let log = tmp.path().join("durable.log");
    let mut c = daemon.client().await;
    prepare(&mut c, "box", "").await.unwrap();
    // A small generator of its own: the crash points differ between runs;
    // a failure prints the seed, SLAYERFS_CRASH_SEED gives it back.
    let seed = std::env::var("SLAYERFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or((std::process::id() as u64 * 2_654_435_761) ^ 0x5eed);
    let mut rng = seed;
    let mut durable = 0;
    let mut last = String::new();
    for point in 0..crash_points() {
        let mp = mounts(&mut c, "box").await.unwrap();
        let mut storm = Command::new(bin("slayerfs-fs-workload"))
            .args(["crash", &mp])
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(100 + rng % 900);
        tokio::time::sleep(delay).await;
        daemon.stop_with(libc::SIGKILL);
        for pid in holder_pids(&daemon.paths.root) {
            // SAFETY: a holder this test's daemon started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // The connection is gone: the storm's next operation fails.
        let _ = tokio::task::spawn_blocking(move || storm.wait()).await;
        daemon.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
        c = daemon.client().await;
        let mp = mounts(&mut c, "box").await.unwrap();
        let (ok, out) = {
            let (mp, log) = (mp.clone(), log.clone());
            tokio::task::spawn_blocking(move || verify(&mp, &log))
                .await
                .unwrap()
        };
        assert!(
            ok,
            "crash point {point} (seed {seed}, after {delay:?}) broke an invariant:\n{out}\nsnapshotter log:\n{}",
            daemon.paths.log_text()
        );
        last = out.trim().to_string();
        durable = out
            .lines()
            .find_map(|l| l.split(' ').find_map(|w| w.strip_prefix("durable=")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    eprintln!(
        "{} crash points, 0 invariants broken; last check: {last}",
        crash_points()
    );
    assert!(durable > 0, "nothing was made durable: the storm never ran");
}

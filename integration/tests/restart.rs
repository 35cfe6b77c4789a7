//! The daemon restarts under a working container and the container sees
//! nothing: its FUSE connection waits in the fd holder, the next daemon
//! takes it over and the kernel sends again what was in flight. A process
//! standing in for a container works on a snapshot's mount (its cwd there,
//! a lower file open and mapped, a journal written through one descriptor
//! and read back, names created, renamed, listed and removed) while the
//! daemon is killed with SIGKILL, stopped with SIGTERM, and replaced by a
//! copy of its binary at another path; then containerd's calls still work
//! and nothing is left behind once it is stopped for good.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use slayerfs_integration::bins::bin;
use slayerfs_integration::snapshots_api::{
    commit, holder_pids, mounts_under, prepare, remove, Client, Daemon,
};
use slayerfs_integration::workload::{assert_journal, Workload};

const LOWER_BYTES: u64 = 12 << 20;

/// A committed layer holding `lower` (the workload's pattern) and an
/// active snapshot `key` over it: its mount point.
async fn snapshot_over_a_lower_file(c: &mut Client, key: &str) -> String {
    let base = prepare(c, "base-work", "").await.unwrap();
    let lower = format!("{base}/lower");
    let ok = Command::new(bin("slayerfs-fs-workload"))
        .args(["fill", &lower, &LOWER_BYTES.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    commit(c, "base", "base-work").await.unwrap();
    prepare(c, key, "base").await.unwrap()
}

/// How long the daemon serves between two restarts of the loop.
fn gap_ms() -> u64 {
    std::env::var("RESTART_GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_container_sees_nothing_of_a_kill_a_restart_or_an_upgrade() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut daemon = Daemon::start_restartable(dir, "", &[]);
    let mut c = daemon.client().await;
    let mp = snapshot_over_a_lower_file(&mut c, "ctr").await;
    let work = Workload::start(&mp, &format!("{mp}/lower"), &dir.join("stop"), 0);
    let pause = Duration::from_millis(700);

    std::thread::sleep(pause);
    daemon.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
    std::thread::sleep(pause);
    daemon.restart(libc::SIGTERM, &bin("slayerfs-snapshotter"));
    std::thread::sleep(pause);
    // An upgrade: another binary, at another path (a copy of this build,
    // or the build SLAYERFS_UPGRADE_TO names, to try one build against
    // another by hand).
    let upgrade = dir.join("upgrade");
    std::fs::create_dir_all(&upgrade).unwrap();
    let copy = upgrade.join("slayerfs-snapshotter");
    let new_build = std::env::var_os("SLAYERFS_UPGRADE_TO")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin("slayerfs-snapshotter"));
    std::fs::copy(new_build, &copy).unwrap();
    daemon.restart(libc::SIGTERM, &copy);
    std::thread::sleep(pause);

    let (out, records) = work.finish(&daemon);
    assert!(!out.contains("FAIL"), "{out}\n{}", daemon.paths.log_text());
    assert!(records > 20, "the workload hardly ran: {out}");
    assert_journal(&mp, records);
    let log = daemon.paths.log_text();
    assert!(
        log.matches("taking over the FUSE connection").count() >= 3
            && !log.contains("detaching a stale mount"),
        "a mount was made again instead of taken over:\n{log}"
    );

    // containerd's calls work on the snapshots the restarts left.
    let mut c = daemon.client().await;
    let next = prepare(&mut c, "next", "base").await.unwrap();
    std::fs::write(format!("{next}/made-after"), b"after").unwrap();
    commit(&mut c, "next-layer", "next").await.unwrap();
    let view = prepare(&mut c, "on-next", "next-layer").await.unwrap();
    assert_eq!(
        std::fs::read(format!("{view}/made-after")).unwrap(),
        b"after"
    );
    for key in ["on-next", "next-layer", "ctr"] {
        remove(&mut c, key).await.unwrap();
    }
    let root = daemon.paths.root.clone();
    drop(c);
    drop(daemon);
    assert_eq!(mounts_under(dir), 0, "mounts left after the last stop");
    assert_eq!(
        holder_pids(&root),
        Vec::<u32>::new(),
        "the fd holder is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_restarts_in_a_storm_of_changes_fail_nothing_and_leak_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut daemon = Daemon::start_restartable(dir, "", &[]);
    let mut c = daemon.client().await;
    let mp = snapshot_over_a_lower_file(&mut c, "ctr").await;
    let other = prepare(&mut c, "other", "base").await.unwrap();
    drop(c);
    // Names change as fast as three threads can change them: restarts land
    // in the middle of creates, links, renames and unlinks, which the
    // kernel then sends again.
    let work = Workload::start(&mp, &format!("{mp}/lower"), &dir.join("stop"), 3);
    let root = daemon.paths.root.clone();
    let mounts_before = mounts_under(dir);
    let holders = holder_pids(&root);
    assert_eq!(holders.len(), 1, "one fd holder");
    let holder_fds = open_fds(holders[0]);
    for round in 0..20 {
        let signal = if round % 2 == 0 {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        daemon.restart(signal, &bin("slayerfs-snapshotter"));
        std::thread::sleep(Duration::from_millis(gap_ms()));
    }
    let (out, records) = work.finish(&daemon);
    assert!(!out.contains("FAIL"), "{out}\n{}", daemon.paths.log_text());
    assert_journal(&mp, records);
    assert_eq!(mounts_under(dir), mounts_before, "mounts after 20 restarts");
    assert_eq!(holder_pids(&root), holders, "the same single fd holder");
    assert_eq!(open_fds(holders[0]), holder_fds, "the holder's descriptors");
    let daemon_fds = open_fds(daemon.pid().unwrap());
    daemon.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
    assert!(
        open_fds(daemon.pid().unwrap()) <= daemon_fds + 2,
        "a restarted daemon holds more descriptors than the one before"
    );
    std::fs::write(format!("{other}/still-works"), b"yes").unwrap();
    assert_eq!(
        std::fs::read(format!("{other}/still-works")).unwrap(),
        b"yes"
    );

    // The holder killed: the daemon starts another and hands it every
    // connection, so that its own next crash is survived too.
    // SAFETY: signalling a process this test's daemon started.
    unsafe { libc::kill(holders[0] as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let new_holder = loop {
        let pids = holder_pids(&root);
        if pids.len() == 1 && pids != holders {
            break pids[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new fd holder: {pids:?}\n{}",
            daemon.paths.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_fds(new_holder) < holder_fds {
        assert!(
            std::time::Instant::now() < deadline,
            "the new holder did not get the connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
    assert_eq!(
        std::fs::read(format!("{other}/still-works")).unwrap(),
        b"yes",
        "after the holder was replaced"
    );
    assert!(
        daemon.paths.log_text().contains("the fd holder had gone"),
        "{}",
        daemon.paths.log_text()
    );
    drop(daemon);
    assert_eq!(mounts_under(dir), 0, "mounts left after the last stop");
    assert_eq!(
        holder_pids(&root),
        Vec::<u32>::new(),
        "the fd holder is still running"
    );
}

/// Whether `file` holds `len` bytes of the workload's pattern (as the
/// workload itself checks it).
fn holds_pattern(file: &str, len: u64) -> bool {
    Command::new(bin("slayerfs-fs-workload"))
        .args(["check", file, &len.to_string()])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_commit_leaves_the_snapshot_active_or_committed_whole() {
    use containerd_snapshots::api::snapshots::v1::CleanupRequest;
    use slayerfs_integration::daemon::stored_objects;
    use slayerfs_integration::snapshots_api::{state, NAME};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut daemon = Daemon::start_restartable(dir, "", &[]);
    let mut c = daemon.client().await;
    prepare(&mut c, "base-work", "").await.unwrap();
    commit(&mut c, "base", "base-work").await.unwrap();
    let baseline = stored_objects(&daemon.paths.root);
    const BYTES: u64 = 48 << 20;
    let (mut active, mut committed) = (0, 0);
    for (round, delay_ms) in [0u64, 30, 100, 250, 500, 900].into_iter().enumerate() {
        let key = format!("work-{round}");
        let layer = format!("layer-{round}");
        let mp = prepare(&mut c, &key, "base").await.unwrap();
        let file = format!("{mp}/data");
        let filled = Command::new(bin("slayerfs-fs-workload"))
            .args(["fill", &file, &BYTES.to_string()])
            .status()
            .unwrap();
        assert!(filled.success());
        let mut c2 = daemon.client().await;
        let (k2, l2) = (key.clone(), layer.clone());
        let committing = tokio::spawn(async move { commit(&mut c2, &l2, &k2).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
        let _ = committing.await;
        c = daemon.client().await;
        let names: Vec<(String, i32)> = state(&mut c)
            .await
            .into_iter()
            .map(|s| (s.0, s.1))
            .collect();
        let has = |n: &str| names.iter().any(|(k, _)| k == n);
        match (has(&key), has(&layer)) {
            (true, false) => {
                // Not committed: the changes are all there, and a commit
                // now succeeds.
                active += 1;
                assert!(
                    holds_pattern(&file, BYTES),
                    "round {round}: the active snapshot lost data"
                );
                commit(&mut c, &layer, &key).await.unwrap();
            }
            (false, true) => committed += 1,
            other => panic!("round {round} (kill after {delay_ms} ms): {other:?} in {names:?}"),
        }
        let view = prepare(&mut c, &format!("check-{round}"), &layer)
            .await
            .unwrap();
        assert!(
            holds_pattern(&format!("{view}/data"), BYTES),
            "round {round}: the committed layer is not whole"
        );
        remove(&mut c, &format!("check-{round}")).await.unwrap();
        remove(&mut c, &layer).await.unwrap();
    }
    assert!(
        active + committed == 6,
        "{active} active, {committed} committed"
    );
    // Whatever the killed commits left half made is garbage: collected.
    // (A kill lands inside a block's write only sometimes: one such write
    // of a process that is gone is planted, so that its removal is tested
    // every time.)
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let fan = daemon.paths.root.join("blocks/blocks/00");
    std::fs::create_dir_all(&fan).unwrap();
    std::fs::write(fan.join(format!(".tmp-{gone_pid}-planted")), [0u8; 4096]).unwrap();
    c.cleanup(CleanupRequest {
        snapshotter: NAME.into(),
    })
    .await
    .unwrap();
    assert_eq!(
        stored_objects(&daemon.paths.root),
        baseline,
        "objects left by killed commits"
    );
    let left: Vec<String> = state(&mut c).await.into_iter().map(|s| s.0).collect();
    assert_eq!(left, vec!["base".to_string()]);
    eprintln!(
        "kills during commit: {active} left the snapshot active, {committed} after it committed"
    );
}

/// SIGTERM while a long Commit runs (a large unpack) stops the daemon in
/// bounded time: the Commit is abandoned like a crash would abandon it
/// (nothing recorded), everything is unmounted (with `--unmount-on-exit`),
/// and the next start commits the snapshot whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_commit_stops_in_bounded_time() {
    use slayerfs_integration::snapshots_api::state;
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(tmp.path());
    let mut c = daemon.client().await;
    let mp = prepare(&mut c, "big-work", "").await.unwrap();
    let bytes = (768u64 << 20).to_string();
    let file = format!("{mp}/big");
    let filled = Command::new(bin("slayerfs-fs-workload"))
        .args(["fill", &file, &bytes])
        .status()
        .unwrap();
    assert!(filled.success());
    let mut c2 = daemon.client().await;
    let committing = tokio::spawn(async move { commit(&mut c2, "big", "big-work").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = std::time::Instant::now();
    daemon.stop_with(libc::SIGTERM);
    let stopped = t0.elapsed();
    let _ = committing.await;
    assert!(
        stopped < Duration::from_secs(15),
        "the daemon took {stopped:?} to stop\n{}",
        daemon.paths.log_text()
    );
    assert_eq!(mounts_under(&daemon.paths.root), 0, "left mounted");
    daemon.restart(libc::SIGTERM, &bin("slayerfs-snapshotter"));
    c = daemon.client().await;
    let names: Vec<String> = state(&mut c).await.into_iter().map(|s| s.0).collect();
    if names.contains(&"big-work".to_string()) {
        commit(&mut c, "big", "big-work").await.unwrap();
    }
    let v = prepare(&mut c, "check", "big").await.unwrap();
    let ok = Command::new(bin("slayerfs-fs-workload"))
        .args(["check", &format!("{v}/big"), &bytes])
        .status()
        .unwrap();
    assert!(ok.success(), "the committed layer reads back wrong");
}

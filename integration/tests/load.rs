//! One container never stalls the node: while a Commit of a 1 GiB upper
//! (an unpack of a large layer, as containerd does it) is running, 16
//! stand-in containers read and write their mounts, 4 clients cycle
//! Prepare/Commit/Remove and garbage collections run back to back; every
//! operation succeeds, Prepares complete before the big Commit does, and
//! afterwards every layer reads back right.
//!
//! How long Prepares take under this load against idle is the benchmark's
//! (`scripts/bench.sh load`), not this test's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::api::snapshots::v1::CleanupRequest;
use slayerfs_integration::snapshots_api::{commit, prepare, remove, Daemon, NAME};
use slayerfs_integration::workload::{assert_journal, commit_lower_image, run_workload, Workload};

const LOWER_BYTES: u64 = 12 << 20;
const CONTAINERS: usize = 16;
const CLIENTS: usize = 4;

/// The size of the big upper, in MiB (1 GiB unless told otherwise).
fn unpack_mib() -> u64 {
    std::env::var("SLAYERFS_LOAD_UNPACK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepares_go_on_while_a_big_commit_collections_and_containers_run() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path());
    let mut c = daemon.client().await;

    // The image every container stands on.
    commit_lower_image(&mut c, "image", LOWER_BYTES).await;

    // The big upper, written before the load starts.
    let big = prepare(&mut c, "big-work", "image").await.unwrap();
    let big_bytes = (unpack_mib() << 20).to_string();
    let big_file = format!("{big}/big");
    let filled = {
        let (f, n) = (big_file.clone(), big_bytes.clone());
        tokio::task::spawn_blocking(move || run_workload(&["fill", &f, &n]))
    };
    assert!(filled.await.unwrap(), "filling the big upper");

    let mut containers = Vec::new();
    for i in 0..CONTAINERS {
        let mp = prepare(&mut c, &format!("c{i}"), "image").await.unwrap();
        let stop = tmp.path().join(format!("stop-{i}"));
        containers.push((
            mp.clone(),
            Workload::start(&mp, &format!("{mp}/lower"), &stop, 0),
        ));
    }

    // The big Commit.
    let committing = {
        let mut c = daemon.client().await;
        tokio::spawn(async move { commit(&mut c, "big", "big-work").await })
    };
    let committed = Arc::new(AtomicBool::new(false));
    let watch = {
        let done = committed.clone();
        tokio::spawn(async move {
            let r = committing.await.unwrap();
            done.store(true, Ordering::SeqCst);
            r
        })
    };

    // Collections back to back until the clients are done.
    let clients_done = Arc::new(AtomicBool::new(false));
    let collector = {
        let (mut c, done) = (daemon.client().await, clients_done.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !done.load(Ordering::SeqCst) {
                c.cleanup(CleanupRequest {
                    snapshotter: NAME.into(),
                })
                .await
                .map_err(|e| format!("cleanup: {e}"))?;
                runs += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, String>(runs)
        })
    };

    // Clients cycling Prepare / write / Commit / Remove.
    let before_big = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let mut c = daemon.client().await;
        let (committed, before_big) = (committed.clone(), before_big.clone());
        clients.push(tokio::spawn(async move {
            for round in 0..6 {
                let key = format!("cycle-{n}-{round}");
                let mp = prepare(&mut c, &key, "image")
                    .await
                    .map_err(|e| format!("prepare {key}: {e}"))?;
                if !committed.load(Ordering::SeqCst) {
                    before_big.fetch_add(1, Ordering::SeqCst);
                }
                let data = format!("round {round} of client {n}");
                std::fs::write(Path::new(&mp).join("note"), &data)
                    .map_err(|e| format!("writing in {key}: {e}"))?;
                let name = format!("{key}-layer");
                commit(&mut c, &name, &key)
                    .await
                    .map_err(|e| format!("commit {key}: {e}"))?;
                // The layer reads back before it goes.
                let view = format!("{key}-check");
                let vp = prepare(&mut c, &view, &name)
                    .await
                    .map_err(|e| format!("prepare {view}: {e}"))?;
                let back = std::fs::read_to_string(Path::new(&vp).join("note"))
                    .map_err(|e| format!("reading {view}: {e}"))?;
                if back != data {
                    return Err(format!("{view}: {back:?}, not {data:?}"));
                }
                remove(&mut c, &view)
                    .await
                    .map_err(|e| format!("remove {view}: {e}"))?;
                remove(&mut c, &name)
                    .await
                    .map_err(|e| format!("remove {name}: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for client in clients {
        client
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.paths.log_text()));
    }
    let prepared_during = before_big.load(Ordering::SeqCst);
    clients_done.store(true, Ordering::SeqCst);
    let runs = collector
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.paths.log_text()));
    watch
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the big commit: {e}\n{}", daemon.paths.log_text()));
    eprintln!(
        "{prepared_during} of {} prepares completed while the big commit ran; {runs} collections",
        CLIENTS * 6
    );
    assert!(
        prepared_during >= CLIENTS,
        "only {prepared_during} prepares completed while the big commit ran"
    );
    assert!(runs > 0);

    for (mp, w) in containers {
        let (_, records) = w.finish(&daemon);
        assert_journal(&mp, records);
    }
    // The big layer holds what was written.
    let check = prepare(&mut c, "big-check", "big").await.unwrap();
    let ok = {
        let f = format!("{check}/big");
        tokio::task::spawn_blocking(move || run_workload(&["check", &f, &big_bytes]))
    };
    assert!(ok.await.unwrap(), "the big layer reads back wrong");
    assert!(!daemon.paths.log_text().contains("panicked"));
}

//! The snapshots gRPC API of the real daemon, through a gRPC client on its
//! unix socket (what containerd's proxy plugin does): the error codes
//! containerd expects for bad requests, with the records unchanged after
//! each; usage; records and mounts after a SIGKILL; many clients at once;
//! and garbage collection down to the empty base layer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::Code;
use slayerfs_integration::daemon::stored_objects;
use slayerfs_integration::snapshots_api::{
    code, commit, mounts, mounts_under, prepare, remove, state, Daemon, NAME,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_containerd_codes_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(tmp.path());
    let mut c = daemon.client().await;

    let fs = prepare(&mut c, "a", "").await.unwrap();
    std::fs::write(Path::new(&fs).join("one"), vec![7u8; 5 << 20]).unwrap();
    commit(&mut c, "c1", "a").await.unwrap();
    c.view(ViewSnapshotRequest {
        snapshotter: NAME.into(),
        key: "v".into(),
        parent: "c1".into(),
        labels: HashMap::new(),
    })
    .await
    .unwrap();
    let act = prepare(&mut c, "act", "c1").await.unwrap();
    let before = state(&mut c).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let big: HashMap<String, String> = [("k".to_string(), "x".repeat(5000))].into();
    let cases: Vec<(&str, Code, Code)> = vec![
        (
            "stat unknown",
            code(
                c.stat(StatSnapshotRequest {
                    snapshotter: NAME.into(),
                    key: "nope".into(),
                })
                .await,
            ),
            Code::NotFound,
        ),
        (
            "mounts unknown",
            code(mounts(&mut c, "nope").await),
            Code::NotFound,
        ),
        (
            "remove unknown",
            code(remove(&mut c, "nope").await),
            Code::NotFound,
        ),
        (
            "commit unknown",
            code(commit(&mut c, "x", "nope").await),
            Code::NotFound,
        ),
        (
            "parent missing",
            code(prepare(&mut c, "b", "nope").await),
            Code::NotFound,
        ),
        (
            "parent not committed",
            code(prepare(&mut c, "b", "act").await),
            Code::InvalidArgument,
        ),
        (
            "commit of a view",
            code(commit(&mut c, "x", "v").await),
            Code::FailedPrecondition,
        ),
        (
            "mounts of a committed snapshot",
            code(mounts(&mut c, "c1").await),
            Code::FailedPrecondition,
        ),
        (
            "duplicate key",
            code(prepare(&mut c, "act", "").await),
            Code::AlreadyExists,
        ),
        (
            "commit onto an existing name",
            code(commit(&mut c, "c1", "act").await),
            Code::AlreadyExists,
        ),
        (
            "remove with children",
            code(remove(&mut c, "c1").await),
            Code::FailedPrecondition,
        ),
        (
            "labels over the limit",
            code(
                c.prepare(PrepareSnapshotRequest {
                    snapshotter: NAME.into(),
                    key: "big".into(),
                    parent: String::new(),
                    labels: big,
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "update of an unknown field",
            code(
                c.update(UpdateSnapshotRequest {
                    snapshotter: NAME.into(),
                    info: Some(Info {
                        name: "act".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["parent".into()],
                    }),
                })
                .await,
            ),
            Code::InvalidArgument,
        ),
        (
            "bad filter",
            // The error comes as the stream's first message.
            code(
                c.list(ListSnapshotsRequest {
                    snapshotter: NAME.into(),
                    filters: vec!["name~=\"a\"".into()],
                })
                .await
                .unwrap()
                .into_inner()
                .message()
                .await,
            ),
            Code::InvalidArgument,
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }
    assert_eq!(
        state(&mut c).await,
        before,
        "state changed by refused requests"
    );
    // State directories: the view's and the active snapshot's only.
    assert_eq!(
        daemon
            .paths
            .root
            .join("snapshots")
            .read_dir()
            .unwrap()
            .count(),
        2,
        "state made for a refused request"
    );

    // Usage: the active snapshot holds the 3 MiB written through it; the
    // committed one its file.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(Path::new(&act).join("two")).unwrap();
        f.write_all(&vec![1u8; 3 << 20]).unwrap();
        // What is fsynced survives a SIGKILL of the daemon (like a power
        // cut for a kernel filesystem, later writes may be lost).
        f.sync_all().unwrap();
    }
    let u = c
        .usage(UsageRequest {
            snapshotter: NAME.into(),
            key: "act".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        u.size >= 3 << 20 && u.size < 4 << 20 && u.inodes >= 1,
        "{u:?}"
    );
    let u = c
        .usage(UsageRequest {
            snapshotter: NAME.into(),
            key: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((u.size, u.inodes), (5 << 20, 2), "committed usage");

    // After a SIGKILL: the same records, the active snapshot mounted again
    // with what was written.
    daemon.kill_and_restart();
    let mut c = daemon.client().await;
    assert_eq!(state(&mut c).await, before);
    let act = mounts(&mut c, "act").await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&act).join("two")).unwrap(),
        vec![1u8; 3 << 20]
    );
    assert_eq!(
        std::fs::read(Path::new(&act).join("one")).unwrap().len(),
        5 << 20
    );

    // Everything removed and collected: only the empty base layer's index
    // is left, and no mount.
    let (blocks, indexes) = stored_objects(&daemon.paths.root);
    assert!(
        blocks >= 2 && indexes == 2,
        "{blocks} blocks, {indexes} indexes"
    );
    for key in ["act", "v", "c1"] {
        remove(&mut c, key).await.unwrap();
    }
    c.cleanup(CleanupRequest {
        snapshotter: NAME.into(),
    })
    .await
    .unwrap();
    assert_eq!(stored_objects(&daemon.paths.root), (0, 1));
    assert_eq!(
        daemon
            .paths
            .root
            .join("snapshots")
            .read_dir()
            .unwrap()
            .count(),
        0
    );
    assert_eq!(mounts_under(&daemon.paths.root), 0);
    assert!(!daemon.paths.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_keep_the_records_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(tmp.path());
    let mut c = daemon.client().await;
    let fs = prepare(&mut c, "a", "").await.unwrap();
    std::fs::write(Path::new(&fs).join("f"), b"base").unwrap();
    commit(&mut c, "base", "a").await.unwrap();

    const CLIENTS: usize = 8;
    const ROUNDS: usize = 10;
    let winners = Arc::new(std::sync::Mutex::new(vec![0usize; ROUNDS]));
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let mut c = daemon.client().await;
        let winners = winners.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ROUNDS {
                let key = format!("k-{n}-{i}");
                let fs = prepare(&mut c, &key, "base").await.unwrap();
                assert_eq!(mounts(&mut c, &key).await.unwrap(), fs);
                assert_eq!(std::fs::read(Path::new(&fs).join("f")).unwrap(), b"base");
                // Every client races for the same key: one wins.
                match prepare(&mut c, &format!("shared-{i}"), "base").await {
                    Ok(_) => winners.lock().unwrap()[i] += 1,
                    Err(s) => assert_eq!(s.code(), Code::AlreadyExists, "{s:?}"),
                }
                // The parent cannot go while children exist.
                assert_eq!(code(remove(&mut c, "base").await), Code::FailedPrecondition);
                remove(&mut c, &key).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*winners.lock().unwrap(), vec![1; ROUNDS]);
    let left: Vec<String> = state(&mut c).await.into_iter().map(|s| s.0).collect();
    let mut want: Vec<String> = (0..ROUNDS).map(|i| format!("shared-{i}")).collect();
    want.push("base".into());
    want.sort();
    assert_eq!(left, want);
    for i in 0..ROUNDS {
        remove(&mut c, &format!("shared-{i}")).await.unwrap();
    }
    assert_eq!(mounts_under(&daemon.paths.root), 0);

    daemon.kill_and_restart();
    let mut c = daemon.client().await;
    let left: Vec<String> = state(&mut c).await.into_iter().map(|s| s.0).collect();
    assert_eq!(left, vec!["base".to_string()]);
    assert_eq!(mounts_under(&daemon.paths.root), 0);
    assert_eq!(
        daemon
            .paths
            .root
            .join("snapshots")
            .read_dir()
            .unwrap()
            .count(),
        0
    );
}

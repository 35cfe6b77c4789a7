//! The snapshots gRPC API of the real daemon, through a gRPC client on its
//! unix socket (what containerd's proxy plugin does): the error codes
//! containerd expects for bad requests, with the records unchanged after
//! each; usage; records and mounts after a SIGKILL; many clients at once;
//! and garbage collection down to the empty base layer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::{Code, Status};
use slayerfs_integration::daemon::{start_snapshotter, stored_objects, Proc, SnapshotterPaths};

type Client = SnapshotsClient<Channel>;

const NAME: &str = "slayerfs";

struct Daemon {
    paths: SnapshotterPaths,
    config: PathBuf,
    proc: Option<Proc>,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, "")
    }

    /// With `extra` appended to the configuration file.
    fn start_with(dir: &Path, extra: &str) -> Daemon {
        let config = dir.join("slayerfs.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n{extra}",
                dir.join("state").display().to_string()
            ),
        )
        .unwrap();
        let paths = SnapshotterPaths::in_dir(dir);
        let proc = Some(start_snapshotter(&paths, &config));
        Daemon {
            paths,
            config,
            proc,
        }
    }

    fn kill_and_restart(&mut self) {
        let mut p = self.proc.take().unwrap();
        p.0.kill().unwrap();
        p.0.wait().unwrap();
        self.proc = Some(start_snapshotter(&self.paths, &self.config));
    }

    async fn client(&self) -> Client {
        let sock = self.paths.socket.clone();
        let channel = Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(sock.clone())
            }))
            .await
            .unwrap();
        SnapshotsClient::new(channel)
    }
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<String, Status> {
    let r = c
        .prepare(PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        })
        .await?
        .into_inner();
    assert_eq!(r.mounts.len(), 1, "{r:?}");
    Ok(r.mounts[0].source.clone())
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), Status> {
    c.commit(CommitSnapshotRequest {
        snapshotter: NAME.into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

async fn remove(c: &mut Client, key: &str) -> Result<(), Status> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: NAME.into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

async fn mounts(c: &mut Client, key: &str) -> Result<String, Status> {
    let r = c
        .mounts(MountsRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        })
        .await?
        .into_inner();
    Ok(r.mounts[0].source.clone())
}

/// Every snapshot as (name, kind, parent, labels), sorted.
async fn state(c: &mut Client) -> Vec<(String, i32, String, BTreeMap<String, String>)> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: NAME.into(),
            filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        for i in r.info {
            out.push((i.name, i.kind, i.parent, i.labels.into_iter().collect()));
        }
    }
    out.sort();
    out
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            assert!(!s.message().is_empty(), "an error without a message");
            s.code()
        }
    }
}

fn mounts_under(dir: &Path) -> usize {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .count()
}

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

/// A one-file layer converted into the local store at `store`; returns the
/// index digest and blob.
async fn converted_layer(store: &Path, content: &[u8]) -> (String, Vec<u8>) {
    use slayerfs_chunkstore::{BlockStore, LocalStore, ObjectKey, WriterOptions};
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "hello", content).unwrap();
    let tar = b.into_inner().unwrap();
    let local: Arc<dyn BlockStore> = Arc::new(LocalStore::open(store).unwrap());
    let opts = WriterOptions {
        workers: 1,
        zstd_level: 3,
    };
    let conv = slayerfs_layerfs::convert::convert_layer(
        std::io::Cursor::new(tar),
        local.clone(),
        opts,
        "",
        Default::default(),
    )
    .await
    .unwrap();
    local
        .put(&ObjectKey::Index(conv.digest), conv.blob.clone())
        .await
        .unwrap();
    (conv.digest.to_string(), conv.blob)
}

async fn prepare_labelled(
    c: &mut Client,
    key: &str,
    parent: &str,
    target: &str,
    index: &str,
) -> Result<String, Status> {
    prepare_with_layers(c, key, parent, target, index, None).await
}

/// As containerd's unpacker with CRI's labels: `layers` is the image's
/// layer digests, comma-separated.
async fn prepare_with_layers(
    c: &mut Client,
    key: &str,
    parent: &str,
    target: &str,
    index: &str,
    layers: Option<&str>,
) -> Result<String, Status> {
    let mut labels: HashMap<String, String> = [
        ("containerd.io/snapshot.ref".to_string(), target.to_string()),
        (
            "containerd.io/snapshot/slayerfs.index".to_string(),
            index.to_string(),
        ),
    ]
    .into();
    if let Some(l) = layers {
        labels.insert(
            "containerd.io/snapshot/cri.image-layers".to_string(),
            l.to_string(),
        );
    }
    let r = c
        .prepare(PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        })
        .await?
        .into_inner();
    Ok(r.mounts[0].source.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_pull_labels_commit_good_indexes_and_bad_ones_fall_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (good, blob) = converted_layer(&store, b"lazily pulled\n").await;
    // A blob stored under a digest it does not have.
    let (other, _) = converted_layer(&store, b"other\n").await;
    let other_path = store
        .join("indexes")
        .join(other.trim_start_matches("sha256:"));
    std::fs::write(&other_path, &blob[..blob.len() - 1]).unwrap();
    // A truncated blob under its own (matching) digest.
    let truncated = &blob[..blob.len() / 2];
    let truncated_digest = slayerfs_chunkstore::IndexDigest::of(truncated);
    std::fs::write(
        store.join("indexes").join(truncated_digest.to_hex()),
        truncated,
    )
    .unwrap();
    let missing = slayerfs_chunkstore::IndexDigest::of(b"nowhere").to_string();

    let daemon = Daemon::start_with(
        tmp.path(),
        &format!("[store]\nurl = {:?}\n", store.display().to_string()),
    );
    let mut c = daemon.client().await;

    // A good index: committed under the target, AlreadyExists answered;
    // the index of the image's next layer is fetched ahead of its Prepare.
    let (next, _) = converted_layer(&store, b"the next layer\n").await;
    let layers = format!("{good},{next}");
    let got = prepare_with_layers(&mut c, "extract-1", "", "chain-1", &good, Some(&layers)).await;
    assert_eq!(code(got), Code::AlreadyExists);
    let prefetched = daemon
        .paths
        .root
        .join("blocks/indexes")
        .join(next.trim_start_matches("sha256:"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !prefetched.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{next} was not prefetched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let info = c
        .stat(StatSnapshotRequest {
            snapshotter: NAME.into(),
            key: "chain-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.kind, 3, "committed: {info:?}");
    assert_eq!(info.labels["containerd.io/snapshot.ref"], "chain-1");
    // Asked again (another namespace pulling the same image): the same.
    let again = prepare_labelled(&mut c, "extract-2", "", "chain-1", &good).await;
    assert_eq!(code(again), Code::AlreadyExists);
    // Its files read through a container's mount.
    let fs = prepare(&mut c, "ctr", "chain-1").await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&fs).join("hello")).unwrap(),
        b"lazily pulled\n"
    );

    // Bad indexes: an ordinary Prepare (containerd would unpack), and no
    // snapshot recorded under the target.
    let bad = [
        ("mismatch", other.as_str()),
        ("truncated", &truncated_digest.to_string()),
        ("missing", missing.as_str()),
    ];
    for (n, (what, digest)) in bad.iter().enumerate() {
        let key = format!("fallback-{n}");
        let target = format!("chain-bad-{n}");
        let r = prepare_labelled(&mut c, &key, "", &target, digest).await;
        assert!(r.is_ok(), "{what}: {r:?}");
        let st = c
            .stat(StatSnapshotRequest {
                snapshotter: NAME.into(),
                key: target,
            })
            .await;
        assert_eq!(code(st), Code::NotFound, "{what}");
        remove(&mut c, &key).await.unwrap();
    }
    let log = daemon.paths.log_text();
    for needle in ["hashes to", "layer index", "not found"] {
        assert!(
            log.contains("lazy pull failed") && log.contains(needle),
            "log lacks {needle}: {log}"
        );
    }
    // A malformed index label is refused.
    let r = prepare_labelled(&mut c, "x", "", "chain-x", "sha256:xyz").await;
    assert_eq!(code(r), Code::InvalidArgument);

    let names: Vec<String> = state(&mut c).await.into_iter().map(|s| s.0).collect();
    assert_eq!(names, vec!["chain-1".to_string(), "ctr".to_string()]);
}

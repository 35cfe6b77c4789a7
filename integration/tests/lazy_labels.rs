//! Lazy-pull labels on Prepare, over the daemon's socket as containerd's
//! unpacker sends them: a good index is committed under the target (and
//! the image's next index prefetched); a mismatched, truncated or missing
//! index falls back to an ordinary Prepare with nothing recorded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::{Code, Status};
use slayerfs_integration::daemon::local_store;
use slayerfs_integration::snapshots_api::{code, prepare, remove, state, Client, Daemon, NAME};

/// A one-file layer converted into the local store at `store`; returns the
/// index digest and blob.
async fn converted_layer(store: &Path, content: &[u8]) -> (String, Vec<u8>) {
    use slayerfs_chunkstore::{BlockStore, LocalStore, ObjectKey};
    use slayerfs_layerfs::test_support::{convert_for_test, tar_of};
    let local: Arc<dyn BlockStore> = Arc::new(LocalStore::open(store).unwrap());
    let conv = convert_for_test(tar_of(&[("hello", content)]), &local).await;
    local
        .put_if_absent(&ObjectKey::Index(conv.digest), conv.blob.clone())
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

    let daemon = Daemon::start_with(tmp.path(), &local_store(&store));
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

/// A layer converted with a prefetch list: once it is pulled lazily, the
/// blocks of the files it lists are fetched into the node's cache before
/// anything reads them; an unlisted file's block is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_pull_fetches_the_files_read_first() {
    use slayerfs_chunkstore::{
        BlockId, BlockStore, LocalStore, ObjectKey, PartSize, WriterOptions,
    };
    use slayerfs_layerfs::build::{convert_layer_with, Expected, PrefetchList};
    use slayerfs_layerfs::test_support::tar_of;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let local: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&store).unwrap());
    let list = PrefetchList::parse(b"/app/first\n").unwrap();
    let conv = convert_layer_with(
        std::io::Cursor::new(tar_of(&[
            ("app/later", b"read later\n".as_slice()),
            ("app/first", b"read first\n".as_slice()),
        ])),
        local.clone(),
        WriterOptions {
            workers: 1,
            zstd_level: 1,
            part_size: PartSize::DEFAULT,
        },
        Arc::new(list),
        "sha256:test",
        Expected::default(),
    )
    .await
    .unwrap();
    local
        .put_if_absent(&ObjectKey::Index(conv.digest), conv.blob.clone())
        .await
        .unwrap();
    let index = &conv.index;
    assert_eq!(index.prefetch.len(), 1);
    let block_of = |ino: u64| {
        let s = &index.inodes[(ino - 1) as usize].slices[0];
        BlockId::from_slice(&index.blocks[s.block as usize]).unwrap()
    };
    let first = block_of(index.prefetch[0]);
    let later_ino = index
        .inodes
        .iter()
        .enumerate()
        .find(|(i, n)| !n.slices.is_empty() && (*i as u64 + 1) != index.prefetch[0])
        .map(|(i, _)| i as u64 + 1)
        .unwrap();
    let later = block_of(later_ino);
    assert_ne!(first, later, "listed files are packed apart");

    let daemon = Daemon::start_with(tmp.path(), &local_store(&store));
    let mut c = daemon.client().await;
    let digest = conv.digest.to_string();
    let got = prepare_labelled(&mut c, "extract", "", "chain", &digest).await;
    assert_eq!(code(got), Code::AlreadyExists);
    let cached = |id: &BlockId| {
        let h = id.to_hex();
        daemon
            .paths
            .root
            .join("cache")
            .join(&h[..2])
            .join(&h)
            .exists()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cached(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "the listed file's block was not fetched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!cached(&later), "an unlisted file's block was fetched");
}

//! A sick store never hangs a mount. A converted image is served from the
//! real S3 test server through a fault-injecting proxy (black hole, 1 MB/s,
//! 5xx bursts, resets mid-body, wrong bytes): while reads of uncached files
//! are stuck, lookups, stats, listings and reads of cached files answer at
//! once; a stuck read fails with EIO within the read deadline, never with
//! wrong bytes; and once the proxy heals, the same files read correctly
//! without a restart.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use slayerfs_integration::fault_proxy::{Fault, FaultProxy};
use slayerfs_integration::fixtures::{noise, Compression, FEntry, FKind, FLayer};
use slayerfs_integration::mount::SlayerMount;
use slayerfs_integration::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

const MIB: usize = 1 << 20;
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Files each fault gets for itself (never read before it is set).
const FILES_PER_FAULT: usize = 4;
const FAULTS: [&str; 6] = [
    "black-hole",
    "slow",
    "5xx-burst",
    "5xx",
    "reset",
    "wrong-bytes",
];

/// One block's worth: 1 MiB of noise then zeros, so a block is about
/// 1 MB stored (a second at 1 MB/s).
fn contents(fault: usize, i: usize) -> Vec<u8> {
    let mut data = noise(MIB, (fault * 100 + i) as u64 + 1);
    data.resize(4 * MIB, 0);
    data
}

fn file_name(fault: usize, i: usize) -> String {
    format!("data/{}-{i}", FAULTS[fault])
}

/// Entries the probes use once each, so the kernel has none of them
/// cached and every probe reaches the daemon.
const PROBES: usize = 2000;

fn small(i: usize) -> Vec<u8> {
    format!("small file {i}\n").into_bytes()
}

fn layer() -> FLayer {
    let mut entries = vec![
        FEntry::new("small", FKind::Dir),
        FEntry::new("names", FKind::Dir),
        FEntry::new("dirs", FKind::Dir),
        FEntry::new("data", FKind::Dir),
    ];
    for i in 0..PROBES {
        // All in one packed block.
        entries.push(FEntry::new(format!("small/{i}"), FKind::File(small(i))));
        entries.push(FEntry::new(format!("names/{i}"), FKind::File(Vec::new())));
        entries.push(FEntry::new(format!("dirs/{i}"), FKind::Dir));
        entries.push(FEntry::new(format!("dirs/{i}/f"), FKind::File(Vec::new())));
    }
    for f in 0..FAULTS.len() {
        for i in 0..FILES_PER_FAULT {
            entries.push(FEntry::new(file_name(f, i), FKind::File(contents(f, i))));
        }
    }
    FLayer {
        entries,
        compression: Compression::Gzip,
    }
}

/// What one reader got, and when.
type Read = (std::io::Result<Vec<u8>>, Duration);

struct Node {
    _tmp: tempfile::TempDir,
    _s3: S3Server,
    proxy: FaultProxy,
    mount: SlayerMount,
    /// Probe entries used so far.
    probes: std::sync::atomic::AtomicUsize,
}

impl Node {
    fn path(&self, rel: &str) -> PathBuf {
        self.mount.mountpoint.join(rel)
    }
}

fn start() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s3 = S3Server::start(&dir.join("s3"), &["images"]).unwrap();
    let proxy = FaultProxy::start(s3.addr).unwrap();
    let image = common::convert_to_s3(&s3, &[layer()], dir);
    let config = format!(
        "[store.s3]\nendpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key = \"{SECRET_KEY}\"\nmax_attempts = 3\ninitial_backoff_ms = 50\n\
         connect_timeout_ms = 500\noperation_timeout_ms = 1000\n\
         [cache]\nread_timeout_ms = {}\nread_ahead_blocks = 0\n",
        proxy.endpoint(),
        READ_TIMEOUT.as_millis()
    );
    let mount = SlayerMount::start_configured(
        &image,
        &dir.join("mnt"),
        "s3://images",
        &dir.join("state"),
        &config,
        &[],
    )
    .unwrap();
    Node {
        _tmp: tmp,
        _s3: s3,
        proxy,
        mount,
        probes: Default::default(),
    }
}

/// A lookup, a stat, a listing and a read of a block in memory, each of
/// entries the kernel has not seen; returns the slowest.
fn probe(node: &Node) -> Duration {
    let i = node
        .probes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(i < PROBES, "out of probe entries");
    let mut slowest = Duration::ZERO;
    let mut time = |what: &str, op: &mut dyn FnMut() -> bool| {
        let t0 = Instant::now();
        assert!(op(), "{what} failed while reads were stuck");
        slowest = slowest.max(t0.elapsed());
    };
    time("stat", &mut || {
        std::fs::metadata(node.path(&format!("names/{i}"))).is_ok_and(|m| m.size() == 0)
    });
    time("lookup of a missing name", &mut || {
        std::fs::symlink_metadata(node.path(&format!("names/missing-{i}"))).is_err()
    });
    time("readdir", &mut || {
        std::fs::read_dir(node.path(&format!("dirs/{i}"))).is_ok_and(|d| d.count() == 1)
    });
    time("read of a block in memory", &mut || {
        std::fs::read(node.path(&format!("small/{i}"))).is_ok_and(|d| d == small(i))
    });
    slowest
}

/// Reads the fault's files at once (more readers than the mount has
/// threads), probing metadata meanwhile: each read's result and time, and
/// the slowest probe.
fn read_while_probing(node: &Node, fault: usize) -> (Vec<Read>, Duration) {
    let paths: Vec<PathBuf> = (0..FILES_PER_FAULT)
        .map(|i| node.path(&file_name(fault, i)))
        .collect();
    std::thread::scope(|s| {
        let readers: Vec<_> = paths
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let t0 = Instant::now();
                    let r = std::fs::read(p);
                    (r, t0.elapsed())
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        while !readers.iter().all(|r| r.is_finished()) {
            slowest = slowest.max(probe(node));
            std::thread::sleep(Duration::from_millis(50));
        }
        let results = readers.into_iter().map(|r| r.join().unwrap()).collect();
        (results, slowest)
    })
}

fn assert_reads_right(node: &Node, fault: usize, results: &[Read]) {
    for (i, (r, took)) in results.iter().enumerate() {
        match r {
            Ok(d) => assert!(
                *d == contents(fault, i),
                "{}: wrong bytes after {took:?}",
                file_name(fault, i)
            ),
            Err(e) => panic!(
                "{}: {e} after {took:?}\n{}",
                file_name(fault, i),
                node.mount.log_text()
            ),
        }
    }
}

/// Every read failed with EIO, none later than the deadline allows (the
/// kernel may ask again once: its read-ahead, then the page itself).
fn assert_eio_in_time(node: &Node, fault: usize, results: &[Read]) {
    for (i, (r, took)) in results.iter().enumerate() {
        match r {
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "{}: {e}",
                file_name(fault, i)
            ),
            Ok(d) => panic!(
                "{}: read {} bytes through a {} store\n{}",
                file_name(fault, i),
                d.len(),
                FAULTS[fault],
                node.mount.log_text()
            ),
        }
        assert!(
            *took < 3 * READ_TIMEOUT + Duration::from_secs(2),
            "{}: EIO took {took:?}",
            file_name(fault, i)
        );
    }
}

/// Metadata never waits for the store: generous against scheduling noise,
/// far below the read deadline.
fn assert_unstalled(fault: usize, slowest: Duration) {
    eprintln!("{}: slowest metadata operation {slowest:?}", FAULTS[fault]);
    assert!(
        slowest < READ_TIMEOUT / 3,
        "{}: a metadata operation waited {slowest:?} behind stuck reads",
        FAULTS[fault]
    );
}

fn heal_and_check(node: &Node, fault: usize) {
    node.proxy.heal();
    let (results, _) = read_while_probing(node, fault);
    assert_reads_right(node, fault, &results);
}

fn index_of(name: &str) -> usize {
    FAULTS.iter().position(|f| *f == name).unwrap()
}

#[test]
fn a_sick_store_fails_reads_in_time_and_never_stalls_metadata() {
    let node = start();
    // The block of the small files comes into memory.
    assert!(probe(&node) < READ_TIMEOUT);

    // A black hole: every read of the fault's files is EIO in time.
    let f = index_of("black-hole");
    node.proxy.set(Fault::BlackHole);
    let (results, slowest) = read_while_probing(&node, f);
    assert_eio_in_time(&node, f, &results);
    assert_unstalled(f, slowest);
    heal_and_check(&node, f);

    // 1 MB/s: slow, but inside the deadline, and right.
    let f = index_of("slow");
    node.proxy.set(Fault::Throttle {
        bytes_per_sec: 1_000_000,
    });
    let (results, slowest) = read_while_probing(&node, f);
    assert_reads_right(&node, f, &results);
    assert_unstalled(f, slowest);
    node.proxy.heal();

    // A burst of 5xx is retried away; a lasting one is EIO, then heals.
    let f = index_of("5xx-burst");
    node.proxy.set_for(Fault::ServerError, 2);
    let (results, slowest) = read_while_probing(&node, f);
    assert_reads_right(&node, f, &results);
    assert_unstalled(f, slowest);
    let f = index_of("5xx");
    node.proxy.set(Fault::ServerError);
    let (results, slowest) = read_while_probing(&node, f);
    assert_eio_in_time(&node, f, &results);
    assert_unstalled(f, slowest);
    heal_and_check(&node, f);

    // Connections reset mid-body: the body is fetched again.
    let f = index_of("reset");
    node.proxy.set_for(Fault::ResetMidBody, 2);
    let (results, slowest) = read_while_probing(&node, f);
    assert_reads_right(&node, f, &results);
    assert_unstalled(f, slowest);

    // Wrong bytes are never returned: EIO, and right bytes once healed.
    let f = index_of("wrong-bytes");
    node.proxy.set(Fault::WrongBytes);
    let (results, slowest) = read_while_probing(&node, f);
    assert_eio_in_time(&node, f, &results);
    assert_unstalled(f, slowest);
    heal_and_check(&node, f);

    let log = node.mount.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        node.proxy
            .counters
            .faulted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the proxy injected nothing"
    );
}

/// The lazy-pull path through a sick registry: a Prepare whose layer index
/// is only in the image's registry falls back to an ordinary Prepare in
/// time when the registry black-holes, fails or sends wrong bytes, other
/// Prepares meanwhile answer at once, and once the registry heals the layer
/// is pulled lazily after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sick_registry_fails_lazy_pulls_in_time_and_blocks_no_one() {
    use containerd_snapshots::api::snapshots::v1::PrepareSnapshotRequest;
    use containerd_snapshots::tonic::Code;
    use slayerfs_chunkstore::{BlockStore, LocalStore, ObjectKey};
    use slayerfs_integration::daemon::Registry;
    use slayerfs_integration::fixtures::write_image_blobs;
    use slayerfs_integration::snapshots_api::{prepare, Daemon, NAME};
    use slayerfs_layerfs::test_support::{convert_for_test, tar_of};
    use std::collections::HashMap;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The layer's index, in the registry only (a blob of an image there).
    let elsewhere: Arc<dyn BlockStore> =
        Arc::new(LocalStore::open(&dir.join("elsewhere")).unwrap());
    let conv = convert_for_test(tar_of(&[("hello", b"from the registry")]), &elsewhere).await;
    let index = conv.digest.to_string();
    let registry = Registry::start(&dir.join("registry"));
    write_image_blobs(
        &dir.join("img"),
        "v1",
        &[(conv.blob.clone(), Compression::Gzip)],
    )
    .unwrap();
    let pushed = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", dir.join("img").display()))
        .arg(format!("docker://{}/lazy/x:v1", registry.addr))
        .status()
        .unwrap();
    assert!(pushed.success(), "pushing the image");
    // The blocks are where the daemon reads lazily pulled layers from.
    let daemon_store = dir.join("snap-state-store");
    let shared: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&daemon_store).unwrap());
    for key in LocalStore::open(&dir.join("elsewhere"))
        .unwrap()
        .list()
        .unwrap()
    {
        if let ObjectKey::Block(_) = key {
            shared
                .put_if_absent(&key, elsewhere.get(&key).await.unwrap())
                .await
                .unwrap();
        }
    }
    let addr: std::net::SocketAddr = registry.addr.parse().unwrap();
    let proxy = FaultProxy::start(addr).unwrap();
    let daemon = Daemon::start_with(
        dir,
        &format!(
            "[store]\nurl = {:?}\n[registry]\nconnect_timeout_ms = 500\nread_timeout_ms = 2000\n",
            daemon_store.display().to_string()
        ),
    );
    let mut c = daemon.client().await;
    let image = format!("{}/lazy/x:v1", proxy.addr);
    let labels: HashMap<String, String> = [
        ("containerd.io/snapshot.ref", "target"),
        ("containerd.io/snapshot/slayerfs.index", index.as_str()),
        ("containerd.io/snapshot/cri.image-ref", image.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let mut n = 0;
    for fault in [
        Fault::BlackHole,
        Fault::ServerError,
        Fault::WrongBytes,
        Fault::ResetMidBody,
    ] {
        proxy.set(fault);
        n += 1;
        let key = format!("fallback-{n}");
        let lazy = {
            let mut c = daemon.client().await;
            let labels = labels.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = c
                    .prepare(PrepareSnapshotRequest {
                        snapshotter: NAME.into(),
                        key,
                        parent: String::new(),
                        labels,
                    })
                    .await;
                (r.map(|_| ()).map_err(|s| s.code()), t0.elapsed())
            })
        };
        // Another Prepare is not held up by it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        prepare(&mut c, &format!("plain-{n}"), "").await.unwrap();
        let plain = t0.elapsed();
        let (r, took) = lazy.await.unwrap();
        eprintln!(
            "registry {fault:?}: the lazy Prepare fell back after {took:?}; another took {plain:?}"
        );
        assert_eq!(r, Ok(()), "{fault:?}: no fallback to an ordinary Prepare");
        assert!(
            took < Duration::from_secs(15),
            "{fault:?}: the fallback took {took:?}"
        );
        assert!(
            plain < Duration::from_secs(1),
            "{fault:?}: a plain Prepare took {plain:?}"
        );
    }
    proxy.heal();
    let healed = c
        .prepare(PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: "lazy".into(),
            parent: String::new(),
            labels,
        })
        .await;
    assert_eq!(
        healed.map(|_| ()).map_err(|s| s.code()),
        Err(Code::AlreadyExists),
        "the healed registry's index was not pulled lazily\n{}",
        daemon.paths.log_text()
    );
    assert!(!daemon.paths.log_text().contains("panicked"));
}

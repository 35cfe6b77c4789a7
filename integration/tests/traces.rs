//! Learned prefetch across nodes, real parts only: a converted image in a
//! real S3 server and a real registry, pulled lazily by `slayerfs pull`
//! into real containerd, run with `ctr` and runc. The first start on one
//! node leaves a trace in the shared store; a second node on a fresh root
//! fetches the blocks the trace names — no block the first start did not
//! fetch, each once — as soon as the pull is done and before anything
//! asks, and its container then fetches nothing; a
//! corrupt, truncated or hostile trace beside the good one is skipped with
//! a log line. `inspect --prefetch` shows the traces, and a trace saved
//! from it is a prefetch list for `convert`.

mod lazy_images;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lazy_images::*;
use sha2::{Digest, Sha256};
use slayerfs_integration::bins::bin;
use slayerfs_integration::daemon::{
    run_text, sh, start_containerd, start_snapshotter_with_env, write_config, Proc,
    SnapshotterPaths,
};
use slayerfs_layerfs::trace::decode_trace;
use slayerfs_proto::Message;

/// What the container reads: busybox, a small file, the first bytes of the
/// big one.
const READS: &str = "cat /etc/small; head -c 5000 /data/big | wc -c";

/// A node: its own snapshotter root and containerd, the shared S3 store.
struct Node {
    dir: PathBuf,
    paths: SnapshotterPaths,
    // Dropped in this order: containerd before the snapshotter it uses.
    _containerd: Proc,
    _snapshotter: Proc,
}

impl Node {
    fn start(dir: &Path, images: &Images, window_ms: u64) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        // The store settings the image was converted with, and a short
        // recording window so the test does not wait ten seconds.
        let shared = std::fs::read_to_string(&images.config).unwrap();
        let store: String = shared
            .lines()
            .filter(|l| !l.starts_with("state_dir"))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = write_config(dir, &format!("{store}[trace]\nwindow_ms = {window_ms}\n"));
        let paths = SnapshotterPaths::in_dir(dir);
        let snapshotter = start_snapshotter_with_env(&paths, &config, &images.env);
        let containerd = start_containerd(dir, &paths.socket, "");
        Node {
            dir: dir.to_path_buf(),
            paths,
            _containerd: containerd,
            _snapshotter: snapshotter,
        }
    }

    fn log(&self) -> String {
        format!(
            "snapshotter log:\n{}\ncontainerd log:\n{}",
            self.paths.log_text(),
            std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
        )
    }

    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.paths.log_text().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pull_and_run(&self, image: &str, name: &str) -> String {
        let (ok, out) = slayerfs_pull(&self.dir, image);
        assert!(ok && out.contains("2 lazily"), "{out}\n{}", self.log());
        self.run(image, name)
    }

    fn run(&self, image: &str, name: &str) -> String {
        let (ok, out) = run(&self.dir, None, image, name, &["/bin/sh", "-c", READS]);
        assert!(
            ok && out.contains("a small file") && out.contains("5000"),
            "{out}\n{}",
            self.log()
        );
        out
    }
}

/// GETs of blocks among `paths`, by key and range (ranged GETs fetch parts
/// of a block), with how often each was asked.
fn block_gets(paths: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in paths.iter().filter(|p| p.contains("/blocks/")) {
        *out.entry(p.clone()).or_default() += 1;
    }
    out
}

/// The blocks among `gets` (keys of [`block_gets`]): fetched whole, and
/// fetched in parts.
fn blocks_of(gets: &BTreeMap<String, usize>) -> (BTreeSet<&str>, BTreeSet<&str>) {
    let (mut whole, mut parts) = (BTreeSet::new(), BTreeSet::new());
    for k in gets.keys() {
        match k.split_once(' ') {
            Some((path, _range)) => parts.insert(path),
            None => whole.insert(k.as_str()),
        };
    }
    (whole, parts)
}

/// The one folder of traces in the store, and the traces in it.
fn stored_traces(s3_root: &Path) -> (PathBuf, Vec<PathBuf>) {
    let top = s3_root.join("images/traces");
    let chains: Vec<PathBuf> = std::fs::read_dir(&top)
        .unwrap_or_else(|e| panic!("{}: {e}", top.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(chains.len(), 1, "{chains:?}");
    let traces = std::fs::read_dir(&chains[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .collect();
    (chains[0].clone(), traces)
}

/// Stores `blob` in `folder` under the sha256 of its bytes, as a node
/// would, so only its content can be wrong.
fn plant(folder: &Path, blob: &[u8]) {
    std::fs::write(folder.join(hex::encode(Sha256::digest(blob))), blob).unwrap();
}

#[test]
fn a_start_leaves_a_trace_that_another_node_prefetches_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = publish_images(dir);
    let image = format!("{}/lazy:v1", images.registry.addr);
    let counters = images.s3.counters.clone();

    // Node 1: no trace yet; its start is recorded and stored.
    let node1 = Node::start(&dir.join("node1"), &images, 1500);
    let (_, from) = counters.gets_since(0);
    node1.pull_and_run(&image, "first");
    node1.wait_for_log("trace of a start stored");
    let (gets, _) = counters.gets_since(from);
    let read_by_first = block_gets(&gets);
    assert!(
        !read_by_first.is_empty(),
        "the first start fetched no block\n{}",
        node1.log()
    );
    drop(node1);
    let (folder, traces) = stored_traces(&images.s3_root);
    assert_eq!(traces.len(), 1, "{traces:?}");
    let blob = std::fs::read(&traces[0]).unwrap();
    let trace = decode_trace(&blob).unwrap();
    let paths: Vec<String> = trace.files.iter().map(|f| f.path.to_string()).collect();
    for p in ["bin/busybox", "etc/small", "data/big"] {
        assert!(paths.iter().any(|q| q == p), "{p} not in {paths:?}");
    }
    let big = trace
        .files
        .iter()
        .find(|f| f.path.to_string() == "data/big")
        .unwrap();
    assert!(
        big.bytes() < ((BIG_MIB as u64) << 20) / 4,
        "the trace names {} bytes of a file read for 5000",
        big.bytes()
    );

    // Beside it, traces no node should trust: bytes that are not their
    // name's, a truncated one, and one whose paths and ranges are hostile.
    std::fs::write(folder.join("ab".repeat(32)), b"not a trace").unwrap();
    plant(&folder, &blob[..blob.len() / 2]);
    let hostile = slayerfs_proto::trace::Trace {
        version: slayerfs_proto::trace::VERSION,
        files: vec![slayerfs_proto::trace::TracedFile {
            path: b"../../etc/shadow".to_vec(),
            ranges: vec![0, u64::MAX],
        }],
    };
    plant(
        &folder,
        &zstd::encode_all(hostile.encode_to_vec().as_slice(), 3).unwrap(),
    );

    // Node 2, a fresh root: the pull prefetches what node 1's start read,
    // each block once, and nothing else; then its container fetches no
    // block at all.
    let node2 = Node::start(&dir.join("node2"), &images, 60_000);
    let (_, from) = counters.gets_since(0);
    let (ok, out) = slayerfs_pull(&node2.dir, &image);
    assert!(ok && out.contains("2 lazily"), "{out}\n{}", node2.log());
    node2.wait_for_log("prefetched the blocks a trace names");
    let (gets, from) = counters.gets_since(from);
    let prefetched = block_gets(&gets);
    // Node 1 also read ahead of its reader; the trace names only what was
    // read, so node 2 fetches a subset of node 1's blocks (whole, or parts
    // of them).
    let (first_whole, first_parts) = blocks_of(&read_by_first);
    let (whole, parts) = blocks_of(&prefetched);
    let stray: Vec<&&str> = whole
        .union(&parts)
        .filter(|k| !first_whole.contains(*k) && !first_parts.contains(*k))
        .collect();
    assert!(
        !prefetched.is_empty() && stray.is_empty(),
        "node 2 prefetched {prefetched:?}; node 1's start fetched {read_by_first:?}\n{}",
        node2.log()
    );
    let done = node2
        .paths
        .log_text()
        .lines()
        .find(|l| l.contains("prefetched the blocks a trace names"))
        .unwrap()
        .to_string();
    let n = whole.len();
    assert!(
        done.contains(&format!("blocks={n} ")) && done.contains(&format!(" fetched={n} ")),
        "{done}\n{prefetched:?}"
    );
    assert_eq!(
        parts.is_empty(),
        done.contains("ranges_fetched=0 "),
        "{done}\n{prefetched:?}"
    );
    assert!(
        prefetched.values().all(|&n| n == 1),
        "a block or part was fetched more than once: {prefetched:?}"
    );
    let log = node2.paths.log_text();
    assert_eq!(
        log.matches("ignoring a trace").count(),
        3,
        "each bad trace is named once\n{log}"
    );
    node2.run(&image, "second");
    let (gets, _) = counters.gets_since(from);
    assert_eq!(
        block_gets(&gets),
        BTreeMap::new(),
        "the second node's container fetched blocks the trace did not name\n{}",
        node2.log()
    );
    assert!(!node2.paths.log_text().contains("panicked"));
    drop(node2);

    // `inspect --prefetch` shows the traces as a node sees them, and saves
    // the good one for a convert, which packs and lists its files first.
    let slayerfs = |args: &[&str]| {
        let (ok, out) = run_text(
            Command::new(bin("slayerfs"))
                .args(args)
                .env("SLAYERFS_CONFIG", &images.config)
                .envs(images.env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir),
        );
        assert!(ok, "slayerfs {args:?}: {out}");
        out
    };
    let reg = &images.registry.addr;
    sh(
        &format!("skopeo copy -q --src-tls-verify=false docker://{reg}/lazy:v1 oci:seen:v1"),
        dir,
        &[],
    );
    let shown = slayerfs(&["inspect", "oci:seen:v1", "--save-trace", "start.trace"]);
    assert!(
        shown.contains("traces of sha256:") && shown.contains(": 4\n"),
        "{shown}"
    );
    assert_eq!(shown.matches("ignored:").count(), 3, "{shown}");
    assert!(
        shown.contains("3 files, ") && shown.contains(&format!(", {n} blocks\n")),
        "the good trace names {n} blocks\n{shown}"
    );
    slayerfs(&[
        "convert",
        &format!("docker://{reg}/plain:v1"),
        "oci:relisted:v1",
        "--prefetch-list",
        "start.trace",
        "--quiet",
    ]);
    let shown = slayerfs(&["inspect", "oci:relisted:v1", "--prefetch"]);
    for want in [
        "layer 1 prefetch list: 2 files",
        "  /bin/busybox\n  /etc/small\n",
        "layer 2 prefetch list: 1 files",
        "  /data/big\n",
    ] {
        assert!(shown.contains(want), "no {want:?} in\n{shown}");
    }
    // The same as JSON: the lists, and the traces (good and ignored).
    let doc: serde_json::Value = serde_json::from_str(&slayerfs(&[
        "inspect",
        "oci:relisted:v1",
        "--prefetch",
        "--json",
    ]))
    .expect("inspect --prefetch --json prints one JSON document");
    let lists = &doc["prefetch"]["lists"];
    assert_eq!(
        lists[0]["files"],
        serde_json::json!(["/bin/busybox", "/etc/small"]),
        "{doc}"
    );
    assert_eq!(lists[1]["files"], serde_json::json!(["/data/big"]), "{doc}");
    assert!(lists[1]["blocks"].as_u64().unwrap() >= 1, "{doc}");
    let traces = doc["prefetch"]["traces"]["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 4, "{doc}");
    assert_eq!(
        traces.iter().filter(|t| t.get("ignored").is_some()).count(),
        3,
        "{doc}"
    );
    assert!(
        traces.iter().any(|t| t["blocks"] == n && t["files"] == 3),
        "the good trace names {n} blocks\n{doc}"
    );
}

//! Reads fetch what they need, through a real FUSE mount of an image in
//! the real S3 test server: random 4 KiB reads of a cold file fetch only
//! the parts of blocks they touch (bytes counted at the server), every
//! byte right; a sequential reader still gets the blocks ahead of it
//! before it asks.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slayerfs_integration::fixtures::{noise, Compression, FEntry, FKind, FLayer};
use slayerfs_integration::mount::SlayerMount;
use slayerfs_integration::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

const MIB: usize = 1 << 20;
const READS: usize = 100;
const READ: usize = 4096;

struct Node {
    _tmp: tempfile::TempDir,
    s3: S3Server,
    mount: SlayerMount,
    model: Vec<u8>,
    stream: Vec<u8>,
}

fn start() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s3 = S3Server::start(&dir.join("s3"), &["images"]).unwrap();
    // Incompressible, as model weights are: stored bytes are plain bytes.
    let model = noise(64 * MIB, 11);
    let stream = noise(24 * MIB, 12);
    let layer = FLayer {
        entries: vec![
            FEntry::new("model.bin", FKind::File(model.clone())),
            FEntry::new("stream.bin", FKind::File(stream.clone())),
        ],
        compression: Compression::Gzip,
    };
    let image = common::convert_to_s3(&s3, &[layer], dir);
    let config = format!(
        "[store.s3]\nendpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key = \"{SECRET_KEY}\"\n[cache]\nread_ahead_blocks = 4\n",
        s3.endpoint(),
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
        s3,
        mount,
        model,
        stream,
    }
}

fn fetched(node: &Node) -> (u64, u64) {
    let c = &node.s3.counters;
    (
        c.gets.load(Ordering::Relaxed),
        c.get_bytes.load(Ordering::Relaxed),
    )
}

#[test]
fn random_reads_fetch_parts_and_sequential_reads_read_ahead() {
    let node = start();
    let (gets0, bytes0) = fetched(&node);

    // 100 random 4 KiB reads of the cold file, none at its start.
    let file = std::fs::File::open(node.mount.mountpoint.join("model.bin")).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (READ as u64 + x % (node.model.len() - 2 * READ) as u64) & !0xfff;
        let mut buf = vec![0u8; READ];
        file.read_exact_at(&mut buf, at).unwrap();
        assert!(
            buf == node.model[at as usize..at as usize + READ],
            "wrong bytes at {at}"
        );
    }
    let (gets, bytes) = fetched(&node);
    let ratio = (bytes - bytes0) as f64 / (READS * READ) as f64;
    eprintln!(
        "{READS} random reads: {} GETs, {} bytes fetched, {ratio:.1}x the bytes read",
        gets - gets0,
        bytes - bytes0
    );
    assert!(ratio <= 64.0, "{ratio:.1}x the bytes read were fetched");
    // Whole blocks would have been 16 × 4 MiB.
    assert!(bytes - bytes0 < 16 * MIB as u64);

    // A sequential reader: once it has read into the file, the blocks
    // ahead of it are fetched before it asks for them.
    let (_, before) = fetched(&node);
    let file = std::fs::File::open(node.mount.mountpoint.join("stream.bin")).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    let mut at = 0;
    while at < 2 * MIB {
        file.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(
            buf == node.stream[at..at + buf.len()],
            "wrong bytes at {at}"
        );
        at += buf.len();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, now) = fetched(&node);
        // The first block and the next, whole: the window is twice what
        // the run has read, so 2 MiB read reach into the second block.
        if now - before >= 2 * 4 * MIB as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read-ahead: {} bytes fetched for a 2 MiB read",
            now - before
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The rest reads right.
    let mut rest = vec![0u8; node.stream.len() - at];
    file.read_exact_at(&mut rest, at as u64).unwrap();
    assert!(rest == node.stream[at..], "wrong bytes after {at}");
}

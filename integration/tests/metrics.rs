//! The daemon's metrics as an operator sees them, real parts only: a real
//! Prometheus (Debian's) scrapes `--metrics-address` every second while
//! containerd pulls a converted image lazily (from a real registry and S3
//! server) and runs a container that reads part of a large file; its HTTP
//! API then shows the layers pulled, the FUSE requests, the cache misses
//! and the bytes fetched that this caused, in the right magnitudes (the S3
//! server's own count of the bytes it sent is the yardstick). `/healthz`
//! answers 200, and 503 naming the store while S3 is down.

mod lazy_images;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lazy_images::{publish_images, run, slayerfs_pull, BIG_MIB};
use slayerfs_integration::bins::bin;
use slayerfs_integration::daemon::{
    free_port, local_store, start_snapshotter_binary, write_config, SnapshotterPaths,
};
use slayerfs_integration::prometheus::{http_get, Prometheus};
use slayerfs_integration::runtime::Containerd;
use slayerfs_integration::s3::S3Server;

/// What the container reads of the large file.
const READ_MIB: u64 = 24;

#[test]
fn prometheus_sees_a_lazy_pull_and_a_container_run() {
    let t0 = Instant::now();
    let stage = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = publish_images(dir);
    stage("images published");
    let paths = SnapshotterPaths::in_dir(dir);
    let metrics = format!("127.0.0.1:{}", free_port());
    let _snapshotter = start_snapshotter_binary(
        &bin("slayerfs-snapshotter"),
        &paths,
        &images.config,
        &images.env,
        &["--unmount-on-exit", "--metrics-address", &metrics],
    );
    // The endpoint is up once the socket is: it is served right after.
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match http_get(&metrics, "/healthz") {
            Ok(h) => break h,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{metrics}: {e}\n{}",
                    paths.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(health, (200, "ok\n".to_string()), "{}", paths.log_text());
    let (status, text) = http_get(&metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    for family in [
        "slayerfs_layers_pulled_total{how=\"lazy\"} 0",
        "slayerfs_lazy_pull_fallbacks_total{reason=\"index_invalid\"} 0",
        "# TYPE slayerfs_fuse_reads_waiting_on_store counter",
        "# TYPE slayerfs_store_requests counter",
        "# TYPE slayerfs_cache_bytes gauge",
        "# TYPE slayerfs_snapshots gauge",
        "slayerfs_process_resident_memory_bytes ",
        "slayerfs_process_open_fds ",
    ] {
        assert!(text.contains(family), "no {family:?} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(http_get(&metrics, "/nothing").unwrap().0, 404);

    let prometheus = Prometheus::start(dir, &[&metrics]);
    stage("prometheus ready");
    let log = || {
        format!(
            "snapshotter log:\n{}\nprometheus log:\n{}",
            paths.log_text(),
            prometheus.log_text()
        )
    };
    // `up` is Prometheus's own verdict on its last scrape of us.
    let wait_for = |what: &str, q: &str, ok: &dyn Fn(f64) -> bool| -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = prometheus.value(q);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: {q} is {v:?}\n{}", log());
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait_for("the first scrape", r#"up{job="slayerfs"}"#, &|v| v == 1.0);
    stage("first scrape");

    let v = Containerd::V1_6;
    let _containerd = v.start(dir, &paths.socket, None);
    let s3_sent = || images.s3.counters.get_bytes.load(Ordering::Relaxed);
    let sent_before = s3_sent();
    let image = format!("{}/lazy:v1", images.registry.addr);
    let (ok, out) = slayerfs_pull(dir, &image);
    assert!(ok, "{out}\n{}", log());
    let script = format!(
        "cat /etc/small && head -c {} /data/big | wc -c",
        READ_MIB << 20
    );
    let (ok, out) = run(dir, None, &image, "reader", &["sh", "-c", &script]);
    assert!(ok && out.contains("a small file"), "{out}\n{}", log());
    assert!(out.contains(&(READ_MIB << 20).to_string()), "{out}");
    let sent = (s3_sent() - sent_before) as f64;
    stage("pulled and ran");

    // Both layers were pulled lazily, and nothing fell back to unpacking.
    wait_for(
        "lazy layers",
        r#"sum(slayerfs_layers_pulled_total{how="lazy"})"#,
        &|v| v == 2.0,
    );
    assert_eq!(
        prometheus.value("sum(slayerfs_lazy_pull_fallbacks_total)"),
        Some(0.0),
        "{}",
        log()
    );
    // The bytes fetched are what S3 sent (to within the health probes and
    // a scrape's lag), at least what was read, far less than the file.
    let read = (READ_MIB << 20) as f64;
    stage("lazy layers scraped");
    let fetched = wait_for(
        "bytes fetched",
        "slayerfs_store_bytes_fetched_total",
        &|v| v >= sent * 0.9,
    );
    assert!(
        fetched >= read && fetched <= sent * 1.1 && fetched < (BIG_MIB as f64) * 1048576.0 * 0.6,
        "fetched {fetched}, S3 sent {sent}, the container read {read}\n{}",
        log()
    );
    let gets = prometheus
        .value(r#"sum(slayerfs_store_requests_total{op=~"get|get_range",result="ok"})"#)
        .unwrap_or(0.0);
    assert!(
        gets >= read / 4194304.0 && gets < 10_000.0,
        "{gets} store GETs for {read} bytes read\n{}",
        log()
    );
    // Each block fetched was first missed in memory; a cold node has few.
    let misses = prometheus
        .value(r#"slayerfs_cache_misses_total{tier="memory"}"#)
        .unwrap_or(0.0);
    assert!(
        misses >= read / 4194304.0 && misses < 10_000.0,
        "{misses} memory misses for {read} bytes read\n{}",
        log()
    );
    // The container's reads went through FUSE: the file's bytes in reads of
    // at most 1 MiB each, the start in lookups, opens and getattrs.
    let reads = prometheus
        .value(r#"slayerfs_fuse_requests_total{op="read"}"#)
        .unwrap_or(0.0);
    assert!(
        reads >= read / 1048576.0 && reads < 1_000_000.0,
        "{reads} FUSE reads for {read} bytes\n{}",
        log()
    );
    let lookups = prometheus
        .value(r#"sum(slayerfs_fuse_request_duration_seconds_count{op="lookup"})"#)
        .unwrap_or(0.0);
    assert!(lookups >= 3.0, "{lookups} timed FUSE lookups\n{}", log());
    let all = prometheus
        .value("sum(slayerfs_fuse_requests_total)")
        .unwrap_or(0.0);
    assert!(
        all > reads + lookups - 1.0,
        "{all} FUSE requests\n{}",
        log()
    );
    let rss = prometheus
        .value("slayerfs_process_resident_memory_bytes")
        .unwrap_or(0.0);
    assert!(
        rss > 4.0 * 1048576.0 && rss < 8.0 * 1073741824.0,
        "RSS {rss}\n{}",
        log()
    );
    let fds = prometheus.value("slayerfs_process_open_fds").unwrap_or(0.0);
    assert!((4.0..100_000.0).contains(&fds), "{fds} open fds\n{}", log());
    // The image's two layers are committed snapshots now.
    let committed = prometheus
        .value(r#"slayerfs_snapshots{kind="committed"}"#)
        .unwrap_or(0.0);
    assert_eq!(committed, 2.0, "{}", log());
    eprintln!(
        "prometheus: {fetched} bytes fetched (S3 sent {sent}), {gets} GETs, {misses} memory misses, \
         {reads} FUSE reads of {all} FUSE requests, RSS {rss}, {fds} fds"
    );

    // S3 gone: the health check names the store; back: healthy again.
    let lazy_images::Images { s3, .. } = images;
    let (s3_addr, s3_root) = (s3.addr, s3.root.clone());
    drop(s3);
    let (status, body) = http_get(&metrics, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("store: ") && !body.contains("grpc"),
        "{body}"
    );
    stage("S3 down: 503");
    let _s3 = S3Server::start_at(&s3_root, &["images"], s3_addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(&metrics, "/healthz").unwrap();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!paths.log_text().contains("panicked"), "{}", log());
}

/// An address that cannot be served stops the start with a message naming
/// it, before anything is started: no socket, no fd holder.
#[test]
fn a_metrics_address_in_use_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = write_config(dir, &local_store(&dir.join("store")));
    let paths = SnapshotterPaths::in_dir(dir);
    let out = std::process::Command::new(bin("slayerfs-snapshotter"))
        .arg("--root")
        .arg(&paths.root)
        .arg("--address")
        .arg(&paths.socket)
        .args(["--metrics-address", &addr])
        .env("SLAYERFS_CONFIG", &config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("serving metrics on {addr}")), "{err}");
    assert!(!paths.socket.exists(), "the socket was published: {err}");
    assert!(
        !paths.root.join("fdholder.sock").exists(),
        "an fd holder was started: {err}"
    );
    drop(taken);
}

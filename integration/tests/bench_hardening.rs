//! Measurements for `scripts/bench.sh hardening`, not tests (ignored unless
//! run by it): Prepare latency idle beside under load (16 working
//! containers, or `BENCH_CONTAINERS`; collections back to back; a Commit
//! of a 1 GiB upper), and
//! the daemon's memory with 10 mounted images of 50,000 entries each.
//! Each prints `bench: …` lines the script collects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1::{CleanupRequest, PrepareSnapshotRequest};
use slayerfs_integration::snapshots_api::{commit, prepare, remove, Client, Daemon, NAME};
use slayerfs_integration::workload::{commit_lower_image, run_workload, Workload};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Times `n` Prepares (each removed again) on `parent`.
async fn prepare_times(c: &mut Client, tag: &str, parent: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..n {
        let key = format!("{tag}-{i}");
        let t0 = Instant::now();
        prepare(c, &key, parent).await.unwrap();
        times.push(t0.elapsed());
        remove(c, &key).await.unwrap();
    }
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: scripts/bench.sh hardening"]
async fn bench_prepare_latency_idle_and_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(tmp.path());
    let mut c = daemon.client().await;
    commit_lower_image(&mut c, "image", 12 << 20).await;
    let samples = 60;
    let idle = prepare_times(&mut c, "idle", "image", samples).await;

    let big = prepare(&mut c, "big-work", "image").await.unwrap();
    let f = format!("{big}/big");
    assert!(tokio::task::spawn_blocking(move || run_workload(&[
        "fill",
        &f,
        &(1u64 << 30).to_string()
    ]))
    .await
    .unwrap());
    let mut containers = Vec::new();
    // `BENCH_CONTAINERS` (default 16) working containers: with none, the
    // load is the big Commit and the collections alone.
    let working: usize = std::env::var("BENCH_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    for i in 0..working {
        let mp = prepare(&mut c, &format!("c{i}"), "image").await.unwrap();
        let stop = tmp.path().join(format!("stop-{i}"));
        containers.push(Workload::start(&mp, &format!("{mp}/lower"), &stop, 0));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (mut c, stop) = (daemon.client().await, stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = c
                    .cleanup(CleanupRequest {
                        snapshotter: NAME.into(),
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let committing = {
        let mut c = daemon.client().await;
        tokio::spawn(async move {
            let t0 = Instant::now();
            commit(&mut c, "big", "big-work").await.unwrap();
            t0.elapsed()
        })
    };
    // Prepares only while the big Commit runs.
    let mut loaded = Vec::new();
    let mut i = 0;
    while !committing.is_finished() && loaded.len() < samples {
        let key = format!("loaded-{i}");
        i += 1;
        let t0 = Instant::now();
        prepare(&mut c, &key, "image").await.unwrap();
        loaded.push(t0.elapsed());
        remove(&mut c, &key).await.unwrap();
    }
    let commit_took = committing.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    collector.await.unwrap();
    for w in containers {
        w.finish(&daemon);
    }
    loaded.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "bench: prepare idle p50 {:.1} ms p99 {:.1} ms ({} samples)",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        idle.len()
    );
    println!(
        "bench: prepare loaded p50 {:.1} ms p99 {:.1} ms ({} samples, during a {:.1} s commit of 1 GiB, {working} containers)",
        ms(percentile(&loaded, 0.5)),
        ms(percentile(&loaded, 0.99)),
        loaded.len(),
        commit_took.as_secs_f64()
    );
    println!(
        "bench: prepare loaded/idle p50 {:.2} p99 {:.2} ({working} containers)",
        ms(percentile(&loaded, 0.5)) / ms(percentile(&idle, 0.5)),
        ms(percentile(&loaded, 0.99)) / ms(percentile(&idle, 0.99))
    );
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn walk(dir: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            n += 1;
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench.sh hardening"]
async fn bench_memory_with_ten_large_images() {
    use slayerfs_chunkstore::{BlockStore, LocalStore, ObjectKey};
    use slayerfs_layerfs::test_support::convert_for_test;
    const IMAGES: usize = 10;
    const ENTRIES: usize = 50_000;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("shared");
    let shared: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&store_dir).unwrap());
    let mut indexes = Vec::new();
    for img in 0..IMAGES {
        // 50,000 entries: 500 directories of 99 small files each.
        let mut b = tar::Builder::new(Vec::new());
        for d in 0..500 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            b.append_data(&mut h, format!("d{d}/"), &[][..]).unwrap();
            for f in 0..(ENTRIES / 500 - 1) {
                let data = format!("image {img} file {d}/{f}\n");
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, format!("d{d}/f{f}"), data.as_bytes())
                    .unwrap();
            }
        }
        let conv = convert_for_test(b.into_inner().unwrap(), &shared).await;
        shared
            .put_if_absent(&ObjectKey::Index(conv.digest), conv.blob.clone())
            .await
            .unwrap();
        indexes.push(conv.digest.to_string());
    }
    let daemon = Daemon::start_with(
        tmp.path(),
        &format!(
            "[store]\nurl = {:?}\n{}",
            store_dir.display().to_string(),
            std::env::var("BENCH_EXTRA_CONFIG").unwrap_or_default()
        ),
    );
    let pid = daemon.pid().unwrap();
    let started = rss_kib(pid);
    let mut c = daemon.client().await;
    for (i, index) in indexes.iter().enumerate() {
        let labels: HashMap<String, String> = [
            (
                "containerd.io/snapshot.ref".to_string(),
                format!("layer-{i}"),
            ),
            (
                "containerd.io/snapshot/slayerfs.index".to_string(),
                index.clone(),
            ),
        ]
        .into();
        let r = c
            .prepare(PrepareSnapshotRequest {
                snapshotter: NAME.into(),
                key: format!("pull-{i}"),
                parent: String::new(),
                labels,
            })
            .await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(containerd_snapshots::tonic::Code::AlreadyExists)
        );
        let pulled = rss_kib(pid);
        let mp = prepare(&mut c, &format!("run-{i}"), &format!("layer-{i}"))
            .await
            .unwrap();
        let seen = tokio::task::spawn_blocking(move || walk(Path::new(&mp)))
            .await
            .unwrap();
        assert_eq!(seen, ENTRIES);
        println!(
            "bench: image {i}: RSS {} MiB pulled, {} MiB mounted and walked",
            pulled / 1024,
            rss_kib(pid) / 1024
        );
    }
    let mounted = rss_kib(pid);
    println!(
        "bench: daemon RSS {} MiB started, {} MiB with {IMAGES} mounted images of {ENTRIES} entries, every entry looked up",
        started / 1024,
        mounted / 1024
    );
    // Mapped record files are page cache (the kernel drops them under
    // pressure); the heap is what the daemon holds on its own.
    println!(
        "bench: of which heap and other anonymous memory {} MiB, mapped files {} MiB",
        status_kib(pid, "RssAnon:") / 1024,
        status_kib(pid, "RssFile:") / 1024
    );
}

//! What is read at each scrape rather than counted as it happens: the
//! caches' hits, misses and bytes (kept by `chunkstore`), snapshots by
//! kind, and process figures (the crate has no process collector: they
//! come from `/proc/self`).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use slayerfs_chunkstore::BlockCache;

/// Snapshots by kind (`active`, `committed`, `view`), counted on demand.
pub type SnapshotCounts = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

pub struct Levels {
    pub cache: Arc<BlockCache>,
    pub snapshots: SnapshotCounts,
}

impl fmt::Debug for Levels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Levels")
    }
}

/// One metric with a single label, one value per label value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    label: &'static str,
    values: Vec<(&'static str, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (value, m) in values {
        let labels = [(label, value)];
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The resident set and open descriptors of this process, if `/proc`
/// tells.
fn process() -> (Option<u64>, Option<u64>) {
    // statm: size resident shared … in pages.
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            pages * u64::try_from(page).unwrap_or(4096)
        });
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    (rss, fds)
}

impl Collector for Levels {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.cache.stats();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        family(
            &mut encoder,
            "slayerfs_cache_hits",
            "Block reads a cache answered, by tier",
            None,
            MetricType::Counter,
            "tier",
            vec![
                ("memory", ConstCounter::new(get(&s.memory_hits))),
                ("disk", ConstCounter::new(get(&s.disk_hits))),
            ],
        )?;
        family(
            &mut encoder,
            "slayerfs_cache_misses",
            "Block reads a cache did not answer, by tier (a disk miss goes to the store)",
            None,
            MetricType::Counter,
            "tier",
            vec![
                ("memory", ConstCounter::new(get(&s.memory_misses))),
                ("disk", ConstCounter::new(get(&s.disk_misses))),
            ],
        )?;
        let (memory, disk) = self.cache.held_bytes();
        let mut held = vec![("memory", ConstGauge::new(memory as i64))];
        if let Some(d) = disk {
            held.push(("disk", ConstGauge::new(d as i64)));
        }
        family(
            &mut encoder,
            "slayerfs_cache",
            "Bytes a cache holds now, by tier",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            "tier",
            held,
        )?;
        let snapshots = (self.snapshots)()
            .into_iter()
            .map(|(kind, n)| (kind, ConstGauge::new(n as i64)))
            .collect();
        family(
            &mut encoder,
            "slayerfs_snapshots",
            "Snapshots recorded now, by kind",
            None,
            MetricType::Gauge,
            "kind",
            snapshots,
        )?;
        let (rss, fds) = process();
        if let Some(rss) = rss {
            let m = encoder.encode_descriptor(
                "slayerfs_process_resident_memory",
                "Resident set of the daemon's process",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss as i64).encode(m)?;
        }
        if let Some(fds) = fds {
            let m = encoder.encode_descriptor(
                "slayerfs_process_open_fds",
                "Open file descriptors of the daemon's process",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(fds as i64).encode(m)?;
        }
        Ok(())
    }
}

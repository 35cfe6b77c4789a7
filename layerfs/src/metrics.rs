//! What this process's FUSE filesystems did, as Prometheus metrics: requests
//! and their latency by operation, failures by errno, and reads that had to
//! wait on the store. Process-wide, as the kernel's view of them is; the
//! daemon registers them with its registry ([`FuseMetrics::register`]).
//! Labels stay few: an operation name or an errno name, never a file.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

type OpLabel = [(&'static str, &'static str); 1];
type ErrnoLabel = [(&'static str, String); 1];

pub struct FuseMetrics {
    requests: Family<OpLabel, Counter>,
    durations: Family<OpLabel, Histogram, fn() -> Histogram>,
    errors: Family<ErrnoLabel, Counter>,
    read_waits: Counter,
}

/// 10 µs to ~40 s, ×4 a bucket: a cached lookup to a read that timed out.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 12))
}

static METRICS: LazyLock<FuseMetrics> = LazyLock::new(|| FuseMetrics {
    requests: Family::default(),
    durations: Family::new_with_constructor(latency_buckets),
    errors: Family::default(),
    read_waits: Counter::default(),
});

/// This process's FUSE metrics.
pub fn fuse() -> &'static FuseMetrics {
    &METRICS
}

impl FuseMetrics {
    /// One request of `op` answered after `took`.
    pub fn answered(&self, op: &'static str, took: Duration) {
        self.requests.get_or_create(&[("op", op)]).inc();
        self.durations
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
    }

    /// A request answered with error `errno`.
    pub fn failed(&self, errno: i32) {
        self.errors
            .get_or_create(&[("errno", errno_name(errno))])
            .inc();
    }

    /// A read whose bytes were not all in memory: answered once fetched.
    pub fn read_waited(&self) {
        self.read_waits.inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "slayerfs_fuse_requests",
            "FUSE requests answered, by operation",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "slayerfs_fuse_request_duration",
            "Time from a FUSE request's arrival to its answer, by operation",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register(
            "slayerfs_fuse_errors",
            "FUSE requests answered with an error, by errno",
            self.errors.clone(),
        );
        registry.register(
            "slayerfs_fuse_reads_waiting_on_store",
            "FUSE reads whose bytes were not in memory and waited on the disk cache or the store",
            self.read_waits.clone(),
        );
    }
}

/// The symbolic name of `errno` for the ones a filesystem answers, its
/// number otherwise (a bounded set either way).
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::E2BIG => "E2BIG",
        _ => return errno.to_string(),
    };
    name.to_string()
}

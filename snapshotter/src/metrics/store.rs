//! The block store's requests as metrics: a [`MeteredStore`] in front of
//! any store counts each request by operation and result, times it, and
//! counts the bytes it fetched.

use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use slayerfs_chunkstore::{
    BlockStore, ChainDigest, ObjectKey, PutOutcome, RangeRead, StoreError, TraceDigest,
};

type OpResult = [(&'static str, &'static str); 2];
type Op = [(&'static str, &'static str); 1];

pub struct StoreMetrics {
    requests: Family<OpResult, Counter>,
    durations: Family<Op, Histogram, fn() -> Histogram>,
    fetched: Counter,
}

/// 100 µs to ~100 s, ×4 a bucket: a local read to a stalled S3 answer.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 4.0, 11))
}

static METRICS: LazyLock<StoreMetrics> = LazyLock::new(|| StoreMetrics {
    requests: Family::default(),
    durations: Family::new_with_constructor(latency_buckets),
    fetched: Counter::default(),
});

pub fn metrics() -> &'static StoreMetrics {
    &METRICS
}

impl StoreMetrics {
    fn record<T>(&self, op: &'static str, started: Instant, r: &Result<T, StoreError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(StoreError::NotFound { .. }) => "not_found",
            Err(_) => "error",
        };
        self.requests
            .get_or_create(&[("op", op), ("result", result)])
            .inc();
        self.durations
            .get_or_create(&[("op", op)])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "slayerfs_store_requests",
            "Requests to the block store, by operation and result (ok, not_found, error)",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "slayerfs_store_request_duration",
            "Time a block store request took, by operation",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register(
            "slayerfs_store_bytes_fetched",
            "Stored bytes fetched from the block store (whole objects and ranges)",
            self.fetched.clone(),
        );
    }
}

/// `inner`, its requests counted in [`metrics`].
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn BlockStore>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn BlockStore>) -> Arc<dyn BlockStore> {
        Arc::new(MeteredStore { inner })
    }
}

#[async_trait]
impl BlockStore for MeteredStore {
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        let started = Instant::now();
        let r = self.inner.get(key).await;
        metrics().record("get", started, &r);
        if let Ok(bytes) = &r {
            metrics().fetched.inc_by(bytes.len() as u64);
        }
        r
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<RangeRead, StoreError> {
        let started = Instant::now();
        let r = self.inner.get_range(key, range).await;
        metrics().record("get_range", started, &r);
        if let Ok(read) = &r {
            metrics().fetched.inc_by(read.bytes.len() as u64);
        }
        r
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        let started = Instant::now();
        let r = self.inner.exists(key).await;
        metrics().record("exists", started, &r);
        r
    }

    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.put_replacing(key, data).await;
        metrics().record("put", started, &r);
        r
    }

    async fn put_if_absent(
        &self,
        key: &ObjectKey,
        data: Vec<u8>,
    ) -> Result<PutOutcome, StoreError> {
        let started = Instant::now();
        let r = self.inner.put_if_absent(key, data).await;
        metrics().record("put", started, &r);
        r
    }

    async fn list_traces(&self, chain: &ChainDigest) -> Result<Vec<TraceDigest>, StoreError> {
        let started = Instant::now();
        let r = self.inner.list_traces(chain).await;
        metrics().record("list", started, &r);
        r
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.delete(key).await;
        metrics().record("delete", started, &r);
        r
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}

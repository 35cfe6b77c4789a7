//! Validation of a loaded configuration: every value checked, the first
//! wrong one named by its key.

use std::fmt::Display;
use std::ops::RangeInclusive;

use crate::{invalid, is_host, Config, ConfigError, StoreLocation};

impl Config {
    /// Checks every value, naming the first key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        if let Some(url) = &self.store.url {
            StoreLocation::parse(url).map_err(|r| invalid("store.url", r))?;
        }
        let s3 = &self.store.s3;
        if let Some(ep) = &s3.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(invalid(
                    "store.s3.endpoint",
                    format!("`{ep}` must start with http:// or https://"),
                ));
            }
        }
        if s3.region.is_empty() {
            return Err(invalid("store.s3.region", "must not be empty"));
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            return Err(invalid(
                "store.s3.secret_access_key",
                "access_key_id and secret_access_key must be given together",
            ));
        }
        within("store.s3.max_attempts", s3.max_attempts, 1..=10)?;
        if s3.initial_backoff_ms > 60_000 {
            return Err(invalid(
                "store.s3.initial_backoff_ms",
                "must be at most 60000",
            ));
        }
        if s3.connect_timeout_ms == 0 || s3.operation_timeout_ms == 0 {
            let key = if s3.connect_timeout_ms == 0 {
                "store.s3.connect_timeout_ms"
            } else {
                "store.s3.operation_timeout_ms"
            };
            return Err(invalid(key, "must be greater than 0"));
        }
        within("convert.zstd_level", self.convert.zstd_level, 1..=19)?;
        if !self.convert.part_kib.is_power_of_two() || !(16..=4096).contains(&self.convert.part_kib)
        {
            return Err(invalid(
                "convert.part_kib",
                format!(
                    "{} is not a power of two in 16..=4096",
                    self.convert.part_kib
                ),
            ));
        }
        if self.convert.workers > 256 {
            return Err(invalid("convert.workers", "must be at most 256"));
        }
        let t = &self.trace;
        within("trace.window_ms", t.window_ms, 100..=600_000)?;
        within("trace.max_files", t.max_files, 1..=65_536)?;
        within("trace.max_ranges_per_file", t.max_ranges_per_file, 1..=1024)?;
        within("trace.parallel", t.parallel, 1..=64)?;
        // A cache smaller than one block would hold nothing.
        const BLOCK: u64 = 4 << 20;
        if self.cache.memory_bytes < BLOCK {
            return Err(invalid(
                "cache.memory_bytes",
                format!("must be at least {BLOCK} (one block)"),
            ));
        }
        if self.cache.disk_bytes != 0 && self.cache.disk_bytes < BLOCK {
            return Err(invalid(
                "cache.disk_bytes",
                format!("must be 0 (no disk cache) or at least {BLOCK} (one block)"),
            ));
        }
        if self
            .cache
            .disk_dir
            .as_ref()
            .is_some_and(|d| !d.is_absolute())
        {
            return Err(invalid("cache.disk_dir", "must be an absolute path"));
        }
        if self.cache.read_ahead_blocks > 64 {
            return Err(invalid("cache.read_ahead_blocks", "must be at most 64"));
        }
        within(
            "cache.read_timeout_ms",
            self.cache.read_timeout_ms,
            100..=600_000,
        )?;
        if !((1 << 20)..=(64 << 30)).contains(&self.snapshotter.db_cache_bytes) {
            return Err(invalid(
                "snapshotter.db_cache_bytes",
                "must be between 1 MiB and 64 GiB",
            ));
        }
        let r = &self.registry;
        for (key, ms) in [
            ("registry.connect_timeout_ms", r.connect_timeout_ms),
            ("registry.read_timeout_ms", r.read_timeout_ms),
        ] {
            within(key, ms, 1..=600_000)?;
        }
        let hosts = r
            .insecure
            .iter()
            .chain(r.mirrors.keys())
            .chain(r.mirrors.values().flatten())
            .chain(r.auths.keys());
        for h in hosts {
            if !is_host(h) {
                return Err(invalid(
                    "registry",
                    format!("`{h}` is not a registry host[:port]"),
                ));
            }
        }
        Ok(())
    }
}

/// `value` must lie in `range`, or `key` is named as wrong.
fn within<T: PartialOrd + Display>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(
        key,
        format!("{value} is outside {}..={}", range.start(), range.end()),
    ))
}

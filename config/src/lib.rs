//! SlayerFS configuration.
//!
//! Owns the TOML file (`/etc/slayerfs/config.toml` unless `--config` names
//! another), the defaults that make an embedded single-node setup work with no
//! file at all, and validation that names the offending key. It knows nothing
//! about how the values are used.
//!
//! ```toml
//! # Everything SlayerFS keeps on this node (sled database, local blocks).
//! state_dir = "/var/lib/slayerfs"
//!
//! [store]
//! # Where blocks and layer indexes live: a directory, or s3://BUCKET[/PREFIX].
//! # Default: "<state_dir>/store".
//! url = "s3://images/slayerfs"
//!
//! [store.s3]
//! endpoint = "http://127.0.0.1:9000"   # any S3-compatible endpoint, path-style
//! region = "us-east-1"
//! # Credentials; when absent, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
//! # AWS_SESSION_TOKEN from the environment are used.
//! access_key_id = "..."
//! secret_access_key = "..."
//! max_attempts = 4          # per request, first try included
//! initial_backoff_ms = 100  # doubled after each failed attempt, with jitter
//! connect_timeout_ms = 3000
//! operation_timeout_ms = 8000  # one attempt's wait for an answer; the longest a body may stall
//!
//! [convert]
//! zstd_level = 3   # 1..=19
//! workers = 0      # threads hashing and compressing blocks; 0 = one per core
//! part_kib = 128   # blocks are stored in parts a read can fetch alone: 16..=4096, a power of two
//!
//! [cache]
//! memory_bytes = 268435456       # plain block bytes kept in memory (256 MiB)
//! disk_bytes = 10737418240       # verified blocks kept on disk (10 GiB; plain bytes + a CRC), evicted past that; 0 = none
//! disk_dir = "/var/lib/slayerfs/cache"   # default: <state_dir>/cache
//! read_ahead_blocks = 8          # blocks fetched ahead of a sequential reader; 0..=64
//! read_timeout_ms = 20000        # a read waiting longer for blocks fails with EIO
//! pinned_bytes = 2147483648      # blocks of open files kept on disk beyond disk_bytes (2 GiB)
//!
//! [registry]
//! insecure = ["registry.lan:5000"]                 # plain HTTP (localhost always is)
//! mirrors = { "docker.io" = ["mirror.lan:5000"] }  # tried first, in order
//! connect_timeout_ms = 5000
//! read_timeout_ms = 20000   # the longest an answer may stall
//! [registry.auths."registry.example"]              # else ~/.docker/config.json
//! username = "..."
//! password = "..."
//!
//! [trace]
//! enabled = true              # record a lazily pulled image's first reads; prefetch what its trace names
//! window_ms = 10000           # how long after the first mount reads are recorded
//! max_files = 10000           # files in a trace
//! max_ranges_per_file = 64    # byte ranges kept per file (the closest ones merge past that)
//! parallel = 8                # blocks a trace's prefetch fetches at once
//! share = true                # write traces to the shared store (else, or if it refuses, keep them here)
//!
//! [snapshotter]
//! unmount_on_exit = false   # SIGTERM unmounts everything (drain) instead of a restart
//! db_cache_bytes = 16777216 # the node database's page cache (16 MiB; sled holds several times it)
//! fd_holder = "/usr/local/bin/slayerfs-fdholder"   # default: beside the daemon, else PATH
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the configuration is read from when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/slayerfs/config.toml";
/// Where node state lives when the configuration does not say.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/slayerfs";

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node state: sled database and, by default, the local block store.
    pub state_dir: PathBuf,
    pub store: StoreConfig,
    pub convert: ConvertConfig,
    pub cache: CacheConfig,
    pub registry: RegistryConfig,
    pub snapshotter: SnapshotterConfig,
    pub trace: TraceConfig,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            store: StoreConfig::default(),
            convert: ConvertConfig::default(),
            cache: CacheConfig::default(),
            registry: RegistryConfig::default(),
            snapshotter: SnapshotterConfig::default(),
            trace: TraceConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `[metrics]`: the daemon's Prometheus endpoint (`/metrics`, and
/// `/healthz` beside it).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// HOST:PORT to serve on; no endpoint when unset.
    pub address: Option<std::net::SocketAddr>,
}

/// `[trace]`: learning what an image reads first. The first start of an
/// image on a node records what its container reads in its first seconds
/// and stores it beside the layer indexes (in the local state when the
/// shared store takes no writes); a lazy pull of an image with a trace
/// fetches those blocks before the container asks for them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    /// Record starts and prefetch what traces name.
    pub enabled: bool,
    /// How long after a container's filesystem is mounted reads are
    /// recorded.
    pub window_ms: u64,
    /// The most files one recording names.
    pub max_files: usize,
    /// The most byte ranges kept per file (closer ones are joined).
    pub max_ranges_per_file: usize,
    /// Blocks a trace's prefetch fetches at once.
    pub parallel: usize,
    /// Write traces to the shared store (for every node); off, or when the
    /// store refuses, they stay on this node.
    pub share: bool,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            enabled: true,
            window_ms: 10_000,
            max_files: 10_000,
            max_ranges_per_file: 64,
            parallel: 8,
            share: true,
        }
    }
}

/// `[snapshotter]`: how the daemon ends and restarts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotterConfig {
    /// SIGTERM unmounts every snapshot and lets go of every FUSE
    /// connection (draining a node) instead of leaving them to the next
    /// start (a restart, which running containers do not notice).
    pub unmount_on_exit: bool,
    /// The fd holder binary; `slayerfs-fdholder` beside the daemon's own
    /// binary, else on `PATH`, if unset.
    pub fd_holder: Option<PathBuf>,
    /// The node database's page cache (sled's `cache_capacity`: what it
    /// holds in memory is several times this).
    pub db_cache_bytes: u64,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            unmount_on_exit: false,
            fd_holder: None,
            db_cache_bytes: 16 << 20,
        }
    }
}

/// `[cache]`: the block caches of the read path.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Plain block bytes kept in memory.
    pub memory_bytes: u64,
    /// Stored block bytes kept on disk; 0 disables the disk cache.
    pub disk_bytes: u64,
    /// Where the disk cache lives; `<state_dir>/cache` if unset.
    pub disk_dir: Option<PathBuf>,
    /// Blocks of a file fetched ahead of where it is being read.
    pub read_ahead_blocks: u32,
    /// The longest a read waits for blocks before it fails with EIO (the
    /// kernel's request never waits on a sick store for longer).
    pub read_timeout_ms: u64,
    /// Stored bytes of open files' blocks kept on disk beyond `disk_bytes`
    /// (so a file being read is not evicted under its reader); blocks
    /// past it are cached like any other.
    pub pinned_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 256 << 20,
            disk_bytes: 10 << 30,
            disk_dir: None,
            read_ahead_blocks: 8,
            read_timeout_ms: 20_000,
            pinned_bytes: 2 << 30,
        }
    }
}

/// `[registry]`: how registries are reached (by `slayerfs pull` and
/// `convert`, and by the snapshotter when a layer index is only in the
/// registry).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) reached over plain HTTP; localhost and
    /// 127.0.0.1 always are.
    pub insecure: Vec<String>,
    /// Mirrors (`host[:port]`) tried, in order, before a registry:
    /// `mirrors = { "docker.io" = ["mirror.example:5000"] }`.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Credentials per registry: `[registry.auths."reg.example"]` with
    /// `username` and `password`. Without, `~/.docker/config.json`.
    pub auths: BTreeMap<String, RegistryAuth>,
    pub connect_timeout_ms: u64,
    /// The longest a request may wait for the next bytes of an answer
    /// (a registry that accepts and never answers fails a pull in time).
    pub read_timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            auths: BTreeMap::new(),
            connect_timeout_ms: 5_000,
            read_timeout_ms: 20_000,
        }
    }
}

/// A registry login.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

// Passwords stay out of logs and error messages.
impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("mirrors", &self.mirrors)
            .field("auths", &self.auths)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("read_timeout_ms", &self.read_timeout_ms)
            .finish()
    }
}

/// Whether `s` is a bare `host[:port]` (no scheme, path or spaces).
fn is_host(s: &str) -> bool {
    !s.is_empty() && !s.contains("://") && !s.contains('/') && !s.chars().any(char::is_whitespace)
}

/// `[store]`: where blocks and layer indexes are kept.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A directory path or `s3://BUCKET[/PREFIX]`; `<state_dir>/store` if unset.
    pub url: Option<String>,
    pub s3: S3Config,
}

/// `[store.s3]`: how to reach an S3-compatible service.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; AWS's own when unset.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub connect_timeout_ms: u64,
    pub operation_timeout_ms: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            max_attempts: 4,
            initial_backoff_ms: 100,
            connect_timeout_ms: 3_000,
            operation_timeout_ms: 8_000,
        }
    }
}

// Secrets stay out of logs and error messages.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("operation_timeout_ms", &self.operation_timeout_ms)
            .finish()
    }
}

/// `[convert]`: how `slayerfs convert` cuts and compresses blocks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConvertConfig {
    pub zstd_level: i32,
    /// Threads hashing and compressing blocks; 0 means one per core.
    pub workers: usize,
    /// The plain KiB of a block a read can fetch (and verify) alone: each
    /// is a zstd frame of its own. Smaller parts fetch less for a random
    /// read and compress a little worse.
    pub part_kib: u32,
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig {
            zstd_level: 3,
            workers: 0,
            part_kib: 128,
        }
    }
}

/// A parsed block store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A directory on this node.
    Local(PathBuf),
    /// A bucket, with a key prefix (no leading or trailing `/`, may be empty).
    S3 { bucket: String, prefix: String },
}

impl StoreLocation {
    /// Parses `s3://BUCKET[/PREFIX]` or a directory path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket)?;
            let prefix = prefix.trim_matches('/');
            if prefix
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
                && !prefix.is_empty()
            {
                return Err(format!(
                    "S3 prefix `{prefix}` has an empty, `.` or `..` component"
                ));
            }
            return Ok(StoreLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if s.contains("://") {
            return Err(format!(
                "`{s}` is neither a directory path nor an s3:// URL"
            ));
        }
        if s.is_empty() {
            return Err("the store location is empty".into());
        }
        Ok(StoreLocation::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Local(p) => write!(f, "{}", p.display()),
            StoreLocation::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

fn validate_bucket(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !(3..=63).contains(&bucket.len()) || !ok_chars {
        return Err(format!(
            "`{bucket}` is not a valid S3 bucket name (3 to 63 characters of a-z, 0-9, `-`, `.`)"
        ));
    }
    Ok(())
}

impl Config {
    /// Loads the configuration. With `path` given the file must exist; without
    /// it, [`DEFAULT_CONFIG_PATH`] is read if present and defaults apply
    /// otherwise.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml(&text).map_err(|e| match e {
                ConfigError::Parse { message, .. } => ConfigError::Parse { path, message },
                other => other,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // One line: "line N `the line`: what", without the snippet art.
            let what = e.message().trim_end().replace('\n', " ");
            let message = match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let n = text[..start].matches('\n').count() + 1;
                    let line = text.lines().nth(n - 1).unwrap_or("").trim();
                    format!("line {n} `{line}`: {what}")
                }
                None => what,
            };
            ConfigError::Parse {
                path: PathBuf::from("<text>"),
                message,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The block store location: `store.url`, or `<state_dir>/store`.
    pub fn store_location(&self) -> StoreLocation {
        match &self.store.url {
            // Validated in `validate`; an invalid value cannot reach here
            // through `load`, and falls back to the default otherwise.
            Some(url) => StoreLocation::parse(url).unwrap_or_else(|_| self.default_store()),
            None => self.default_store(),
        }
    }

    fn default_store(&self) -> StoreLocation {
        StoreLocation::Local(self.state_dir.join("store"))
    }

    /// The disk cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .disk_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("cache"))
    }

    /// The sled database directory.
    pub fn db_dir(&self) -> PathBuf {
        self.state_dir.join("db")
    }

    /// Where read-only mounts keep their layer records while they run.
    pub fn mounts_dir(&self) -> PathBuf {
        self.state_dir.join("mounts")
    }

    /// Worker threads for conversion, `0` resolved to the number of cores.
    pub fn convert_workers(&self) -> usize {
        match self.convert.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

mod validate;

#[cfg(test)]
mod tests;

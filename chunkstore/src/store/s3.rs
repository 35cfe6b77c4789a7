//! A block store in an S3 bucket (any S3-compatible endpoint, path-style).

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use slayerfs_config::S3Config;

use super::{
    range_header, trace_name, BlockStore, ObjectKey, RangeRead, StoreError, MAX_TRACES_LISTED,
};
use crate::id::{ChainDigest, TraceDigest};

/// Objects under `s3://bucket/prefix/`. Retries with exponential backoff and
/// per-attempt timeouts come from the SDK, bounded by the config; a body
/// that fails or stalls is retried by [`S3Store`] itself, as often.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    retry: BodyRetry,
}

/// How bodies are retried: the SDK's settings, applied to the body.
#[derive(Debug, Clone, Copy)]
struct BodyRetry {
    max_attempts: u32,
    initial_backoff: Duration,
    /// The longest a body may go without a byte.
    stall: Duration,
}

/// How a GET failed: a body worth another attempt, or for good.
enum Failure {
    Body(StoreError),
    Final(StoreError),
}

#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
struct Stalled(Duration);

#[derive(Debug, thiserror::Error)]
#[error("the body ended after {got} of {announced} bytes")]
struct Short {
    announced: u64,
    got: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the answer to a ranged GET does not match it: {0}")]
struct BadRange(String);

/// `bytes START-END/TOTAL`: the start and the object's length.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let (span, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Credentials from the config, else the standard AWS environment variables;
/// none at all means anonymous requests (public buckets).
fn credentials(cfg: &S3Config) -> Option<Credentials> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (id, secret, token) = match (&cfg.access_key_id, &cfg.secret_access_key) {
        (Some(id), Some(secret)) => (id.clone(), secret.clone(), cfg.session_token.clone()),
        _ => (
            env("AWS_ACCESS_KEY_ID")?,
            env("AWS_SECRET_ACCESS_KEY")?,
            env("AWS_SESSION_TOKEN"),
        ),
    };
    Some(Credentials::new(id, secret, token, None, "slayerfs"))
}

fn region(cfg: &S3Config) -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| cfg.region.clone())
}

impl S3Store {
    /// Builds a client for `bucket`; no request is made until first use.
    pub async fn open(bucket: &str, prefix: &str, cfg: &S3Config) -> Result<Self, StoreError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(region(cfg)))
            .force_path_style(true)
            // Blocks carry their own sha256; per-request CRCs would only
            // cost CPU (and not every S3-compatible server supports them).
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts)
                    .with_initial_backoff(Duration::from_millis(cfg.initial_backoff_ms)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
                    .operation_attempt_timeout(Duration::from_millis(cfg.operation_timeout_ms))
                    .build(),
            );
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        match credentials(cfg) {
            Some(c) => b = b.credentials_provider(c),
            None => {
                tracing::warn!(
                    bucket,
                    "no S3 credentials configured; sending anonymous requests"
                );
                b = b.allow_no_auth();
            }
        }
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            retry: BodyRetry {
                max_attempts: cfg.max_attempts,
                initial_backoff: Duration::from_millis(cfg.initial_backoff_ms),
                stall: Duration::from_millis(cfg.operation_timeout_ms),
            },
        })
    }

    /// One GET: the SDK's attempts at a response, then the body, read as
    /// it comes (a stall longer than one attempt's timeout fails it) and
    /// refused as soon as it outgrows what `key` may be.
    async fn get_once(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<RangeRead, Failure> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .set_range(range.as_ref().map(range_header))
            .send()
            .await;
        let mut out = match out {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(Failure::Final(StoreError::NotFound {
                    store: self.location(),
                    key: Box::new(*key),
                }))
            }
            Err(e) => return Err(Failure::Final(self.err("GET", key, e))),
        };
        let limit = key.max_stored_bytes();
        let announced = out.content_length().map_or(0, |n| n.max(0) as u64);
        if announced > limit {
            let e = StoreError::too_large(self.location(), key, announced);
            return Err(Failure::Final(e));
        }
        // Never more than the limit, whatever the header said.
        let mut bytes = Vec::with_capacity(announced.min(8 << 20) as usize);
        loop {
            let next = tokio::time::timeout(self.retry.stall, out.body.next()).await;
            match next {
                Err(_) => {
                    let e = self.err("GET body", key, Stalled(self.retry.stall));
                    return Err(Failure::Body(e));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Failure::Body(self.err("GET body", key, e))),
                Ok(Some(Ok(piece))) => {
                    let size = (bytes.len() + piece.len()) as u64;
                    if size > limit {
                        let e = StoreError::too_large(self.location(), key, size);
                        return Err(Failure::Final(e));
                    }
                    bytes.extend_from_slice(&piece);
                }
            }
        }
        if announced != 0 && bytes.len() as u64 != announced {
            let e = self.err(
                "GET body",
                key,
                Short {
                    announced,
                    got: bytes.len(),
                },
            );
            return Err(Failure::Body(e));
        }
        let whole = |bytes: Vec<u8>| RangeRead {
            start: 0,
            object_len: bytes.len() as u64,
            bytes,
        };
        let Some(range) = range else {
            return Ok(whole(bytes));
        };
        // A server that ignores ranges answers with the whole object.
        let read = match out.content_range().map(parse_content_range) {
            None => RangeRead::cut(bytes, &range),
            Some(Some((start, object_len))) => RangeRead {
                bytes,
                start,
                object_len,
            },
            Some(None) => {
                let why = BadRange(out.content_range().unwrap_or_default().to_string());
                return Err(Failure::Final(self.err("GET", key, why)));
            }
        };
        if !read.answers(&range) {
            let why = BadRange(format!(
                "{} bytes from {} of {} for {}",
                read.bytes.len(),
                read.start,
                read.object_len,
                range_header(&range)
            ));
            return Err(Failure::Final(self.err("GET", key, why)));
        }
        Ok(read)
    }

    /// A GET, with bodies that failed half-way retried.
    async fn get_retrying(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<RangeRead, StoreError> {
        // The SDK retries until a response starts; a body cut or stalled
        // half-way is retried here, as many times.
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            match self.get_once(key, range.clone()).await {
                Err(Failure::Body(e)) if attempt < self.retry.max_attempts => {
                    tracing::debug!(key = %key, attempt, error = %e, "retrying a GET whose body failed");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                Err(Failure::Body(e) | Failure::Final(e)) => return Err(e),
                Ok(read) => return Ok(read),
            }
        }
    }

    fn object_key(&self, key: &ObjectKey) -> String {
        if self.prefix.is_empty() {
            key.relative_path()
        } else {
            format!("{}/{}", self.prefix, key.relative_path())
        }
    }

    fn err(&self, op: &'static str, key: &ObjectKey, e: impl std::error::Error) -> StoreError {
        StoreError::S3 {
            store: self.location(),
            op,
            key: Box::new(*key),
            message: crate::error_chain(&e),
        }
    }
}

#[async_trait]
impl BlockStore for S3Store {
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        Ok(self.get_retrying(key, None).await?.bytes)
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<RangeRead, StoreError> {
        self.get_retrying(key, Some(range)).await
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(self.err("HEAD", key, e)),
        }
    }

    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.err("PUT", key, e))?;
        Ok(())
    }

    async fn list_traces(&self, chain: &ChainDigest) -> Result<Vec<TraceDigest>, StoreError> {
        let relative = ObjectKey::traces_of(chain);
        let prefix = if self.prefix.is_empty() {
            relative
        } else {
            format!("{}/{relative}", self.prefix)
        };
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .max_keys(MAX_TRACES_LISTED as i32)
            .send()
            .await
            .map_err(|e| StoreError::List {
                store: self.location(),
                prefix: prefix.clone(),
                message: crate::error_chain(&e),
            })?;
        let mut found: Vec<TraceDigest> = out
            .contents()
            .iter()
            .filter_map(|o| trace_name(o.key()?.strip_prefix(&prefix)?))
            .collect();
        found.sort();
        found.truncate(MAX_TRACES_LISTED);
        Ok(found)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
            .map_err(|e| self.err("DELETE", key, e))?;
        Ok(())
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

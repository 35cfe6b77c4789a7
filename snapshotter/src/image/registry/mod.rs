//! Reading images from an OCI registry (`oci-client`): credentials, plain
//! HTTP for local registries, the manifest of one platform, and blobs,
//! each verified against its digest and refused past a size limit.
//!
//! It knows nothing of containerd or of what the blobs mean.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

mod auth;
use auth::auth_for;
use oci_client::Reference;
use sha2::{Digest, Sha256};
use slayerfs_chunkstore::error_chain;
use slayerfs_config::RegistryConfig;

/// Media types of what a reference can name.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and configs are small; anything larger is refused unread.
const MAX_JSON_BYTES: u64 = 16 << 20;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP for every registry (else only for localhost, 127.0.0.1
    /// and the configuration's `insecure` ones, as containerd does).
    pub insecure: bool,
    /// `USER:PASS`, used for every registry; else the configuration's
    /// `auths`, else `~/.docker/config.json`.
    pub creds: Option<String>,
    /// `[registry]` from the configuration file.
    pub config: RegistryConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image reference `{0}`: {1}")]
    Reference(String, String),
    #[error("{image}: {message}")]
    Request { image: String, message: String },
    #[error("{image}: {what} {digest} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        image: String,
        what: &'static str,
        digest: String,
        size: u64,
        limit: u64,
    },
    #[error("{image}: {what} hashes to sha256:{actual}, not {expected}")]
    Digest {
        image: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{image}: {message}")]
    Malformed { image: String, message: String },
    #[error("{image}: no manifest for platform {platform}")]
    NoPlatform { image: String, platform: String },
    #[error("credentials: {0}")]
    Creds(String),
}

/// One image reference on its registry.
pub struct RemoteImage {
    client: oci_client::Client,
    reference: Reference,
    auth: RegistryAuth,
}

/// A manifest as fetched: its bytes (for the content store), digest and
/// media type, and the index it was chosen from, if any.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
    pub index: Option<(Vec<u8>, String, String)>,
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_local(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

impl RemoteImage {
    pub fn new(image: &str, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        let reference: Reference = image.parse().map_err(|e: oci_client::ParseError| {
            RegistryError::Reference(image.to_string(), e.to_string())
        })?;
        Self::at(reference, opts)
    }

    /// `image` on each of its registry's configured mirrors, in order, then
    /// on the registry itself.
    pub fn with_mirrors(image: &str, opts: &RegistryOptions) -> Result<Vec<Self>, RegistryError> {
        let reference: Reference = image.parse().map_err(|e: oci_client::ParseError| {
            RegistryError::Reference(image.to_string(), e.to_string())
        })?;
        let mut out = Vec::new();
        let mirrors = opts
            .config
            .mirrors
            .get(reference.registry())
            .or_else(|| opts.config.mirrors.get(reference.resolve_registry()));
        for m in mirrors.into_iter().flatten() {
            let on_mirror = match reference.digest() {
                Some(d) => Reference::with_digest(
                    m.clone(),
                    reference.repository().to_string(),
                    d.to_string(),
                ),
                None => Reference::with_tag(
                    m.clone(),
                    reference.repository().to_string(),
                    reference.tag().unwrap_or("latest").to_string(),
                ),
            };
            out.push(Self::at(on_mirror, opts)?);
        }
        out.push(Self::at(reference, opts)?);
        Ok(out)
    }

    fn at(reference: Reference, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        let registry = reference.resolve_registry().to_string();
        let insecure =
            opts.insecure || is_local(&registry) || opts.config.insecure.contains(&registry);
        let protocol = if insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol,
            // Platforms are chosen here, from the raw index.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_millis(opts.config.connect_timeout_ms)),
            read_timeout: Some(Duration::from_millis(opts.config.read_timeout_ms)),
            ..Default::default()
        });
        let auth = auth_for(&registry, opts)?;
        Ok(RemoteImage {
            client,
            reference,
            auth,
        })
    }

    /// The reference in full (`registry/repository:tag`).
    pub fn name(&self) -> String {
        self.reference.whole()
    }

    fn request_err(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Request {
            image: self.name(),
            message: e.to_string(),
        }
    }

    /// The manifest for `platform` (`os/arch`), through an index if the
    /// reference names one.
    pub async fn manifest(&self, platform: &str) -> Result<FetchedManifest, RegistryError> {
        let (bytes, digest, media_type) = self.raw_manifest(None).await?;
        if !is_index(&media_type) {
            return Ok(FetchedManifest {
                bytes,
                digest,
                media_type,
                index: None,
            });
        }
        let index: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| self.malformed(format!("index: {e}")))?;
        let chosen = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| platform_matches(&m["platform"], platform))
            .ok_or_else(|| RegistryError::NoPlatform {
                image: self.name(),
                platform: platform.to_string(),
            })?;
        let child = chosen["digest"]
            .as_str()
            .ok_or_else(|| self.malformed("an index entry without a digest".into()))?
            .to_string();
        let (child_bytes, _, child_type) = self.raw_manifest(Some(&child)).await?;
        Ok(FetchedManifest {
            bytes: child_bytes,
            digest: child,
            media_type: child_type,
            index: Some((bytes, digest, media_type)),
        })
    }

    /// The manifest or index the reference names (or, with `digest`, the
    /// one of that digest in the same repository), verified: its bytes,
    /// digest and media type.
    pub async fn raw_manifest(
        &self,
        digest: Option<&str>,
    ) -> Result<(Vec<u8>, String, String), RegistryError> {
        let accepted = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let (bytes, got) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, &accepted)
            .await
            .map_err(|e| self.request_err(error_chain(&e)))?;
        let bytes = bytes.to_vec();
        let digest = digest.map(str::to_string).unwrap_or(got);
        self.check_digest("manifest", &bytes, &digest)?;
        let media_type = media_type_of(&bytes).map_err(|m| self.malformed(m))?;
        Ok((bytes, digest, media_type))
    }

    /// Uploads a manifest by its digest (one of an index's).
    pub async fn push_manifest_by_digest(
        &self,
        bytes: Vec<u8>,
        media_type: &str,
        digest: &str,
    ) -> Result<(), RegistryError> {
        let reference = self.reference.clone_with_digest(digest.to_string());
        self.push_manifest_to(&reference, bytes, media_type).await?;
        Ok(())
    }

    /// A blob of at most `limit` bytes, verified against `digest` (`size`,
    /// if known, is checked first; the limit holds whatever the registry
    /// sends).
    pub async fn blob(
        &self,
        what: &'static str,
        digest: &str,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if size > limit {
            return Err(self.too_large(what, digest, size, limit));
        }
        let mut out = Vec::with_capacity(size as usize);
        self.stream_blob(what, digest, limit, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Streams a blob of at most `limit` bytes into a new file at `path`; a
    /// blob that is too large or does not match `digest` leaves no file.
    /// Returns its size.
    pub async fn blob_to_file(
        &self,
        what: &'static str,
        digest: &str,
        limit: u64,
        path: &std::path::Path,
    ) -> Result<u64, RegistryError> {
        use std::io::Write;
        let io_err = |e: std::io::Error| self.request_err(format!("{what} {digest}: {e}"));
        let file = std::fs::File::create(path).map_err(io_err)?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = self
            .stream_blob(what, digest, limit, |chunk| {
                file.write_all(chunk).map_err(io_err)
            })
            .await
            .and_then(|size| {
                file.flush().map_err(io_err)?;
                Ok(size)
            });
        if result.is_err() {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Feeds a blob to `sink` chunk by chunk, hashing it and stopping past
    /// `limit` bytes; returns its size once it matched `digest`.
    async fn stream_blob(
        &self,
        what: &'static str,
        digest: &str,
        limit: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), RegistryError>,
    ) -> Result<u64, RegistryError> {
        use futures_util::StreamExt;
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, digest)
            .await
            .map_err(|e| self.request_err(format!("{what} {digest}: {}", error_chain(&e))))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk
                .map_err(|e| self.request_err(format!("{what} {digest}: {}", error_chain(&e))))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(self.too_large(what, digest, size, limit));
            }
            hasher.update(&chunk);
            sink(&chunk)?;
        }
        let actual = hex::encode(hasher.finalize());
        if digest.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(RegistryError::Digest {
                image: self.name(),
                what,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(size)
    }

    fn too_large(&self, what: &'static str, digest: &str, size: u64, limit: u64) -> RegistryError {
        RegistryError::TooLarge {
            image: self.name(),
            what,
            digest: digest.to_string(),
            size,
            limit,
        }
    }

    /// Authenticates for pushing (before [`Self::push_blob`]).
    pub async fn authenticate_push(&self) -> Result<(), RegistryError> {
        self.client
            .auth(
                &self.reference,
                &self.auth,
                oci_client::RegistryOperation::Push,
            )
            .await
            .map_err(|e| {
                self.request_err(format!("authenticating to push: {}", error_chain(&e)))
            })?;
        Ok(())
    }

    /// Uploads a blob unless the repository has it; true if uploaded.
    pub async fn push_blob(&self, digest: &str, data: Vec<u8>) -> Result<bool, RegistryError> {
        let present = self
            .client
            .blob_exists(&self.reference, digest)
            .await
            .map_err(|e| self.request_err(format!("blob {digest}: {}", error_chain(&e))))?;
        if present {
            return Ok(false);
        }
        self.client
            .push_blob(&self.reference, data, digest)
            .await
            .map_err(|e| {
                self.request_err(format!("uploading blob {digest}: {}", error_chain(&e)))
            })?;
        Ok(true)
    }

    /// Uploads a manifest under the reference's tag; returns its URL.
    pub async fn push_manifest(
        &self,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<String, RegistryError> {
        self.push_manifest_to(&self.reference, bytes, media_type)
            .await
    }

    async fn push_manifest_to(
        &self,
        reference: &Reference,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let content_type = media_type
            .parse()
            .map_err(|_| self.malformed(format!("media type `{media_type}`")))?;
        self.client
            .push_manifest_raw(reference, bytes, content_type)
            .await
            .map_err(|e| {
                self.request_err(format!(
                    "uploading manifest {}: {}",
                    reference.whole(),
                    error_chain(&e)
                ))
            })
    }

    /// A manifest or config blob (small JSON).
    pub async fn json_blob(
        &self,
        what: &'static str,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        self.blob(what, digest, size, MAX_JSON_BYTES).await
    }

    fn check_digest(
        &self,
        what: &'static str,
        bytes: &[u8],
        expected: &str,
    ) -> Result<(), RegistryError> {
        let actual = sha256(bytes);
        if expected.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(RegistryError::Digest {
                image: self.name(),
                what,
                expected: expected.to_string(),
                actual,
            });
        }
        Ok(())
    }

    fn malformed(&self, message: String) -> RegistryError {
        RegistryError::Malformed {
            image: self.name(),
            message,
        }
    }
}

/// The manifest of `image` from the first of its mirrors (then the
/// registry itself) that answers; the others' errors are logged.
pub async fn first_answering(
    image: &str,
    opts: &RegistryOptions,
    platform: &str,
) -> Result<(RemoteImage, FetchedManifest), RegistryError> {
    let mut candidates = RemoteImage::with_mirrors(image, opts)?;
    let last = candidates.pop();
    for c in candidates {
        match c.manifest(platform).await {
            Ok(m) => return Ok((c, m)),
            Err(e) => {
                tracing::warn!(mirror = c.name(), error = %e, "mirror failed; trying the next")
            }
        }
    }
    let origin =
        last.ok_or_else(|| RegistryError::Reference(image.to_string(), "no registry".into()))?;
    let m = origin.manifest(platform).await?;
    Ok((origin, m))
}

/// A layer index blob (the layer of a converted image) from `image`'s
/// mirrors or registry, verified against `digest`.
pub async fn fetch_index_blob(
    image: &str,
    opts: &RegistryOptions,
    digest: &str,
) -> Result<Vec<u8>, RegistryError> {
    const MAX_INDEX_BYTES: u64 = 256 << 20;
    let mut last_err = None;
    for c in RemoteImage::with_mirrors(image, opts)? {
        match c.blob("layer index", digest, 0, MAX_INDEX_BYTES).await {
            Ok(b) => return Ok(b),
            Err(e) => {
                tracing::debug!(registry = c.name(), error = %e, "fetching a layer index");
                last_err = Some(e);
            }
        }
    }
    Err(last_err
        .unwrap_or_else(|| RegistryError::Reference(image.to_string(), "no registry".into())))
}

/// Whether a media type names an index (OCI) or manifest list (Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Whether an index entry's `platform` is `os/arch[/variant]`.
pub fn platform_matches(p: &serde_json::Value, platform: &str) -> bool {
    let mut parts = platform.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    let (Some(os), Some(arch)) = (os, arch) else {
        return false;
    };
    p["os"] == os && p["architecture"] == arch && variant.is_none_or(|v| p["variant"] == v)
}

/// The `mediaType` a manifest or index declares.
fn media_type_of(bytes: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest: {e}"))?;
    match v["mediaType"].as_str() {
        Some(m) => Ok(m.to_string()),
        // OCI allows leaving it out: an index has `manifests`.
        None if v.get("manifests").is_some() => Ok(OCI_INDEX.to_string()),
        None => Ok(OCI_MANIFEST.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_registries_are_plain_http() {
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("localhost"));
        assert!(!is_local("registry.example:5000"));
    }
}

//! OCI image layout directories: reading images from one, writing converted
//! images into one.
//!
//! Everything in a layout is untrusted: digests are checked before a blob
//! path is formed (so `index.json` cannot point outside `blobs/`), blob sizes
//! and digests are verified on read, and JSON documents have a size limit.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use sha2::{Digest as _, Sha256};

/// Annotation naming a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The largest JSON document (index, manifest, config) read from a layout.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not an OCI image layout (no `oci-layout` file)")]
    NotALayout(PathBuf),
    #[error("{path}: invalid {what}: {message}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("{dir}: no image tagged `{tag}` (tags: {available})")]
    NoSuchTag {
        dir: PathBuf,
        tag: String,
        available: String,
    },
    #[error("{dir}: holds {count} images; name one as oci:DIR:TAG (tags: {available})")]
    Ambiguous {
        dir: PathBuf,
        count: usize,
        available: String,
    },
    #[error("{dir}: holds no image")]
    Empty { dir: PathBuf },
    #[error("blob {digest}: {message}")]
    Blob { digest: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The hex part of a `sha256:<64 hex>` digest, refusing anything else.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// A layout opened for reading.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    pub fn open(root: &Path) -> Result<Self, LayoutError> {
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            return Err(LayoutError::NotALayout(root.to_path_buf()));
        }
        Ok(OciLayout {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = read_limited(&path, MAX_JSON_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::Invalid {
            path,
            what: "index.json",
            message: e.to_string(),
        })
    }

    /// The manifest descriptor tagged `tag`, or the only one.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        let manifests = index.manifests();
        let tag_of = |d: &Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME).cloned())
        };
        let available = || {
            let tags: Vec<String> = manifests.iter().filter_map(tag_of).collect();
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            }
        };
        let found = match tag {
            Some(t) => manifests
                .iter()
                .find(|d| tag_of(d).as_deref() == Some(t))
                .ok_or_else(|| LayoutError::NoSuchTag {
                    dir: self.root.clone(),
                    tag: t.to_string(),
                    available: available(),
                })?,
            None => match manifests.as_slice() {
                [] => {
                    return Err(LayoutError::Empty {
                        dir: self.root.clone(),
                    })
                }
                [one] => one,
                many => {
                    return Err(LayoutError::Ambiguous {
                        dir: self.root.clone(),
                        count: many.len(),
                        available: available(),
                    })
                }
            },
        };
        Ok(found.clone())
    }

    /// The file of a blob; the digest is checked to be a sha256 first.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        let hex = sha256_hex(digest).ok_or_else(|| LayoutError::Blob {
            digest: digest.chars().take(100).collect(),
            message: "not a sha256 digest".into(),
        })?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// Reads a JSON blob whole, checking its size and digest.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, LayoutError> {
        self.read_blob_up_to(desc, MAX_JSON_BYTES)
    }

    /// Reads a blob of at most `limit` bytes whole, checking size and digest.
    pub fn read_blob_up_to(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let digest = desc.digest().to_string();
        let path = self.blob_path(&digest)?;
        if desc.size() > limit {
            return Err(LayoutError::Blob {
                digest,
                message: format!("{} bytes is more than the {limit}-byte limit", desc.size()),
            });
        }
        let bytes = read_limited(&path, limit)?;
        verify(&digest, desc.size(), &bytes)?;
        Ok(bytes)
    }

    /// Opens a (large) blob for streaming; the caller verifies its digest as
    /// it reads. The size is checked here.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<File, LayoutError> {
        let digest = desc.digest().to_string();
        let path = self.blob_path(&digest)?;
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len != desc.size() {
            return Err(LayoutError::Blob {
                digest,
                message: format!("is {len} bytes, the descriptor says {}", desc.size()),
            });
        }
        Ok(file)
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, LayoutError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > limit {
        return Err(LayoutError::Invalid {
            path: path.to_path_buf(),
            what: "document",
            message: format!("larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

fn verify(digest: &str, size: u64, bytes: &[u8]) -> Result<(), LayoutError> {
    if bytes.len() as u64 != size {
        return Err(LayoutError::Blob {
            digest: digest.to_string(),
            message: format!("is {} bytes, the descriptor says {size}", bytes.len()),
        });
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if actual != digest {
        return Err(LayoutError::Blob {
            digest: digest.to_string(),
            message: format!("content hashes to {actual}"),
        });
    }
    Ok(())
}

/// Serializes a document with sorted keys, so the same image always yields
/// the same bytes and digest.
pub fn canonical_json<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(doc)?;
    serde_json::to_vec(&value)
}

/// A layout being written. Blobs go in first (each written to a temporary
/// file and renamed, so none is ever partial); `index.json` is replaced last
/// and atomically, which is what publishes an image. If the directory did not
/// exist before, [`LayoutWriter::abort`] removes it.
#[derive(Debug)]
pub struct LayoutWriter {
    root: PathBuf,
    created: bool,
}

impl LayoutWriter {
    pub fn create_or_open(root: &Path) -> Result<Self, LayoutError> {
        let created = !root.exists();
        if !created && !root.join("oci-layout").is_file() {
            let empty = std::fs::read_dir(root)
                .map_err(io_err(root))?
                .next()
                .is_none();
            if !empty {
                return Err(LayoutError::NotALayout(root.to_path_buf()));
            }
        }
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(io_err(root))?;
        let writer = LayoutWriter {
            root: root.to_path_buf(),
            created,
        };
        let marker = root.join("oci-layout");
        if !marker.exists() {
            writer.write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(writer)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
        let dir = path.parent().unwrap_or(&self.root);
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io_err(dir))?;
        tmp.write_all(bytes).map_err(io_err(path))?;
        tmp.as_file().sync_all().map_err(io_err(path))?;
        tmp.persist(path).map_err(|e| LayoutError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Stores a blob; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, LayoutError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let path = self.root.join("blobs/sha256").join(&hex);
        if !path.exists() {
            self.write_atomic(&path, bytes)?;
        }
        Ok(format!("sha256:{hex}"))
    }

    /// Points `tag` (or, without one, an untagged entry) at `manifest` in
    /// `index.json`, replacing an entry with the same tag.
    pub fn publish(&self, mut manifest: Descriptor, tag: Option<&str>) -> Result<(), LayoutError> {
        let path = self.root.join("index.json");
        let mut manifests = if path.exists() {
            OciLayout::open(&self.root)?.index()?.manifests().clone()
        } else {
            Vec::new()
        };
        let mut annotations: BTreeMap<String, String> = BTreeMap::new();
        if let Some(t) = tag {
            annotations.insert(REF_NAME.to_string(), t.to_string());
            manifests.retain(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(String::as_str)
                    != Some(t)
            });
        } else {
            manifests.retain(|d| d.digest() != manifest.digest());
        }
        manifest
            .set_annotations((!annotations.is_empty()).then(|| annotations.into_iter().collect()));
        manifests.push(manifest);
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .map_err(|e| LayoutError::Invalid {
                path: path.clone(),
                what: "index.json",
                message: e.to_string(),
            })?;
        let bytes = canonical_json(&index).map_err(|e| LayoutError::Invalid {
            path: path.clone(),
            what: "index.json",
            message: e.to_string(),
        })?;
        self.write_atomic(&path, &bytes)
    }

    /// Undoes a layout this writer created; an existing one keeps its blobs
    /// (unreferenced, harmless) and its untouched `index.json`.
    pub fn abort(self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_cannot_escape_the_blob_directory() {
        let layout = OciLayout {
            root: PathBuf::from("/layout"),
        };
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            layout.blob_path(&good).unwrap(),
            PathBuf::from(format!("/layout/blobs/sha256/{}", "ab".repeat(32)))
        );
        for bad in [
            "sha256:../../../etc/passwd".to_string(),
            format!("sha256:{}/..", "a".repeat(61)),
            format!("sha512:{}", "a".repeat(128)),
            format!("sha256:{}", "A".repeat(64)),
            "sha256:".to_string(),
        ] {
            assert!(layout.blob_path(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failed_writes_leave_no_new_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        let w = LayoutWriter::create_or_open(&dir).unwrap();
        w.put_blob(b"x").unwrap();
        w.abort();
        assert!(!dir.exists());
        // A non-empty directory that is not a layout is refused, untouched.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("keep"), b"k").unwrap();
        assert!(matches!(
            LayoutWriter::create_or_open(&other),
            Err(LayoutError::NotALayout(_))
        ));
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    }
}

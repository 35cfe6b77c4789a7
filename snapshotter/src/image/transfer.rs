//! Moving images between a registry and a local OCI image layout, for
//! `slayerfs convert docker://…`: a source image is fetched into a
//! temporary layout (every platform of an index, or one; blobs verified on
//! the way), a converted image is pushed from one (blobs the repository has
//! already are skipped).

use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde_json::Value;

use super::layout::{sha256_hex, LayoutWriter, OciLayout};
use super::registry::{is_index, RemoteImage};
use super::ImageError;

/// Layers may be large, but not unbounded.
const MAX_LAYER_BYTES: u64 = 64 << 30;

fn invalid(what: impl Into<String>, message: impl ToString) -> ImageError {
    ImageError::Invalid {
        what: what.into(),
        message: message.to_string(),
    }
}

/// A descriptor's digest and size from a manifest's JSON.
fn digest_and_size(v: &Value, what: &str) -> Result<(String, u64), ImageError> {
    let digest = v["digest"]
        .as_str()
        .filter(|d| sha256_hex(d).is_some())
        .ok_or_else(|| invalid(what, "no sha256 digest"))?;
    let size = v["size"]
        .as_u64()
        .ok_or_else(|| invalid(what, "no valid size"))?;
    Ok((digest.to_string(), size))
}

/// Fetches `remote` into a new layout at `dir`, tagged `tag`: with a
/// `platform`, that platform's manifest; without, the whole index (every
/// platform) or the single manifest the reference names. Configs and
/// layers come along, each verified.
pub async fn fetch_to_layout(
    remote: &RemoteImage,
    platform: Option<&str>,
    dir: &Path,
    tag: &str,
) -> Result<(), ImageError> {
    let writer = LayoutWriter::create_or_open(dir)?;
    let (top, top_digest, top_type) = match platform {
        Some(p) => {
            let m = remote.manifest(p).await?;
            (m.bytes, m.digest, m.media_type)
        }
        None => remote.raw_manifest(None).await?,
    };
    writer.put_blob(&top)?;
    if is_index(&top_type) {
        let index: Value = serde_json::from_slice(&top)
            .map_err(|e| invalid(format!("{}: index", remote.name()), e))?;
        let entries = index["manifests"]
            .as_array()
            .ok_or_else(|| invalid(remote.name(), "an index without manifests"))?;
        for (i, entry) in entries.iter().enumerate() {
            let (digest, _) = digest_and_size(entry, &format!("index entry {}", i + 1))?;
            let (bytes, _, media_type) = remote.raw_manifest(Some(&digest)).await?;
            if is_index(&media_type) {
                return Err(ImageError::Unsupported(format!(
                    "{}: an index inside an index",
                    remote.name()
                )));
            }
            writer.put_blob(&bytes)?;
            fetch_content(remote, &writer, dir, &bytes).await?;
        }
    } else {
        fetch_content(remote, &writer, dir, &top).await?;
    }
    let digest =
        oci_spec::image::Digest::try_from(top_digest).map_err(|e| invalid("manifest digest", e))?;
    let desc = Descriptor::new(MediaType::from(top_type.as_str()), top.len() as u64, digest);
    writer.publish(desc, Some(tag))?;
    Ok(())
}

/// The config and layers of one manifest, into the layout.
async fn fetch_content(
    remote: &RemoteImage,
    writer: &LayoutWriter,
    dir: &Path,
    manifest_bytes: &[u8],
) -> Result<(), ImageError> {
    let manifest: Value = serde_json::from_slice(manifest_bytes)
        .map_err(|e| invalid(format!("{}: manifest", remote.name()), e))?;
    let (config_digest, config_size) = digest_and_size(&manifest["config"], "the config")?;
    let config = remote
        .json_blob("config", &config_digest, config_size)
        .await?;
    writer.put_blob(&config)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| invalid(remote.name(), "a manifest without layers"))?;
    for (i, layer) in layers.iter().enumerate() {
        let (digest, _) = digest_and_size(layer, &format!("layer {}", i + 1))?;
        let hex = sha256_hex(&digest).unwrap_or_default();
        let path = dir.join("blobs/sha256").join(hex);
        if path.exists() {
            continue;
        }
        tracing::info!(layer = i + 1, digest, "downloading");
        remote
            .blob_to_file("layer", &digest, MAX_LAYER_BYTES, &path)
            .await?;
    }
    Ok(())
}

/// Pushes the image tagged `tag` in the layout at `dir` to `remote` (an
/// index with each of its manifests); returns how many blobs were uploaded.
pub async fn push_from_layout(
    dir: &Path,
    tag: &str,
    remote: &RemoteImage,
) -> Result<usize, ImageError> {
    let layout = OciLayout::open(dir)?;
    let desc = layout.resolve(Some(tag))?;
    let bytes = layout.read_blob(&desc)?;
    remote.authenticate_push().await?;
    let mut uploaded = 0;
    if desc.media_type() == &MediaType::ImageIndex {
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("index {}", desc.digest()), e))?;
        for m in index.manifests() {
            let manifest_bytes = layout.read_blob(m)?;
            uploaded += push_content(&layout, remote, &manifest_bytes).await?;
            remote
                .push_manifest_by_digest(
                    manifest_bytes,
                    m.media_type().as_ref(),
                    m.digest().as_ref(),
                )
                .await?;
        }
    } else {
        uploaded += push_content(&layout, remote, &bytes).await?;
    }
    remote
        .push_manifest(bytes, desc.media_type().as_ref())
        .await?;
    Ok(uploaded)
}

/// The config and layers of one manifest, to the registry.
async fn push_content(
    layout: &OciLayout,
    remote: &RemoteImage,
    manifest_bytes: &[u8],
) -> Result<usize, ImageError> {
    let manifest: ImageManifest =
        serde_json::from_slice(manifest_bytes).map_err(|e| invalid("a converted manifest", e))?;
    let mut uploaded = 0;
    for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let data = layout.read_blob(blob)?;
        if remote.push_blob(blob.digest().as_ref(), data).await? {
            uploaded += 1;
        }
    }
    Ok(uploaded)
}

//! Moving images between a registry and a local OCI image layout, for
//! `slayerfs convert docker://…`: a source image is fetched into a
//! temporary layout (one platform; blobs verified on the way), a converted
//! image is pushed from one (blobs the repository has already are skipped).

use std::path::Path;

use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use serde_json::Value;

use crate::convert::ConvertError;
use crate::oci_layout::{sha256_hex, LayoutWriter, OciLayout};
use crate::registry::RemoteImage;

/// Layers may be large, but not unbounded.
const MAX_LAYER_BYTES: u64 = 64 << 30;

fn invalid(what: impl Into<String>, message: impl ToString) -> ConvertError {
    ConvertError::Invalid {
        what: what.into(),
        message: message.to_string(),
    }
}

/// A descriptor's digest and size from a manifest's JSON.
fn digest_and_size(v: &Value, what: &str) -> Result<(String, u64), ConvertError> {
    let digest = v["digest"]
        .as_str()
        .filter(|d| sha256_hex(d).is_some())
        .ok_or_else(|| invalid(what, "no sha256 digest"))?;
    let size = v["size"]
        .as_u64()
        .ok_or_else(|| invalid(what, "no valid size"))?;
    Ok((digest.to_string(), size))
}

/// Fetches `remote` (the manifest for `platform`, its config and layers)
/// into a new layout at `dir`, tagged `tag`.
pub async fn fetch_to_layout(
    remote: &RemoteImage,
    platform: &str,
    dir: &Path,
    tag: &str,
) -> Result<(), ConvertError> {
    let fetched = remote.manifest(platform).await?;
    let manifest: Value = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| invalid(format!("{}: manifest", remote.name()), e))?;
    let writer = LayoutWriter::create_or_open(dir)?;
    writer.put_blob(&fetched.bytes)?;
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
    let media_type = MediaType::from(fetched.media_type.as_str());
    let digest = oci_spec::image::Digest::try_from(fetched.digest.clone())
        .map_err(|e| invalid("manifest digest", e))?;
    let desc = Descriptor::new(media_type, fetched.bytes.len() as u64, digest);
    writer.publish(desc, Some(tag))?;
    Ok(())
}

/// Pushes the image tagged `tag` in the layout at `dir` to `remote`;
/// returns how many blobs were uploaded.
pub async fn push_from_layout(
    dir: &Path,
    tag: &str,
    remote: &RemoteImage,
) -> Result<usize, ConvertError> {
    let layout = OciLayout::open(dir)?;
    let desc = layout.resolve(Some(tag))?;
    let bytes = layout.read_blob(&desc)?;
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("manifest {}", desc.digest()), e))?;
    remote.authenticate_push().await?;
    let mut uploaded = 0;
    for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let data = layout.read_blob(blob)?;
        if remote.push_blob(blob.digest().as_ref(), data).await? {
            uploaded += 1;
        }
    }
    remote
        .push_manifest(bytes, desc.media_type().as_ref())
        .await?;
    Ok(uploaded)
}

//! `slayerfs convert`: an OCI image in, blocks and layer indexes in the block
//! store, and a converted image (layers = index blobs) out.
//!
//! Order matters for "nothing half-published": every layer is converted and
//! verified (blocks and index in the store) before the destination is
//! touched; in the destination, blobs are written before `index.json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType,
};
use slayerfs_chunkstore::{BlockStore, WriterOptions};
use slayerfs_layerfs::build::{convert_layer_with, ConvertedLayer, Expected, PrefetchList};
use slayerfs_proto::index::MEDIA_TYPE;
use tokio::task::JoinSet;

use super::progress::{human_bytes, Progress, ProgressMode, ProgressReader};
use crate::image::converted::{
    ANNOTATION_INDEX, ANNOTATION_SOURCE_DIGEST, ANNOTATION_SOURCE_MANIFEST,
};
use crate::image::layout::{canonical_json, sha256_hex, LayoutError, LayoutWriter, OciLayout};
use crate::image::reference::ImageRef;
use crate::image::registry::{RegistryError, RegistryOptions, RemoteImage};
use crate::image::transfer::{fetch_to_layout, push_from_layout};
use crate::image::ImageError;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// A conversion that failed: the image's fault, or one layer's.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        source: Box<slayerfs_layerfs::build::BuildError>,
    },
}

impl From<LayoutError> for ConvertError {
    fn from(e: LayoutError) -> Self {
        ConvertError::Image(e.into())
    }
}

impl From<RegistryError> for ConvertError {
    fn from(e: RegistryError) -> Self {
        ConvertError::Image(e.into())
    }
}

/// What a conversion did (as `convert --json` shows it: bytes, seconds).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConvertSummary {
    pub layers: usize,
    pub entries: u64,
    /// Bytes of the source's layer blobs, as stored (compressed).
    pub bytes_in: u64,
    /// The same, uncompressed.
    pub tar_bytes: u64,
    pub blocks_written: u64,
    pub blocks_present: u64,
    /// Bytes of the blocks written, as stored.
    pub stored_bytes: u64,
    pub index_bytes: u64,
    #[serde(rename = "seconds", serialize_with = "as_seconds")]
    pub elapsed: Duration,
    #[serde(rename = "manifest")]
    pub manifest_digest: String,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl ConvertSummary {
    /// Adds another manifest's figures (of one conversion of an index).
    fn add(&mut self, o: &ConvertSummary) {
        self.layers += o.layers;
        self.entries += o.entries;
        self.bytes_in += o.bytes_in;
        self.tar_bytes += o.tar_bytes;
        self.blocks_written += o.blocks_written;
        self.blocks_present += o.blocks_present;
        self.stored_bytes += o.stored_bytes;
        self.index_bytes += o.index_bytes;
    }

    /// Throughput over the uncompressed layer bytes.
    pub fn mb_per_s(&self) -> f64 {
        self.tar_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn layer_media_ok(media: &str) -> bool {
    media.starts_with("application/vnd.oci.image.layer.")
        && !media.contains("+encrypted")
        && (media.ends_with(".tar") || media.ends_with(".tar+gzip") || media.ends_with(".tar+zstd"))
        || media == DOCKER_LAYER_GZIP
        || media == DOCKER_FOREIGN_LAYER
}

fn invalid(what: impl Into<String>, message: impl ToString) -> ImageError {
    ImageError::Invalid {
        what: what.into(),
        message: message.to_string(),
    }
}

/// Where registry images are read from and written to.
#[derive(Debug, Clone, Default)]
pub struct RegistrySide {
    pub options: RegistryOptions,
    /// `os/arch[/variant]` to convert from a multi-platform source; every
    /// platform when unset.
    pub platform: Option<String>,
}

/// How each layer is converted: blocks, and the files to pack first.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    pub writer: WriterOptions,
    pub prefetch: Arc<PrefetchList>,
}

/// Converts the image `src` into `store`, then writes the converted image to
/// `dst`. A registry source is fetched into a temporary layout first, a
/// registry destination pushed from one.
pub async fn convert_image(
    src: &ImageRef,
    dst: &ImageRef,
    store: Arc<dyn BlockStore>,
    how: &LayerOptions,
    progress: ProgressMode,
    registry: &RegistrySide,
) -> Result<ConvertSummary, ConvertError> {
    let started = Instant::now();
    let scratch = |role: &str| {
        tempfile::Builder::new()
            .prefix(&format!(".slayerfs-{role}-"))
            .tempdir()
            .map_err(|e| ImageError::Io(format!("a temporary directory for the {role}: {e}")))
    };
    let (_src_tmp, src_dir, src_tag) = match src {
        ImageRef::OciLayout { dir, tag } => (None, dir.clone(), tag.clone()),
        ImageRef::Registry(r) => {
            let tmp = scratch("source")?;
            let remote = RemoteImage::new(r, &registry.options)?;
            let dir = tmp.path().join("image");
            fetch_to_layout(&remote, registry.platform.as_deref(), &dir, "source").await?;
            (Some(tmp), dir, Some("source".to_string()))
        }
    };
    let (dst_tmp, dst_dir, dst_tag) = match dst {
        ImageRef::OciLayout { dir, tag } => (None, dir.clone(), tag.clone()),
        ImageRef::Registry(r) => {
            // Checked before converting: a bad reference fails fast.
            let remote = RemoteImage::new(r, &registry.options)?;
            let tmp = scratch("destination")?;
            let dir = tmp.path().join("image");
            (Some((tmp, remote)), dir, Some("converted".to_string()))
        }
    };
    let mut summary = convert_layout(
        src,
        &src_dir,
        src_tag,
        &dst_dir,
        dst_tag.clone(),
        store,
        how,
        progress,
        registry.platform.as_deref(),
    )
    .await?;
    if let (Some((_, remote)), Some(tag)) = (&dst_tmp, &dst_tag) {
        push_from_layout(&dst_dir, tag, remote).await?;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn convert_layout(
    src: &ImageRef,
    src_dir: &std::path::Path,
    src_tag: Option<String>,
    dst_dir: &std::path::Path,
    dst_tag: Option<String>,
    store: Arc<dyn BlockStore>,
    how: &LayerOptions,
    progress: ProgressMode,
    platform: Option<&str>,
) -> Result<ConvertSummary, ConvertError> {
    let layout = OciLayout::open(src_dir)?;
    let top = layout.resolve(src_tag.as_deref())?;
    let out = LayoutWriter::create_or_open(dst_dir)?;
    let converted = convert_top(src, &layout, &top, &out, store, how, progress, platform).await;
    let published = converted.and_then(|(desc, summary)| {
        out.publish(desc, dst_tag.as_deref())?;
        Ok(summary)
    });
    if published.is_err() {
        // Nothing half-written stays: a fresh layout goes, an existing one
        // keeps its index.json as it was.
        out.abort();
    }
    published
}

/// Converts the image `top` names: a manifest, or every manifest of an
/// index (only `platform`'s, if given). Returns the descriptor to publish.
#[allow(clippy::too_many_arguments)]
async fn convert_top(
    src: &ImageRef,
    layout: &OciLayout,
    top: &Descriptor,
    out: &LayoutWriter,
    store: Arc<dyn BlockStore>,
    how: &LayerOptions,
    progress: ProgressMode,
    platform: Option<&str>,
) -> Result<(Descriptor, ConvertSummary), ConvertError> {
    let media = top.media_type().to_string();
    if top.media_type() != &MediaType::ImageIndex && media != DOCKER_LIST {
        return convert_manifest(src, layout, top, out, store, how, progress).await;
    }
    let index: ImageIndex = serde_json::from_slice(&layout.read_blob(top)?)
        .map_err(|e| invalid(format!("index {}", top.digest()), e))?;
    let entries: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|m| platform.is_none_or(|p| platform_of(m).as_deref() == Some(p)))
        .collect();
    if let Some(p) = platform {
        let one = entries.first().ok_or_else(|| {
            ImageError::Unsupported(format!("{src}: no manifest for platform {p}"))
        })?;
        return convert_manifest(src, layout, one, out, store, how, progress).await;
    }
    let mut total = ConvertSummary::default();
    let mut descs = Vec::with_capacity(entries.len());
    for m in entries {
        let (mut desc, s) =
            convert_manifest(src, layout, m, out, store.clone(), how, progress).await?;
        desc.set_platform(m.platform().clone());
        total.add(&s);
        descs.push(desc);
    }
    let annotations: HashMap<String, String> = [(
        ANNOTATION_SOURCE_MANIFEST.to_string(),
        top.digest().to_string(),
    )]
    .into();
    let converted = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(descs)
        .annotations(annotations)
        .build()
        .map_err(|e| invalid("converted index", e))?;
    let bytes = canonical_json(&converted).map_err(|e| invalid("converted index", e))?;
    let digest = out.put_blob(&bytes)?;
    total.manifest_digest = digest.clone();
    let desc = Descriptor::new(
        MediaType::ImageIndex,
        bytes.len() as u64,
        oci_spec::image::Digest::try_from(digest).map_err(|e| invalid("index digest", e))?,
    );
    Ok((desc, total))
}

/// `os/arch[/variant]` of an index entry.
fn platform_of(d: &Descriptor) -> Option<String> {
    let p = d.platform().as_ref()?;
    let mut s = format!("{}/{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push('/');
        s.push_str(v);
    }
    Some(s)
}

/// Converts one image manifest's layers into `store` and writes the
/// converted manifest (with the config and index blobs) into `out`.
async fn convert_manifest(
    src: &ImageRef,
    layout: &OciLayout,
    manifest_desc: &Descriptor,
    out: &LayoutWriter,
    store: Arc<dyn BlockStore>,
    how: &LayerOptions,
    progress: ProgressMode,
) -> Result<(Descriptor, ConvertSummary), ConvertError> {
    let media = manifest_desc.media_type().to_string();
    if manifest_desc.media_type() != &MediaType::ImageManifest && media != DOCKER_MANIFEST {
        return Err(ConvertError::from(ImageError::Unsupported(format!(
            "{src}: manifest media type `{media}` is not an image manifest"
        ))));
    }
    let manifest_bytes = layout.read_blob(manifest_desc)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(format!("manifest {}", manifest_desc.digest()), e))?;
    let config_bytes = layout.read_blob(manifest.config())?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| invalid(format!("config {}", manifest.config().digest()), e))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(
            format!("{src}"),
            format!(
                "the config lists {} diff ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        )
        .into());
    }

    // Check every layer before converting any.
    let total = manifest.layers().len();
    let mut jobs = Vec::with_capacity(total);
    for (i, (desc, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let digest = desc.digest().to_string();
        let layer_media = desc.media_type().to_string();
        if layer_media == MEDIA_TYPE {
            return Err(ConvertError::from(ImageError::Unsupported(format!(
                "{src}: layer {digest} is converted already"
            ))));
        }
        if !layer_media_ok(&layer_media) {
            return Err(ConvertError::from(ImageError::Unsupported(format!(
                "{src}: layer {digest} has media type `{layer_media}`, not an OCI/Docker tar layer"
            ))));
        }
        let expected = Expected {
            blob: Some(parse_sha256(&digest)?),
            diff: Some(parse_sha256(diff_id)?),
        };
        let short = digest.get(7..19).unwrap_or(&digest).to_string();
        jobs.push(LayerJob {
            position: i,
            desc: desc.clone(),
            expected,
            label: format!("layer {}/{total} {short}", i + 1),
        });
    }

    // Two layers at a time: one layer's start and end (index, last blocks)
    // overlap with another's bulk, keeping both cores busy.
    let progress = Progress::new(progress);
    let mut pending = jobs.into_iter();
    let mut running = JoinSet::new();
    let mut done: Vec<Option<ConvertedLayer>> = (0..total).map(|_| None).collect();
    loop {
        while running.len() < LAYERS_IN_PARALLEL {
            let Some(job) = pending.next() else { break };
            running.spawn(convert_one(
                job,
                layout.clone(),
                store.clone(),
                how.clone(),
                progress.clone(),
            ));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (position, layer) = joined
            .map_err(|e| invalid("layer conversion task", e))?
            .inspect_err(|_| running.abort_all())?;
        done[position] = Some(layer);
    }
    let mut summary = ConvertSummary {
        layers: total,
        ..Default::default()
    };
    let mut converted: Vec<(Descriptor, ConvertedLayer)> = Vec::with_capacity(total);
    for (desc, layer) in manifest.layers().iter().zip(done) {
        let layer = layer.ok_or_else(|| invalid(desc.digest().to_string(), "was not converted"))?;
        summary.entries += layer.stats.entries;
        summary.bytes_in += layer.stats.blob_bytes;
        summary.tar_bytes += layer.stats.tar_bytes;
        summary.blocks_written += layer.blocks.written;
        summary.blocks_present += layer.blocks.present;
        summary.stored_bytes += layer.blocks.stored_bytes;
        summary.index_bytes += layer.blob.len() as u64;
        converted.push((desc.clone(), layer));
    }

    let desc = write_converted(out, &manifest, manifest_desc, &config_bytes, &converted)?;
    summary.manifest_digest = desc.digest().to_string();
    Ok((desc, summary))
}

/// Layers converted at the same time.
const LAYERS_IN_PARALLEL: usize = 2;

struct LayerJob {
    position: usize,
    desc: Descriptor,
    expected: Expected,
    label: String,
}

async fn convert_one(
    job: LayerJob,
    layout: OciLayout,
    store: Arc<dyn BlockStore>,
    how: LayerOptions,
    progress: Progress,
) -> Result<(usize, ConvertedLayer), ConvertError> {
    let digest = job.desc.digest().to_string();
    let file = layout.open_blob(&job.desc)?;
    let task = progress.task(job.label, job.desc.size());
    let reader = ProgressReader::new(file, task.clone());
    let converted = convert_layer_with(
        reader,
        store,
        how.writer,
        how.prefetch,
        &digest,
        job.expected,
    );
    match converted.await {
        Ok(layer) => {
            task.finish(format!(
                "{} entries, {} -> {} blocks ({} new), index {}",
                layer.stats.entries,
                human_bytes(layer.stats.tar_bytes),
                layer.blocks.ids.len(),
                layer.blocks.written,
                human_bytes(layer.blob.len() as u64)
            ));
            Ok((job.position, layer))
        }
        Err(source) => {
            task.abandon();
            Err(ConvertError::Layer {
                digest,
                source: Box::new(source),
            })
        }
    }
}

fn parse_sha256(digest: &str) -> Result<[u8; 32], ConvertError> {
    let hex = sha256_hex(digest)
        .ok_or_else(|| invalid(format!("digest `{digest}`"), "not a sha256 digest"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_err(|e| invalid(format!("digest `{digest}`"), e))?;
    Ok(out)
}

/// Writes a converted manifest with its config and index blobs; returns
/// the manifest's descriptor (publishing it is the caller's).
fn write_converted(
    out: &LayoutWriter,
    source: &ImageManifest,
    source_desc: &Descriptor,
    config_bytes: &[u8],
    layers: &[(Descriptor, ConvertedLayer)],
) -> Result<Descriptor, ConvertError> {
    let mut descs = Vec::with_capacity(layers.len());
    for (orig, layer) in layers {
        let mut d = Descriptor::new(
            MediaType::Other(MEDIA_TYPE.to_string()),
            layer.blob.len() as u64,
            oci_spec::image::Digest::try_from(layer.digest.to_string())
                .map_err(|e| invalid("index digest", e))?,
        );
        let annotations: HashMap<String, String> = [
            (ANNOTATION_INDEX.to_string(), layer.digest.to_string()),
            (
                ANNOTATION_SOURCE_DIGEST.to_string(),
                orig.digest().to_string(),
            ),
        ]
        .into();
        d.set_annotations(Some(annotations));
        descs.push(d);
    }
    let mut annotations: HashMap<String, String> = source.annotations().clone().unwrap_or_default();
    annotations.insert(
        ANNOTATION_SOURCE_MANIFEST.to_string(),
        source_desc.digest().to_string(),
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(source.config().clone())
        .layers(descs)
        .annotations(annotations)
        .build()
        .map_err(|e| invalid("converted manifest", e))?;
    let manifest_bytes = canonical_json(&manifest).map_err(|e| invalid("converted manifest", e))?;

    out.put_blob(config_bytes)?;
    for (_, layer) in layers {
        out.put_blob(&layer.blob)?;
    }
    let digest = out.put_blob(&manifest_bytes)?;
    Ok(Descriptor::new(
        MediaType::ImageManifest,
        manifest_bytes.len() as u64,
        oci_spec::image::Digest::try_from(digest).map_err(|e| invalid("manifest digest", e))?,
    ))
}

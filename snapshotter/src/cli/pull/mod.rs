//! `slayerfs pull REF`: what `nerdctl pull` and the CRI plugin do, for
//! users with neither. Through containerd's API: the manifest and config go
//! into containerd's content store, the image record is created, and every
//! layer is prepared through containerd's snapshot service with the labels
//! containerd's unpacker would pass, so our snapshotter commits converted
//! layers from their indexes (nothing of the layer's data moves). A layer
//! the snapshotter cannot pull lazily (an image that was never converted)
//! is downloaded into the content store and unpacked by containerd's own
//! differ, as a plain pull would.

mod containerd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use containerd_client::types::Descriptor;
use serde_json::Value;

use crate::image::chain_ids;
use crate::image::registry::{first_answering, RegistryOptions, RemoteImage};
use containerd::{Containerd, Prepared};

/// Where and how to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// containerd's socket.
    pub address: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// `os/arch` to pick from a multi-platform image.
    pub platform: String,
    pub registry: RegistryOptions,
}

/// How one layer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// The snapshot was there already.
    Present,
    /// Committed by the snapshotter from its index.
    Lazy,
    /// Downloaded and unpacked.
    Unpacked,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub image: String,
    pub manifest_digest: String,
    /// Chain id of the top layer (the snapshot containers start from).
    pub chain_id: String,
    pub layers: Vec<LayerOutcome>,
    /// Bytes received from the registry (manifests, config, downloaded
    /// layers).
    pub registry_bytes: u64,
    pub seconds: f64,
}

/// Layers to unpack may be large, but not unbounded.
const MAX_LAYER_BYTES: u64 = 64 << 30;

/// containerd's limit on one label, key and value together.
const MAX_LABEL_BYTES: usize = 4096;

fn descriptor(v: &Value, what: &str) -> anyhow::Result<Descriptor> {
    let digest = v["digest"]
        .as_str()
        .with_context(|| format!("{what} without a digest"))?;
    if !digest.starts_with("sha256:") || digest.len() != 71 {
        bail!("{what} digest `{digest}` is not a sha256 digest");
    }
    let size = v["size"]
        .as_i64()
        .filter(|s| *s >= 0)
        .with_context(|| format!("{what} {digest} without a valid size"))?;
    let annotations = v["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: digest.to_string(),
        size,
        annotations,
    })
}

/// The labels containerd's unpacker (with CRI's image handler) passes to
/// Prepare for a layer: its `containerd.io/snapshot/*` annotations, the
/// target chain id and the CRI ones.
fn prepare_labels(
    layer: &Descriptor,
    chain_id: &str,
    image: &str,
    manifest_digest: &str,
    all_layers: &[Descriptor],
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = layer
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("containerd.io/snapshot.ref".into(), chain_id.into());
    labels.insert("containerd.io/snapshot/cri.image-ref".into(), image.into());
    labels.insert(
        "containerd.io/snapshot/cri.manifest-digest".into(),
        manifest_digest.into(),
    );
    labels.insert(
        "containerd.io/snapshot/cri.layer-digest".into(),
        layer.digest.clone(),
    );
    // As many layer digests as fit in one label, like CRI does.
    let key = "containerd.io/snapshot/cri.image-layers";
    let mut value = String::new();
    for l in all_layers {
        let extra = l.digest.len() + usize::from(!value.is_empty());
        if key.len() + value.len() + extra > MAX_LABEL_BYTES {
            break;
        }
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(&l.digest);
    }
    labels.insert(key.into(), value);
    labels
}

/// Pulls `image`; `progress` gets one line per step.
pub async fn pull(
    image: &str,
    opts: &PullOptions,
    mut progress: impl FnMut(String),
) -> anyhow::Result<PullReport> {
    let started = Instant::now();
    // The image keeps its own name, wherever (a mirror) it came from.
    let name = RemoteImage::new(image, &opts.registry)?.name();
    let (remote, fetched) = first_answering(image, &opts.registry, &opts.platform).await?;
    let mut registry_bytes = fetched.bytes.len() as u64;
    let manifest: Value = serde_json::from_slice(&fetched.bytes)
        .with_context(|| format!("{name}: manifest {}", fetched.digest))?;
    let config_desc = descriptor(&manifest["config"], "the config")?;
    let layers: Vec<Descriptor> = manifest["layers"]
        .as_array()
        .with_context(|| format!("{name}: a manifest without layers"))?
        .iter()
        .enumerate()
        .map(|(i, l)| descriptor(l, &format!("layer {}", i + 1)))
        .collect::<anyhow::Result<_>>()?;
    let config_bytes = remote
        .json_blob("config", &config_desc.digest, config_desc.size as u64)
        .await?;
    registry_bytes += config_bytes.len() as u64;
    let config: Value = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("{name}: config {}", config_desc.digest))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .with_context(|| format!("{name}: a config without rootfs.diff_ids"))?
        .iter()
        .map(|d| d.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .with_context(|| format!("{name}: a diff id that is not a string"))?;
    if let Some(bad) = diff_ids
        .iter()
        .find(|d| crate::image::layout::sha256_hex(d).is_none())
    {
        bail!("{name}: diff id `{bad}` is not a sha256 digest");
    }
    if diff_ids.len() != layers.len() {
        bail!(
            "{name}: the config lists {} diff ids for {} layers",
            diff_ids.len(),
            layers.len()
        );
    }
    let chains = chain_ids(&diff_ids);
    let top = chains.last().cloned().unwrap_or_default();
    progress(format!(
        "{name}: manifest {} ({} layers)",
        fetched.digest,
        layers.len()
    ));

    let mut ctrd = Containerd::connect(&opts.address, &opts.namespace).await?;
    let lease = format!("slayerfs-pull-{}-{}", std::process::id(), unix_nanos());
    ctrd.lease(&lease).await?;
    let result = pull_into(
        &ctrd,
        &name,
        &remote,
        opts,
        &fetched,
        &config_desc,
        config_bytes,
        &layers,
        &diff_ids,
        &chains,
        &mut registry_bytes,
        &mut progress,
    )
    .await;
    // The lease goes either way: on success the image record holds
    // everything, on failure nothing should stay.
    let released = ctrd.release().await;
    let outcomes = result?;
    released?;
    Ok(PullReport {
        image: name,
        manifest_digest: fetched.digest,
        chain_id: top,
        layers: outcomes,
        registry_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Nanoseconds since the epoch: with the pid, unique names for leases and
/// unpack keys.
fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[allow(clippy::too_many_arguments)]
async fn pull_into(
    ctrd: &Containerd,
    name: &str,
    remote: &RemoteImage,
    opts: &PullOptions,
    fetched: &crate::image::registry::FetchedManifest,
    config_desc: &Descriptor,
    config_bytes: Vec<u8>,
    layers: &[Descriptor],
    diff_ids: &[String],
    chains: &[String],
    registry_bytes: &mut u64,
    progress: &mut impl FnMut(String),
) -> anyhow::Result<Vec<LayerOutcome>> {
    let sn = &opts.snapshotter;
    let top = chains.last().cloned().unwrap_or_default();

    // Content first, with the references containerd's garbage collector
    // follows: index → manifest → config and layers; config → snapshot.
    let config_labels: HashMap<String, String> =
        [(format!("containerd.io/gc.ref.snapshot.{sn}"), top.clone())].into();
    ctrd.write_content(&config_desc.digest, config_bytes, config_labels)
        .await?;
    let mut manifest_labels: HashMap<String, String> = HashMap::new();
    manifest_labels.insert(
        "containerd.io/gc.ref.content.config".into(),
        config_desc.digest.clone(),
    );
    for (i, l) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    ctrd.write_content(&fetched.digest, fetched.bytes.clone(), manifest_labels)
        .await?;
    let target = match &fetched.index {
        Some((bytes, digest, media_type)) => {
            *registry_bytes += bytes.len() as u64;
            let labels: HashMap<String, String> = [(
                "containerd.io/gc.ref.content.m.0".to_string(),
                fetched.digest.clone(),
            )]
            .into();
            ctrd.write_content(digest, bytes.clone(), labels).await?;
            Descriptor {
                media_type: media_type.clone(),
                digest: digest.clone(),
                size: bytes.len() as i64,
                annotations: HashMap::new(),
            }
        }
        None => Descriptor {
            media_type: fetched.media_type.clone(),
            digest: fetched.digest.clone(),
            size: fetched.bytes.len() as i64,
            annotations: HashMap::new(),
        },
    };

    let mut outcomes = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let chain = &chains[i];
        let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
        let step = format!("layer {}/{} {}", i + 1, layers.len(), layer.digest);
        if ctrd.snapshot_exists(sn, chain).await? {
            progress(format!("{step}: already present"));
            outcomes.push(LayerOutcome::Present);
            continue;
        }
        let labels = prepare_labels(layer, chain, name, &fetched.digest, layers);
        let key = format!("extract-{}-{} {chain}", std::process::id(), unix_nanos());
        match ctrd.prepare(sn, &key, parent, labels.clone()).await? {
            Prepared::Exists => {
                if !ctrd.snapshot_exists(sn, chain).await? {
                    bail!("{step}: the snapshotter reported it present, but {chain} is not");
                }
                progress(format!("{step}: pulled lazily"));
                outcomes.push(LayerOutcome::Lazy);
            }
            Prepared::Mounts(mounts) => {
                let unpacked = unpack(ctrd, remote, layer, &diff_ids[i], mounts).await;
                match unpacked {
                    Ok(bytes) => {
                        *registry_bytes += bytes;
                        let commit_labels: HashMap<String, String> =
                            [("containerd.io/snapshot.ref".to_string(), chain.clone())].into();
                        if let Err(e) = ctrd.commit(sn, chain, &key, commit_labels).await {
                            let _ = ctrd.remove(sn, &key).await;
                            return Err(e.context(step));
                        }
                        progress(format!(
                            "{step}: downloaded and unpacked ({})",
                            super::progress::human_bytes(bytes)
                        ));
                        outcomes.push(LayerOutcome::Unpacked);
                    }
                    Err(e) => {
                        let _ = ctrd.remove(sn, &key).await;
                        return Err(e.context(step));
                    }
                }
            }
        }
    }
    ctrd.set_image(name, target).await?;
    Ok(outcomes)
}

/// Downloads a layer blob into the content store and has containerd unpack
/// it into `mounts`; returns the bytes downloaded.
async fn unpack(
    ctrd: &Containerd,
    remote: &RemoteImage,
    layer: &Descriptor,
    diff_id: &str,
    mounts: Vec<containerd_client::types::Mount>,
) -> anyhow::Result<u64> {
    let blob = remote
        .blob("layer", &layer.digest, layer.size as u64, MAX_LAYER_BYTES)
        .await?;
    let bytes = blob.len() as u64;
    ctrd.write_content(&layer.digest, blob, HashMap::new())
        .await?;
    let applied = ctrd.apply(layer.clone(), mounts).await?;
    if applied != diff_id {
        bail!("unpacked to diff id {applied}, but the config says {diff_id}");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_our_annotations_and_fit_containerds_limit() {
        let layers: Vec<Descriptor> = (0..200)
            .map(|i| Descriptor {
                media_type: String::new(),
                digest: format!("sha256:{i:064x}"),
                size: 1,
                annotations: [
                    (
                        "containerd.io/snapshot/slayerfs.index".to_string(),
                        "sha256:idx".to_string(),
                    ),
                    ("org.example/other".to_string(), "x".to_string()),
                ]
                .into(),
            })
            .collect();
        let l = prepare_labels(&layers[3], "sha256:chain", "reg/img:1", "sha256:m", &layers);
        assert_eq!(l["containerd.io/snapshot/slayerfs.index"], "sha256:idx");
        assert_eq!(l["containerd.io/snapshot.ref"], "sha256:chain");
        assert!(!l.contains_key("org.example/other"));
        let k = "containerd.io/snapshot/cri.image-layers";
        assert!(k.len() + l[k].len() <= MAX_LABEL_BYTES);
        assert!(l[k].starts_with(&layers[0].digest));
    }
}

//! `slayerfs inspect` as a whole: which parts of a converted image it
//! shows (layers; entries with `--tree` or `--layer`; prefetch lists and
//! stored traces with `--prefetch`), as text or, with `--json`, as one
//! JSON document.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use slayerfs_chunkstore::{BlockStore, ChainDigest};
use slayerfs_layerfs::index::ValidIndex;
use slayerfs_proto::index::MEDIA_TYPE;

use super::inspect::{entry_json, print_layers, print_tree, walk};
use super::inspect_prefetch::{lists, print_lists, print_traces, traces, LayerFiles};
use crate::image::converted::{ConvertedImage, ANNOTATION_SOURCE_DIGEST};

pub struct InspectOptions<'a> {
    /// Every entry of every layer (or of `layer`).
    pub tree: bool,
    /// Only this layer's entries (1 = bottom).
    pub layer: Option<usize>,
    /// The store whose traces `--prefetch` shows; None: no prefetch part.
    pub prefetch: Option<Arc<dyn BlockStore>>,
    /// Where `--save-trace` writes the merge of the traces.
    pub save_trace: Option<&'a Path>,
    pub json: bool,
}

/// How a layer's blocks can be read in parts.
fn parts_summary(index: &ValidIndex) -> String {
    let with = index.part_digests.iter().filter(|d| !d.is_empty()).count();
    match index.part_size {
        0 => "read in whole blocks: no part digests".to_string(),
        size => format!("parts of {} KiB, digests for {with} blocks", size >> 10),
    }
}

pub async fn inspect(
    img: &ConvertedImage,
    o: &InspectOptions<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let layers = img.manifest.layers();
    if let Some(n) = o.layer {
        if n == 0 || n > layers.len() {
            anyhow::bail!("--layer {n}: the image has layers 1 to {}", layers.len());
        }
    }
    let shown = |i: usize| (o.tree || o.layer.is_some()) && o.layer.is_none_or(|n| n == i + 1);
    let mut json_layers = Vec::new();
    if !o.json {
        print_layers(img, out)?;
    }
    for (i, d) in layers.iter().enumerate() {
        let converted = d.media_type().to_string() == MEDIA_TYPE;
        // Text shows entries only where asked; JSON describes every
        // converted layer's index.
        let index = if shown(i) || (o.json && converted) {
            Some(img.layer_index(d)?)
        } else {
            None
        };
        if !o.json {
            if let Some(index) = index.as_ref().filter(|_| shown(i)) {
                writeln!(
                    out,
                    "\nlayer {} {} ({} inodes, {} blocks, {}, {} files to fetch first)",
                    i + 1,
                    d.digest(),
                    index.inodes.len(),
                    index.blocks.len(),
                    parts_summary(index),
                    index.prefetch.len()
                )?;
                print_tree(index, out)?;
            }
            continue;
        }
        let mut layer = serde_json::json!({
            "layer": i + 1,
            "digest": d.digest().to_string(),
            "size": d.size(),
            "media_type": d.media_type().to_string(),
            "converted": converted,
        });
        if let Some(source) = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SOURCE_DIGEST))
        {
            layer["source_digest"] = source.clone().into();
        }
        if let Some(index) = &index {
            layer["index"] = serde_json::json!({
                "inodes": index.inodes.len(),
                "blocks": index.blocks.len(),
                "part_size": index.part_size,
                "blocks_with_part_digests":
                    index.part_digests.iter().filter(|d| !d.is_empty()).count(),
                "prefetch_files": index.prefetch.len(),
            });
            if shown(i) {
                let mut entries = Vec::new();
                walk(index, |path, entry| {
                    entries.push(entry_json(path, entry));
                    Ok::<_, std::convert::Infallible>(())
                })
                .unwrap_or_else(|never| match never {});
                layer["entries"] = entries.into();
            }
        }
        json_layers.push(layer);
    }
    let mut prefetch = None;
    if let Some(store) = &o.prefetch {
        let mut files = Vec::new();
        for d in layers {
            files.push(LayerFiles::new(img.layer_index(d)?));
        }
        let chain: ChainDigest = img.chain_id()?.parse().context("the image's chain id")?;
        let lists = lists(&files);
        let traces = traces(store.as_ref(), &chain, &files, o.save_trace).await?;
        if o.json {
            prefetch = Some(serde_json::json!({ "lists": lists, "traces": traces }));
        } else {
            writeln!(out)?;
            print_lists(&lists, out)?;
            print_traces(&traces, out)?;
        }
    }
    if o.json {
        let mut doc = serde_json::json!({
            "manifest": img.manifest_digest,
            "config": img.manifest.config().digest().to_string(),
            "layers": json_layers,
        });
        if let Ok(chain) = img.chain_id() {
            doc["chain_id"] = chain.into();
        }
        if let Some(p) = prefetch {
            doc["prefetch"] = p;
        }
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    }
    Ok(())
}

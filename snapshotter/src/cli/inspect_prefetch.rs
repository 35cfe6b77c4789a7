//! `slayerfs inspect --prefetch`: what a node fetches ahead for an image —
//! each layer's build-time prefetch list, and the traces of recorded
//! starts stored under the image's chain id — in files, bytes and blocks.
//! It reads indexes and traces; it never changes the store.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use slayerfs_chunkstore::{fetch_trace, BlockStore, ChainDigest};
use slayerfs_layerfs::index::ValidIndex;
use slayerfs_layerfs::trace::format::MAX_FILES;
use slayerfs_layerfs::trace::{decode_trace, encode_trace, merge, Trace};
use slayerfs_proto::index::InodeKind;

use super::progress::human_bytes;

/// A layer's index and the path of each of its regular files.
pub struct LayerFiles {
    pub index: ValidIndex,
    /// `a/b/c` (relative, as traces name them) → inode number.
    paths: HashMap<Vec<u8>, u64>,
}

impl LayerFiles {
    pub fn new(index: ValidIndex) -> Self {
        let mut paths = HashMap::new();
        let mut stack = vec![(Vec::new(), 1u64)];
        while let Some((path, ino)) = stack.pop() {
            let inode = &index.inodes[(ino - 1) as usize];
            if inode.kind == InodeKind::Regular as i32 {
                paths.insert(path.clone(), ino);
            }
            for d in inode.children.iter().filter(|d| !d.whiteout) {
                let mut child = path.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(&d.name);
                stack.push((child, d.ino));
            }
        }
        LayerFiles { index, paths }
    }

    /// The blocks behind `ranges` of file `ino` (all of it with `None`).
    fn blocks(&self, ino: u64, ranges: Option<&[Range<u64>]>, into: &mut HashSet<Vec<u8>>) {
        into.extend(self.index.blocks_of(ino, ranges).map(<[u8]>::to_vec));
    }
}

/// A layer's build-time prefetch list.
#[derive(Serialize)]
pub struct ListSummary {
    /// 1 = bottom.
    pub layer: usize,
    /// `/a/b`, in the order they are fetched.
    pub files: Vec<String>,
    pub bytes: u64,
    pub blocks: usize,
}

/// Each layer's build-time prefetch list, paths in order.
pub fn lists(layers: &[LayerFiles]) -> Vec<ListSummary> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut blocks = HashSet::new();
            let mut bytes = 0;
            for &ino in &l.index.prefetch {
                bytes += l.index.inodes[(ino - 1) as usize].size;
                l.blocks(ino, None, &mut blocks);
            }
            let by_ino: HashMap<u64, &[u8]> =
                l.paths.iter().map(|(p, &i)| (i, p.as_slice())).collect();
            let files = l
                .index
                .prefetch
                .iter()
                .map(|ino| {
                    let path = by_ino.get(ino).copied().unwrap_or(b"?");
                    format!("/{}", String::from_utf8_lossy(path))
                })
                .collect();
            ListSummary {
                layer: i + 1,
                files,
                bytes,
                blocks: blocks.len(),
            }
        })
        .collect()
}

pub fn print_lists(lists: &[ListSummary], out: &mut dyn Write) -> std::io::Result<()> {
    for l in lists {
        writeln!(
            out,
            "layer {} prefetch list: {} files, {}, {} blocks",
            l.layer,
            l.files.len(),
            human_bytes(l.bytes),
            l.blocks
        )?;
        for f in &l.files {
            writeln!(out, "  {f}")?;
        }
    }
    Ok(())
}

/// The blocks `trace` names over `layers` (bottom first: a path is the
/// topmost layer's file of that name), and the files no layer has.
fn trace_blocks(layers: &[LayerFiles], trace: &Trace) -> (usize, usize) {
    let mut blocks = HashSet::new();
    let mut missing = 0;
    for f in &trace.files {
        let path = f.path.to_bytes();
        match layers
            .iter()
            .rev()
            .find_map(|l| l.paths.get(&path).map(|&ino| (l, ino)))
        {
            Some((l, ino)) => l.blocks(ino, Some(&f.ranges), &mut blocks),
            None => missing += 1,
        }
    }
    (blocks.len(), missing)
}

/// One stored trace of the image.
#[derive(Serialize)]
pub struct TraceSummary {
    pub digest: String,
    #[serde(flatten)]
    pub outcome: TraceOutcome,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum TraceOutcome {
    Read {
        files: usize,
        bytes: u64,
        blocks: usize,
        files_not_in_image: usize,
    },
    /// A trace that failed to fetch or decode: a node ignores it too.
    Ignored { ignored: String },
}

/// The merge written by `--save-trace`.
#[derive(Serialize)]
pub struct Saved {
    pub path: String,
    pub traces: usize,
    pub files: usize,
}

/// The traces stored for an image.
#[derive(Serialize)]
pub struct Traces {
    pub chain_id: String,
    pub store: String,
    pub traces: Vec<TraceSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<Saved>,
}

/// The traces stored for `chain`, each checked; with `save`, their merge
/// is written there (as `convert --prefetch-list` takes it).
pub async fn traces(
    store: &dyn BlockStore,
    chain: &ChainDigest,
    layers: &[LayerFiles],
    save: Option<&Path>,
) -> anyhow::Result<Traces> {
    let listed = store
        .list_traces(chain)
        .await
        .with_context(|| format!("listing the traces of {chain}"))?;
    let mut good = Vec::new();
    let mut summaries = Vec::new();
    for digest in listed {
        let trace = match fetch_trace(store, chain, &digest).await {
            Ok(blob) => decode_trace(&blob).map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        let outcome = match trace {
            Ok(t) => {
                let (blocks, missing) = trace_blocks(layers, &t);
                let read = TraceOutcome::Read {
                    files: t.files.len(),
                    bytes: t.bytes(),
                    blocks,
                    files_not_in_image: missing,
                };
                good.push(t);
                read
            }
            Err(e) => TraceOutcome::Ignored {
                ignored: format!("{e:#}"),
            },
        };
        summaries.push(TraceSummary {
            digest: digest.to_string(),
            outcome,
        });
    }
    let saved = match save {
        None => None,
        Some(path) => {
            anyhow::ensure!(!good.is_empty(), "no trace to save in {}", path.display());
            let merged = merge(&good, MAX_FILES);
            std::fs::write(path, encode_trace(&merged))
                .with_context(|| format!("writing {}", path.display()))?;
            Some(Saved {
                path: path.display().to_string(),
                traces: good.len(),
                files: merged.files.len(),
            })
        }
    };
    Ok(Traces {
        chain_id: chain.to_string(),
        store: store.location(),
        traces: summaries,
        saved,
    })
}

pub fn print_traces(t: &Traces, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "traces of {} in {}: {}",
        t.chain_id,
        t.store,
        t.traces.len()
    )?;
    for s in &t.traces {
        match &s.outcome {
            TraceOutcome::Read {
                files,
                bytes,
                blocks,
                files_not_in_image,
            } => writeln!(
                out,
                "  {}: {files} files, {} read, {blocks} blocks{}",
                s.digest,
                human_bytes(*bytes),
                match files_not_in_image {
                    0 => String::new(),
                    n => format!(", {n} files not in the image"),
                }
            )?,
            TraceOutcome::Ignored { ignored } => {
                writeln!(out, "  {}: ignored: {ignored}", s.digest)?
            }
        }
    }
    if let Some(s) = &t.saved {
        writeln!(
            out,
            "saved the merge of {} traces ({} files) to {}",
            s.traces, s.files, s.path
        )?;
    }
    Ok(())
}

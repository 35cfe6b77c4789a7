//! `slayerfs inspect --prefetch`: what a node fetches ahead for an image —
//! each layer's build-time prefetch list, and the traces of recorded
//! starts stored under the image's chain id — in files, bytes and blocks.
//! It reads indexes and traces; it never changes the store.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use anyhow::Context;
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

/// Each layer's build-time prefetch list, paths in order.
pub fn print_lists(layers: &[LayerFiles], out: &mut dyn Write) -> std::io::Result<()> {
    for (i, l) in layers.iter().enumerate() {
        let mut blocks = HashSet::new();
        let mut bytes = 0;
        for &ino in &l.index.prefetch {
            bytes += l.index.inodes[(ino - 1) as usize].size;
            l.blocks(ino, None, &mut blocks);
        }
        writeln!(
            out,
            "layer {} prefetch list: {} files, {}, {} blocks",
            i + 1,
            l.index.prefetch.len(),
            human_bytes(bytes),
            blocks.len()
        )?;
        let by_ino: HashMap<u64, &[u8]> = l.paths.iter().map(|(p, &i)| (i, p.as_slice())).collect();
        for &ino in &l.index.prefetch {
            let path = by_ino.get(&ino).copied().unwrap_or(b"?");
            writeln!(out, "  /{}", String::from_utf8_lossy(path))?;
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

/// The traces stored for `chain`, each checked; with `save`, their merge
/// is written there (as `convert --prefetch-list` takes it).
pub async fn print_traces(
    store: &dyn BlockStore,
    chain: &ChainDigest,
    layers: &[LayerFiles],
    save: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let listed = store
        .list_traces(chain)
        .await
        .with_context(|| format!("listing the traces of {chain}"))?;
    writeln!(
        out,
        "traces of {chain} in {}: {}",
        store.location(),
        listed.len()
    )?;
    let mut good = Vec::new();
    for digest in listed {
        let trace = match fetch_trace(store, chain, &digest).await {
            Ok(blob) => decode_trace(&blob).map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match trace {
            Ok(t) => {
                let (blocks, missing) = trace_blocks(layers, &t);
                writeln!(
                    out,
                    "  {digest}: {} files, {} read, {blocks} blocks{}",
                    t.files.len(),
                    human_bytes(t.bytes()),
                    match missing {
                        0 => String::new(),
                        n => format!(", {n} files not in the image"),
                    }
                )?;
                good.push(t);
            }
            Err(e) => writeln!(out, "  {digest}: ignored: {e:#}")?,
        }
    }
    if let Some(path) = save {
        anyhow::ensure!(!good.is_empty(), "no trace to save in {}", path.display());
        let merged = merge(&good, MAX_FILES);
        std::fs::write(path, encode_trace(&merged))
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(
            out,
            "saved the merge of {} traces ({} files) to {}",
            good.len(),
            merged.files.len(),
            path.display()
        )?;
    }
    Ok(())
}

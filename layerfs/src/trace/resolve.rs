//! A trace and a merged view: the recorded inodes named by path, and a
//! trace's paths turned back into the blocks their ranges need. Paths that
//! are not there, are not regular files or ranges past a file's end are
//! skipped: a stale trace costs what it fetches, nothing else.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use slayerfs_chunkstore::BlockId;
use slayerfs_proto::index::InodeKind;

use super::format::{Trace, TracedFile};
use crate::build::path::LayerPath;
use crate::geometry::{Ino, BLOCK_SIZE, CHUNK_SIZE};
use crate::slice::{resolve, Backing, Origin};
use crate::store::merged::MergedView;
use crate::store::StoreError;

/// The most directory entries looked at to name a recording's inodes.
const MAX_WALK: usize = 1 << 21;

/// Names the inodes of a recording by a path of each in `view` (the first
/// found, breadth first, for a file with several); inodes not found (none
/// of the lower view) are left out.
pub fn name_reads(
    view: &MergedView,
    reads: Vec<(Ino, Vec<Range<u64>>)>,
) -> Result<Trace, StoreError> {
    let wanted: HashSet<Ino> = reads.iter().map(|(ino, _)| *ino).collect();
    let mut names: HashMap<Ino, LayerPath> = HashMap::new();
    let mut queue = VecDeque::from([(Ino(1), LayerPath::root())]);
    let mut visited = HashSet::from([Ino(1)]);
    let mut walked = 0usize;
    while let Some((dir, path)) = queue.pop_front() {
        if names.len() == wanted.len() || walked >= MAX_WALK {
            break;
        }
        for (name, ino) in view.children(dir)? {
            walked += 1;
            if !visited.insert(ino) {
                continue;
            }
            let child = path.join(&name);
            if wanted.contains(&ino) {
                names.entry(ino).or_insert_with(|| child.clone());
            }
            let (inode, _) = view.attrs(ino)?;
            if inode.kind == InodeKind::Directory as i32 {
                queue.push_back((ino, child));
            }
        }
    }
    let files = reads
        .into_iter()
        .filter_map(|(ino, ranges)| {
            Some(TracedFile {
                path: names.remove(&ino)?,
                ranges,
            })
        })
        .collect();
    Ok(Trace { files })
}

/// What a trace asks to fetch on a view.
#[derive(Debug, Default)]
pub struct Planned {
    /// In the order the trace reads them, each once.
    pub blocks: Vec<BlockId>,
    /// Files of the trace found as regular files.
    pub files: usize,
    /// Files not found (or not regular files).
    pub missing: usize,
}

/// The blocks behind the ranges `trace` names, as `view` lays them out, in
/// the trace's order; no more than `budget` bytes of blocks.
pub fn blocks_to_fetch(
    view: &MergedView,
    trace: &Trace,
    budget: u64,
) -> Result<Planned, StoreError> {
    let most = usize::try_from(budget / BLOCK_SIZE as u64).unwrap_or(usize::MAX);
    let mut out = Planned::default();
    let mut seen = HashSet::new();
    let db = view.db();
    'files: for f in &trace.files {
        let Some(ino) = walk(view, &f.path)? else {
            out.missing += 1;
            continue;
        };
        let sources = view.sources(ino)?;
        let Some(src) = sources.first() else {
            out.missing += 1;
            continue;
        };
        let Some((inode, _)) = db.inode(src.layer, src.ino)? else {
            out.missing += 1;
            continue;
        };
        if inode.kind != InodeKind::Regular as i32 {
            out.missing += 1;
            continue;
        }
        out.files += 1;
        for r in &f.ranges {
            let (start, end) = (r.start.min(inode.size), r.end.min(inode.size));
            let mut pos = start;
            while pos < end {
                let chunk = pos / CHUNK_SIZE;
                let chunk_start = chunk * CHUNK_SIZE;
                let to = end.min(chunk_start + CHUNK_SIZE);
                let chunk_view = db.chunk_view(src.layer, src.ino, chunk)?;
                let range = (pos - chunk_start) as u32..(to - chunk_start) as u32;
                for seg in resolve(&chunk_view.slices, range) {
                    if let Origin::Slice(Backing::Block { id, .. }) = seg.origin {
                        if seen.insert(id) {
                            if out.blocks.len() >= most {
                                break 'files;
                            }
                            out.blocks.push(id);
                        }
                    }
                }
                pos = to;
            }
        }
    }
    Ok(out)
}

/// The merged inode at `path`, if there is one.
fn walk(view: &MergedView, path: &LayerPath) -> Result<Option<Ino>, StoreError> {
    let mut at = Ino(1);
    for name in path.components() {
        match view.lookup(at, name)? {
            Some(next) => at = next,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

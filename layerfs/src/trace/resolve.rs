//! A trace and a merged view: the recorded inodes named by path, and a
//! trace's paths found again ([`walk`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use slayerfs_proto::index::InodeKind;

use super::format::{Trace, TracedFile};
use crate::build::path::LayerPath;
use crate::geometry::Ino;
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

/// The merged inode at `path`, if there is one.
pub(super) fn walk(view: &MergedView, path: &LayerPath) -> Result<Option<Ino>, StoreError> {
    let mut at = Ino(1);
    for name in path.components() {
        match view.lookup(at, name)? {
            Some(next) => at = next,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

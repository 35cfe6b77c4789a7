//! The in-memory tree of one layer while it is being imported: inodes, names,
//! whiteouts and opaque markers, with the replace-and-merge rules of applying
//! a tar stream in order.

use std::collections::BTreeMap;

use slayerfs_chunkstore::BlockSeq;

use crate::geometry::Ino;
use crate::path::LayerPath;

/// What an inode is, with what only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    Regular,
    Symlink(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// Metadata every inode has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits with setuid, setgid and sticky (mask 07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Extended attributes in name order.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Attrs {
    /// Attributes of a directory no tar entry described.
    pub fn implicit_dir() -> Self {
        Attrs {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// A byte range of a file in a block that is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSlice {
    pub chunk_index: u64,
    pub offset_in_chunk: u32,
    pub length: u32,
    pub block: BlockSeq,
    pub offset_in_block: u32,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub attrs: Attrs,
    pub size: u64,
    pub slices: Vec<PendingSlice>,
    pub children: BTreeMap<Vec<u8>, Child>,
    pub opaque: bool,
    pub implicit: bool,
}

/// A name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Entry(Ino),
    Whiteout,
}

/// Why an entry cannot be applied to the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("`{0}` is not a directory, so nothing can be placed under it")]
    NotADirectory(LayerPath),
    #[error("a {0} cannot replace the layer root")]
    ReplacesRoot(&'static str),
    #[error("hardlink target `{0}` does not exist in this layer")]
    MissingLinkTarget(LayerPath),
    #[error("hardlink target `{0}` is a directory")]
    LinkToDirectory(LayerPath),
    #[error("whiteout of the layer root")]
    WhiteoutOfRoot,
    #[error("whiteout `{0}` names no entry")]
    EmptyWhiteout(String),
}

/// A layer's tree under construction. Inode numbers here are provisional;
/// the index renumbers reachable inodes in tree order.
#[derive(Debug, Clone)]
pub struct LayerTree {
    nodes: Vec<Node>,
}

impl Default for LayerTree {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTree {
    pub fn new() -> Self {
        LayerTree {
            nodes: vec![new_node(NodeKind::Directory, Attrs::implicit_dir(), true)],
        }
    }

    pub fn node(&self, ino: Ino) -> &Node {
        &self.nodes[(ino.0 - 1) as usize]
    }

    fn node_mut(&mut self, ino: Ino) -> &mut Node {
        &mut self.nodes[(ino.0 - 1) as usize]
    }

    fn alloc(&mut self, node: Node) -> Ino {
        self.nodes.push(node);
        Ino(self.nodes.len() as u64)
    }

    /// Looks `path` up; `None` if absent or whited out.
    pub fn lookup(&self, path: &LayerPath) -> Option<Ino> {
        let mut ino = Ino::ROOT;
        for name in path.components() {
            match self.node(ino).children.get(name)? {
                Child::Entry(child) => ino = *child,
                Child::Whiteout => return None,
            }
        }
        Some(ino)
    }

    /// The directory at `path`, creating missing directories as implicit.
    fn ensure_dir(&mut self, path: &LayerPath) -> Result<Ino, TreeError> {
        let mut ino = Ino::ROOT;
        for (depth, name) in path.components().iter().enumerate() {
            ino = match self.node(ino).children.get(name).copied() {
                Some(Child::Entry(child)) if self.node(child).kind == NodeKind::Directory => child,
                Some(Child::Entry(_)) => {
                    return Err(TreeError::NotADirectory(path.prefix(depth + 1)));
                }
                existing => {
                    let mut dir = new_node(NodeKind::Directory, Attrs::implicit_dir(), true);
                    // Deleted from lower layers and re-created here: nothing
                    // of the lower directory shows through.
                    dir.opaque = existing == Some(Child::Whiteout);
                    let child = self.alloc(dir);
                    self.node_mut(ino)
                        .children
                        .insert(name.clone(), Child::Entry(child));
                    child
                }
            };
        }
        Ok(ino)
    }

    /// Applies an entry at `path`: a directory over a directory merges
    /// (attributes replaced, children kept); anything else replaces what was
    /// there. Returns the inode now at `path`.
    pub fn insert(
        &mut self,
        path: &LayerPath,
        kind: NodeKind,
        attrs: Attrs,
    ) -> Result<Ino, TreeError> {
        let is_dir = kind == NodeKind::Directory;
        let Some((parent, name)) = path.split_last() else {
            if !is_dir {
                return Err(TreeError::ReplacesRoot(kind_name(&kind)));
            }
            let root = self.node_mut(Ino::ROOT);
            root.attrs = attrs;
            root.implicit = false;
            return Ok(Ino::ROOT);
        };
        let parent = self.ensure_dir(&parent)?;
        let existing = self.node(parent).children.get(name).copied();
        if let Some(Child::Entry(old)) = existing {
            if is_dir && self.node(old).kind == NodeKind::Directory {
                let node = self.node_mut(old);
                node.attrs = attrs;
                node.implicit = false;
                return Ok(old);
            }
        }
        let mut node = new_node(kind, attrs, false);
        node.opaque = is_dir && existing == Some(Child::Whiteout);
        let ino = self.alloc(node);
        self.node_mut(parent)
            .children
            .insert(name.to_vec(), Child::Entry(ino));
        Ok(ino)
    }

    /// Sets the data of a regular file.
    pub fn set_content(&mut self, ino: Ino, size: u64, slices: Vec<PendingSlice>) {
        let node = self.node_mut(ino);
        node.size = size;
        node.slices = slices;
    }

    /// Adds `path` as another name of the (non-directory) inode at `target`.
    pub fn hardlink(&mut self, path: &LayerPath, target: &LayerPath) -> Result<Ino, TreeError> {
        let ino = self
            .lookup(target)
            .ok_or_else(|| TreeError::MissingLinkTarget(target.clone()))?;
        if self.node(ino).kind == NodeKind::Directory {
            return Err(TreeError::LinkToDirectory(target.clone()));
        }
        let Some((parent, name)) = path.split_last() else {
            return Err(TreeError::ReplacesRoot("hardlink"));
        };
        let parent = self.ensure_dir(&parent)?;
        self.node_mut(parent)
            .children
            .insert(name.to_vec(), Child::Entry(ino));
        Ok(ino)
    }

    /// Records `.wh.NAME` in `dir`: NAME of lower layers is hidden. An entry
    /// of this layer with that name stays (whiteouts apply to lower layers
    /// only); a directory there becomes opaque.
    pub fn whiteout(&mut self, dir: &LayerPath, name: &[u8]) -> Result<(), TreeError> {
        if name == b"." || name == b".." {
            return Err(TreeError::WhiteoutOfRoot);
        }
        if name.is_empty() {
            return Err(TreeError::EmptyWhiteout(dir.join(b".wh.").to_string()));
        }
        let parent = self.ensure_dir(dir)?;
        match self.node(parent).children.get(name).copied() {
            Some(Child::Entry(ino)) => {
                if self.node(ino).kind == NodeKind::Directory {
                    self.node_mut(ino).opaque = true;
                }
            }
            _ => {
                self.node_mut(parent)
                    .children
                    .insert(name.to_vec(), Child::Whiteout);
            }
        }
        Ok(())
    }

    /// Records `.wh..wh..opq` in `dir`: no lower child of it shows through.
    pub fn opaque(&mut self, dir: &LayerPath) -> Result<(), TreeError> {
        let ino = self.ensure_dir(dir)?;
        self.node_mut(ino).opaque = true;
        Ok(())
    }

    /// Every reachable inode once, in depth-first name order, root first;
    /// hardlinked inodes at their first name.
    pub fn walk_order(&self) -> Vec<Ino> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = Vec::new();
        let mut stack = vec![Ino::ROOT];
        while let Some(ino) = stack.pop() {
            let slot = &mut seen[(ino.0 - 1) as usize];
            if *slot {
                continue;
            }
            *slot = true;
            order.push(ino);
            for child in self.node(ino).children.values().rev() {
                if let Child::Entry(c) = child {
                    stack.push(*c);
                }
            }
        }
        order
    }
}

fn new_node(kind: NodeKind, attrs: Attrs, implicit: bool) -> Node {
    Node {
        kind,
        attrs,
        size: 0,
        slices: Vec::new(),
        children: BTreeMap::new(),
        opaque: false,
        implicit,
    }
}

pub fn kind_name(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::Directory => "directory",
        NodeKind::Regular => "file",
        NodeKind::Symlink(_) => "symlink",
        NodeKind::CharDevice { .. } => "char device",
        NodeKind::BlockDevice { .. } => "block device",
        NodeKind::Fifo => "fifo",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(s: &str) -> LayerPath {
        LayerPath::parse(s.as_bytes()).unwrap()
    }

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mode,
            ..Attrs::implicit_dir()
        }
    }

    #[test]
    fn replace_merge_and_whiteout_rules() {
        let mut t = LayerTree::new();
        let f = t
            .insert(&lp("a/b/f"), NodeKind::Regular, attrs(0o644))
            .unwrap();
        let a = t.lookup(&lp("a")).unwrap();
        assert!(t.node(a).implicit);
        // A directory entry over an implicit one merges and keeps children.
        t.insert(&lp("a"), NodeKind::Directory, attrs(0o700))
            .unwrap();
        assert_eq!(t.lookup(&lp("a/b/f")), Some(f));
        assert!(!t.node(a).implicit);
        assert_eq!(t.node(a).attrs.mode, 0o700);
        // A file replacing a directory drops its subtree.
        t.insert(&lp("a/b"), NodeKind::Regular, attrs(0o600))
            .unwrap();
        assert_eq!(t.lookup(&lp("a/b/f")), None);
        assert_eq!(
            t.insert(&lp("a/b/g"), NodeKind::Regular, attrs(0o600)),
            Err(TreeError::NotADirectory(lp("a/b")))
        );
        // Hardlinks share the inode; a directory cannot be linked.
        let l = t.hardlink(&lp("c"), &lp("a/b")).unwrap();
        assert_eq!(Some(l), t.lookup(&lp("a/b")));
        assert!(matches!(
            t.hardlink(&lp("d"), &lp("nope")),
            Err(TreeError::MissingLinkTarget(_))
        ));
        assert!(matches!(
            t.hardlink(&lp("d"), &lp("a")),
            Err(TreeError::LinkToDirectory(_))
        ));
        // Whiteouts: recorded, and a directory re-created over one is opaque.
        t.whiteout(&lp("w"), b"gone").unwrap();
        assert_eq!(
            t.node(t.lookup(&lp("w")).unwrap())
                .children
                .get(&b"gone"[..]),
            Some(&Child::Whiteout)
        );
        let g = t
            .insert(&lp("w/gone"), NodeKind::Directory, attrs(0o755))
            .unwrap();
        assert!(t.node(g).opaque);
        assert_eq!(t.whiteout(&lp(""), b"."), Err(TreeError::WhiteoutOfRoot));
        assert!(matches!(
            t.whiteout(&lp(""), b""),
            Err(TreeError::EmptyWhiteout(_))
        ));
        assert_eq!(
            t.insert(&lp("./"), NodeKind::Regular, attrs(0)),
            Err(TreeError::ReplacesRoot("file"))
        );
        // The walk visits each reachable inode once, root first.
        let order = t.walk_order();
        assert_eq!(order[0], Ino::ROOT);
        let mut dedup = order.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), order.len());
    }
}

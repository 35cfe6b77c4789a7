//! The in-memory tree of one layer while it is being imported: inodes, names,
//! whiteouts and opaque markers, with the rules containerd follows when it
//! applies a tar stream in order onto its overlayfs snapshotter (the
//! reference a converted image is compared with):
//! - an entry replaces what is at its name, except that a directory over a
//!   directory merges (attributes replaced, xattrs added, children kept);
//! - a hardlink's header applies its owner, mode, mtime and xattrs to the
//!   shared inode, as containerd chowns, chmods and sets times on every
//!   entry it creates;
//! - parents are resolved through this layer's symlinks, within the layer
//!   root; missing parents are created as implicit directories;
//! - a whiteout is a name of this layer (overlayfs's 0/0 device): an entry
//!   written over it later in the layer replaces it (a directory there is
//!   not opaque); a whiteout of a name this layer already has, and an entry
//!   under a whiteout, are refused, as containerd refuses those layers;
//! - a 0/0 character device is a whiteout (overlayfs's own), replacing what
//!   the layer had at its name;
//! - an entry naming the root itself is ignored.

use std::collections::BTreeMap;

use slayerfs_chunkstore::BlockSeq;

use super::path::LayerPath;
use crate::geometry::Ino;

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
    /// Applies a later header's attributes to an inode that has some:
    /// owner and mtime replaced, the mode too unless `with_mode` is false,
    /// xattrs added to (and overriding) the ones it has — containerd sets
    /// each xattr of a header and removes none.
    pub fn apply(&mut self, later: Attrs, with_mode: bool) {
        if with_mode {
            self.mode = later.mode;
        }
        self.uid = later.uid;
        self.gid = later.gid;
        self.mtime_sec = later.mtime_sec;
        self.mtime_nsec = later.mtime_nsec;
        self.xattrs.extend(later.xattrs);
    }

    /// These attributes without the xattrs containerd's unpack cannot keep
    /// on an inode of `kind`: `trusted.*` (it never sets them), `user.*`
    /// on anything but files and directories (the kernel refuses them
    /// there), and names outside the `user.`, `security.` and POSIX ACL
    /// namespaces (no filesystem takes them).
    pub fn kept_for(mut self, kind: &NodeKind) -> Self {
        let user_ok = matches!(kind, NodeKind::Regular | NodeKind::Directory);
        self.xattrs.retain(|name, _| {
            if name.starts_with(b"user.") {
                user_ok
            } else {
                name.starts_with(b"security.")
                    || name == b"system.posix_acl_access"
                    || name == b"system.posix_acl_default"
            }
        });
        self
    }

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
    #[error("hardlink target `{0}` does not exist in this layer")]
    MissingLinkTarget(LayerPath),
    #[error("hardlink target `{0}` is a directory")]
    LinkToDirectory(LayerPath),
    #[error("whiteout of the layer root")]
    WhiteoutOfRoot,
    #[error("whiteout `{0}` names no entry")]
    EmptyWhiteout(String),
    #[error("whiteout of `{0}`, which this layer already has (containerd refuses such a layer)")]
    WhiteoutOfOwnEntry(LayerPath),
    #[error("resolving `{0}` follows more than {MAX_SYMLINK_HOPS} symlinks")]
    SymlinkLoop(LayerPath),
}

/// Symlinks followed while resolving one path (containerd's limit).
pub const MAX_SYMLINK_HOPS: usize = 255;

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

    /// Where `path` leads when its components are resolved through this
    /// layer's symlinks, as containerd resolves an entry's parent within the
    /// layer root: `..` stops at the root, an absolute target starts there,
    /// names not in this layer are kept as they are.
    fn resolve(&self, path: &LayerPath) -> Result<Vec<Vec<u8>>, TreeError> {
        let mut todo: Vec<Vec<u8>> = path.components().iter().rev().cloned().collect();
        let mut done: Vec<(Vec<u8>, Option<Ino>)> = Vec::new();
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            if name == b".." {
                done.pop();
                continue;
            }
            if name.is_empty() || name == b"." {
                continue;
            }
            let here = match done.last() {
                None => Some(Ino::ROOT),
                Some((_, ino)) => *ino,
            };
            let child = here.and_then(|dir| match self.node(dir).children.get(&name) {
                Some(Child::Entry(c)) => Some(*c),
                _ => None,
            });
            if let Some(c) = child {
                if let NodeKind::Symlink(target) = &self.node(c).kind {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::SymlinkLoop(path.clone()));
                    }
                    if target.first() == Some(&b'/') {
                        done.clear();
                    }
                    todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                    continue;
                }
            }
            done.push((name, child));
        }
        Ok(done.into_iter().map(|(n, _)| n).collect())
    }

    /// The directory at `path` (resolved through this layer's symlinks),
    /// creating missing directories as implicit.
    fn ensure_dir(&mut self, path: &LayerPath) -> Result<Ino, TreeError> {
        let resolved = self.resolve(path)?;
        let mut ino = Ino::ROOT;
        for (depth, name) in resolved.iter().enumerate() {
            ino = match self.node(ino).children.get(name).copied() {
                Some(Child::Entry(child)) if self.node(child).kind == NodeKind::Directory => child,
                // A non-directory, or a whiteout (a device in containerd's
                // upper directory): nothing can be placed under it.
                Some(_) => {
                    return Err(TreeError::NotADirectory(LayerPath::from_components(
                        resolved[..=depth].to_vec(),
                    )));
                }
                None => {
                    let dir = new_node(NodeKind::Directory, Attrs::implicit_dir(), true);
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
    /// (attributes replaced, xattrs added, children kept); anything else
    /// replaces what was there, a whiteout of this layer included. An entry
    /// naming the root is ignored, as containerd ignores it. Returns the
    /// inode now at `path`.
    pub fn insert(
        &mut self,
        path: &LayerPath,
        kind: NodeKind,
        attrs: Attrs,
    ) -> Result<Ino, TreeError> {
        let is_dir = kind == NodeKind::Directory;
        let Some((parent, name)) = path.split_last() else {
            return Ok(Ino::ROOT);
        };
        let parent = self.ensure_dir(&parent)?;
        let existing = self.node(parent).children.get(name).copied();
        if let Some(Child::Entry(old)) = existing {
            if is_dir && self.node(old).kind == NodeKind::Directory {
                let node = self.node_mut(old);
                node.attrs.apply(attrs, true);
                node.implicit = false;
                return Ok(old);
            }
        }
        let ino = self.alloc(new_node(kind, attrs, false));
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

    /// Adds `path` as another name of the (non-directory) inode at `target`
    /// and applies the link header's `attrs` to that inode (a symlink's
    /// mode stays). A link naming the root is ignored.
    pub fn hardlink(
        &mut self,
        path: &LayerPath,
        target: &LayerPath,
        attrs: Attrs,
    ) -> Result<Ino, TreeError> {
        let Some((parent, name)) = path.split_last() else {
            return Ok(Ino::ROOT);
        };
        let missing = || TreeError::MissingLinkTarget(target.clone());
        let (ino, target_at) = match target.split_last() {
            None => (Ino::ROOT, Vec::new()),
            Some((dir, name)) => {
                let mut at = self.resolve(&dir)?;
                at.push(name.to_vec());
                let at = LayerPath::from_components(at);
                (
                    self.lookup(&at).ok_or_else(missing)?,
                    at.components().to_vec(),
                )
            }
        };
        // containerd removes what is at the link's name before linking: a
        // link over its own target, or over a directory holding it, finds
        // no target.
        let mut link_at = self.resolve(&parent)?;
        link_at.push(name.to_vec());
        if target_at.starts_with(&link_at) {
            return Err(missing());
        }
        if self.node(ino).kind == NodeKind::Directory {
            return Err(TreeError::LinkToDirectory(target.clone()));
        }
        let parent = self.ensure_dir(&parent)?;
        self.node_mut(parent)
            .children
            .insert(name.to_vec(), Child::Entry(ino));
        let node = self.node_mut(ino);
        let keep_mode = matches!(node.kind, NodeKind::Symlink(_));
        let attrs = attrs.kept_for(&node.kind);
        node.attrs.apply(attrs, !keep_mode);
        Ok(ino)
    }

    /// Records `.wh.NAME` in `dir`: NAME of lower layers is hidden. A name
    /// this layer already has cannot be whited out in it (containerd's
    /// overlayfs unpack cannot create the whiteout device over it).
    pub fn whiteout(&mut self, dir: &LayerPath, name: &[u8]) -> Result<(), TreeError> {
        if name == b"." || name == b".." {
            return Err(TreeError::WhiteoutOfRoot);
        }
        if name.is_empty() {
            return Err(TreeError::EmptyWhiteout(dir.join(b".wh.").to_string()));
        }
        let parent = self.ensure_dir(dir)?;
        if self.node(parent).children.contains_key(name) {
            return Err(TreeError::WhiteoutOfOwnEntry(dir.join(name)));
        }
        self.node_mut(parent)
            .children
            .insert(name.to_vec(), Child::Whiteout);
        Ok(())
    }

    /// A 0/0 character device entry at `path`: it replaces what the layer
    /// has there, and overlayfs (every container's rootfs on containerd)
    /// takes it for a whiteout. An entry naming the root is ignored.
    pub fn whiteout_device(&mut self, path: &LayerPath) -> Result<(), TreeError> {
        let Some((parent, name)) = path.split_last() else {
            return Ok(());
        };
        let parent = self.ensure_dir(&parent)?;
        self.node_mut(parent)
            .children
            .insert(name.to_vec(), Child::Whiteout);
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
mod tests;

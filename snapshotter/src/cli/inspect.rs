//! `slayerfs inspect`: the layers of a converted image and, with `--tree`,
//! every entry of each layer index as it is recorded.

use std::io::Write;

use oci_spec::image::Descriptor;
use slayerfs_proto::index::{Inode, InodeKind, LayerIndex, MEDIA_TYPE};

use super::progress::human_bytes;
use crate::image::converted::{ConvertedImage, ANNOTATION_INDEX, ANNOTATION_SOURCE_DIGEST};

fn annotation<'a>(d: &'a Descriptor, key: &str) -> &'a str {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map_or("-", String::as_str)
}

/// Prints the image summary and its layers.
pub fn print_layers(img: &ConvertedImage, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "manifest {}", img.manifest_digest)?;
    writeln!(out, "config   {}", img.manifest.config().digest())?;
    for (i, d) in img.manifest.layers().iter().enumerate() {
        let converted = d.media_type().to_string() == MEDIA_TYPE;
        writeln!(
            out,
            "layer {:>3}  {}  {:>10}  {}",
            i + 1,
            d.digest(),
            human_bytes(d.size()),
            if converted {
                format!("index of {}", annotation(d, ANNOTATION_SOURCE_DIGEST))
            } else {
                format!("not converted ({})", d.media_type())
            }
        )?;
        if converted && annotation(d, ANNOTATION_INDEX) != d.digest().to_string() {
            writeln!(
                out,
                "           warning: {ANNOTATION_INDEX} annotation differs from the layer digest"
            )?;
        }
    }
    Ok(())
}

fn type_char(kind: i32) -> char {
    match InodeKind::from_i32(kind) {
        Some(InodeKind::Directory) => 'd',
        Some(InodeKind::Regular) => '-',
        Some(InodeKind::Symlink) => 'l',
        Some(InodeKind::CharDevice) => 'c',
        Some(InodeKind::BlockDevice) => 'b',
        Some(InodeKind::Fifo) => 'p',
        Some(InodeKind::Socket) => 's',
        _ => '?',
    }
}

/// `rwsr-xr-t`-style permissions.
pub fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn entry_line(path: &str, ino: u64, inode: &Inode) -> String {
    let size = match InodeKind::from_i32(inode.kind) {
        Some(InodeKind::CharDevice | InodeKind::BlockDevice) => {
            format!("{},{}", inode.rdev_major, inode.rdev_minor)
        }
        _ => inode.size.to_string(),
    };
    let mut line = format!(
        "{}{} {:>5}:{:<5} {:>10} {}.{:09} ino={:<5} {}",
        type_char(inode.kind),
        mode_string(inode.mode),
        inode.uid,
        inode.gid,
        size,
        inode.mtime_sec,
        inode.mtime_nsec,
        ino,
        path
    );
    if !inode.symlink_target.is_empty() {
        line += &format!(" -> {}", String::from_utf8_lossy(&inode.symlink_target));
    }
    if inode.opaque {
        line += "  [opaque]";
    }
    if inode.implicit {
        line += "  [implicit]";
    }
    if !inode.slices.is_empty() {
        line += &format!("  [{} slices]", inode.slices.len());
    }
    for x in &inode.xattrs {
        line += &format!(
            "  xattr {}={:?}",
            String::from_utf8_lossy(&x.name),
            String::from_utf8_lossy(&x.value)
        );
    }
    line
}

/// One entry of an index, as [`walk`] finds it.
pub enum Entry<'a> {
    Node { ino: u64, inode: &'a Inode },
    Whiteout,
}

/// Calls `f` on every entry of an index with its path, depth first in name
/// order (the index is validated: every child's inode is in the table).
pub fn walk<E>(
    index: &LayerIndex,
    mut f: impl FnMut(&str, Entry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    enum Item {
        Entry(String, u64),
        Whiteout(String),
    }
    let mut stack = vec![Item::Entry("/".to_string(), 1)];
    while let Some(item) = stack.pop() {
        let (path, ino) = match item {
            Item::Whiteout(path) => {
                f(&path, Entry::Whiteout)?;
                continue;
            }
            Item::Entry(path, ino) => (path, ino),
        };
        let Some(inode) = (ino as usize)
            .checked_sub(1)
            .and_then(|i| index.inodes.get(i))
        else {
            continue;
        };
        f(&path, Entry::Node { ino, inode })?;
        let base = if path == "/" { "" } else { path.as_str() };
        for d in inode.children.iter().rev() {
            let child = format!("{base}/{}", String::from_utf8_lossy(&d.name));
            stack.push(if d.whiteout {
                Item::Whiteout(child)
            } else {
                Item::Entry(child, d.ino)
            });
        }
    }
    Ok(())
}

/// Prints every entry of an index, depth first in name order.
pub fn print_tree(index: &LayerIndex, out: &mut dyn Write) -> std::io::Result<()> {
    walk(index, |path, entry| match entry {
        Entry::Whiteout => writeln!(out, "{:<51} {path}", "whiteout"),
        Entry::Node { ino, inode } => writeln!(out, "{}", entry_line(path, ino, inode)),
    })
}

/// An entry as JSON: its path, kind, metadata and what it records.
pub fn entry_json(path: &str, entry: Entry<'_>) -> serde_json::Value {
    let (ino, inode) = match entry {
        Entry::Whiteout => return serde_json::json!({ "path": path, "whiteout": true }),
        Entry::Node { ino, inode } => (ino, inode),
    };
    let kind = match InodeKind::from_i32(inode.kind) {
        Some(InodeKind::Directory) => "directory",
        Some(InodeKind::Regular) => "file",
        Some(InodeKind::Symlink) => "symlink",
        Some(InodeKind::CharDevice) => "char_device",
        Some(InodeKind::BlockDevice) => "block_device",
        Some(InodeKind::Fifo) => "fifo",
        Some(InodeKind::Socket) => "socket",
        _ => "unknown",
    };
    let mut v = serde_json::json!({
        "path": path,
        "ino": ino,
        "kind": kind,
        "mode": inode.mode,
        "uid": inode.uid,
        "gid": inode.gid,
        "size": inode.size,
        "mtime_sec": inode.mtime_sec,
        "mtime_nsec": inode.mtime_nsec,
    });
    if matches!(
        InodeKind::from_i32(inode.kind),
        Some(InodeKind::CharDevice | InodeKind::BlockDevice)
    ) {
        v["rdev"] = serde_json::json!([inode.rdev_major, inode.rdev_minor]);
    }
    if !inode.symlink_target.is_empty() {
        v["target"] = String::from_utf8_lossy(&inode.symlink_target).into();
    }
    if inode.opaque {
        v["opaque"] = true.into();
    }
    if inode.implicit {
        v["implicit"] = true.into();
    }
    if !inode.slices.is_empty() {
        v["slices"] = inode.slices.len().into();
    }
    if !inode.xattrs.is_empty() {
        v["xattrs"] = inode
            .xattrs
            .iter()
            .map(|x| {
                (
                    String::from_utf8_lossy(&x.name).into_owned(),
                    serde_json::Value::from(String::from_utf8_lossy(&x.value).into_owned()),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    v
}

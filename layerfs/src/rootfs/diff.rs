//! The upper layer as an OCI layer: a tar of what changed against the lower
//! view, with `.wh.NAME` whiteouts and `.wh..wh..opq` markers, so that the
//! lower layers plus this one merge into what the mount shows. Turning it
//! into blocks and an index is the import pipeline's job, as for any layer.
//!
//! What is written: every name the upper holds (new entries, whiteouts,
//! lower entries moved or linked to a new name — those in full, a moved
//! directory with an opaque marker, since OCI layers have no redirects),
//! every lower inode whose attributes or data the upper changed, and the
//! directories on the way to them. Sockets are left out, as tar leaves
//! them out.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use slayerfs_proto::index::InodeKind;

use super::{Attr, FsError, Rootfs};
use crate::geometry::Ino;
use crate::read::ReadBytes;
use crate::store::upper::Upper;

/// What a diff held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiffStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub file_bytes: u64,
}

/// One tar entry to write.
enum Item {
    Node(Ino),
    Whiteout,
    Opaque,
}

struct Walk<'a> {
    fs: &'a Rootfs,
    up: &'a Upper,
    items: Vec<(Vec<u8>, Item)>,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

impl Walk<'_> {
    fn is_lower(&self, ino: Ino) -> bool {
        ino.0 <= self.fs.lower.inode_count()
    }

    /// A whole subtree as the mount shows it (a lower entry under a new name).
    fn full(&mut self, ino: Ino, path: Vec<u8>) -> Result<(), FsError> {
        let attr = self.fs.getattr(ino)?;
        self.items.push((path.clone(), Item::Node(ino)));
        if attr.is_dir() {
            self.items
                .push((join(&path, b".wh..wh..opq"), Item::Opaque));
            for (name, child) in self.fs.readdir(ino)? {
                self.full(child, join(&path, &name))?;
            }
        }
        Ok(())
    }

    /// The changes in directory `dir` at `path`; whether there were any.
    fn dir(&mut self, dir: Ino, path: &[u8]) -> Result<bool, FsError> {
        let before = self.items.len();
        let upper_names = self.up.dentries(dir)?;
        for (name, d) in &upper_names {
            let child_path = join(path, name);
            if d.whiteout {
                self.items
                    .push((join(path, &[b".wh.", &name[..]].concat()), Item::Whiteout));
                continue;
            }
            let child = Ino(d.ino);
            if self.is_lower(child) {
                // A lower entry linked or moved here.
                self.full(child, child_path)?;
                continue;
            }
            let attr = self.fs.getattr(child)?;
            self.items.push((child_path.clone(), Item::Node(child)));
            if attr.is_dir() {
                if self.fs.lower_name(dir, name)?.is_some() {
                    // It replaced a lower entry of that name.
                    self.items
                        .push((join(&child_path, b".wh..wh..opq"), Item::Opaque));
                }
                self.dir(child, &child_path)?;
            }
        }
        if self.is_lower(dir) {
            for (name, child) in self.fs.lower.children(dir)? {
                if upper_names.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                let child_path = join(path, &name);
                let changed = self.up.has_inode(child)?;
                let attr = self.fs.getattr(child)?;
                if attr.is_dir() {
                    let mark = self.items.len();
                    let inner = self.dir(child, &child_path)?;
                    if inner || changed {
                        self.items.insert(mark, (child_path, Item::Node(child)));
                    }
                } else if changed {
                    self.items.push((child_path, Item::Node(child)));
                }
            }
        }
        Ok(self.items.len() > before)
    }
}

fn io_err(e: std::io::Error) -> FsError {
    FsError::Data {
        ino: Ino(0),
        source: e,
    }
}

fn pax_time(sec: i64, nsec: u32) -> String {
    if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        // -1.5 s is written "-1.5": the integer part rounds toward zero.
        let (whole, frac) = if nsec == 0 {
            (sec, 0)
        } else {
            (sec + 1, 1_000_000_000 - nsec)
        };
        if whole == 0 {
            format!("-0.{frac:09}")
        } else {
            format!("{whole}.{frac:09}")
        }
    }
}

impl Rootfs {
    /// Writes the upper layer's changes as an uncompressed OCI layer tar.
    pub fn write_diff<W: Write>(&self, out: W) -> Result<DiffStats, FsError> {
        let up = self.writable()?;
        // Held, never committed: no change lands while the diff is read.
        let _frozen = up.change();
        let mut walk = Walk {
            fs: self,
            up,
            items: Vec::new(),
        };
        walk.dir(Ino::ROOT, b"")?;
        let root = self.getattr(Ino::ROOT)?;
        let root_changed = up.has_inode(Ino::ROOT)?;
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Complete);
        let mut stats = DiffStats::default();
        if root_changed {
            self.append(&mut tar, b".", &root, &mut HashMap::new(), &mut stats)?;
        }
        let mut seen: HashMap<Ino, Vec<u8>> = HashMap::new();
        for (path, item) in walk.items {
            match item {
                Item::Whiteout | Item::Opaque => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(0);
                    h.set_mode(0o644);
                    tar.append_data(
                        &mut h,
                        PathBuf::from(OsStr::from_bytes(&path)),
                        std::io::empty(),
                    )
                    .map_err(io_err)?;
                    stats.whiteouts += 1;
                }
                Item::Node(ino) => {
                    let attr = self.getattr(ino)?;
                    self.append(&mut tar, &path, &attr, &mut seen, &mut stats)?;
                }
            }
        }
        tar.into_inner().map_err(io_err)?.flush().map_err(io_err)?;
        Ok(stats)
    }

    fn append<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        path: &[u8],
        attr: &Attr,
        seen: &mut HashMap<Ino, Vec<u8>>,
        stats: &mut DiffStats,
    ) -> Result<(), FsError> {
        let kind = attr.kind();
        if kind == InodeKind::Socket {
            return Ok(());
        }
        let p = PathBuf::from(OsStr::from_bytes(path));
        let mut h = tar::Header::new_gnu();
        h.set_mode(attr.inode.mode & 0o7777);
        h.set_mtime(attr.inode.mtime_sec.max(0) as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = vec![
            (
                "mtime".into(),
                pax_time(attr.inode.mtime_sec, attr.inode.mtime_nsec).into_bytes(),
            ),
            ("uid".into(), attr.inode.uid.to_string().into_bytes()),
            ("gid".into(), attr.inode.gid.to_string().into_bytes()),
        ];
        for x in &attr.inode.xattrs {
            let name = String::from_utf8_lossy(&x.name);
            pax.push((format!("SCHILY.xattr.{name}"), x.value.clone()));
        }
        h.set_uid(u64::from(attr.inode.uid).min(0o7777777));
        h.set_gid(u64::from(attr.inode.gid).min(0o7777777));
        let pax_refs = pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        tar.append_pax_extensions(pax_refs).map_err(io_err)?;
        stats.entries += 1;
        // A second name of an inode already written is a hardlink to it.
        if kind != InodeKind::Directory {
            if let Some(first) = seen.get(&attr.ino) {
                h.set_entry_type(tar::EntryType::Link);
                return tar
                    .append_link(&mut h, &p, PathBuf::from(OsStr::from_bytes(first)))
                    .map_err(io_err);
            }
            seen.insert(attr.ino, path.to_vec());
        }
        match kind {
            InodeKind::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut h, &p, std::io::empty())
            }
            InodeKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = PathBuf::from(OsStr::from_bytes(&attr.inode.symlink_target));
                tar.append_link(&mut h, &p, target)
            }
            InodeKind::CharDevice | InodeKind::BlockDevice | InodeKind::Fifo => {
                h.set_entry_type(match kind {
                    InodeKind::CharDevice => tar::EntryType::Char,
                    InodeKind::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                h.set_device_major(attr.inode.rdev_major).map_err(io_err)?;
                h.set_device_minor(attr.inode.rdev_minor).map_err(io_err)?;
                tar.append_data(&mut h, &p, std::io::empty())
            }
            _ => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(attr.inode.size);
                stats.file_bytes += attr.inode.size;
                let reader = FileReader {
                    fs: self,
                    ino: attr.ino,
                    size: attr.inode.size,
                    pos: 0,
                    pending: None,
                    taken: 0,
                };
                tar.append_data(&mut h, &p, reader)
            }
        }
        .map_err(io_err)
    }
}

/// A file's bytes through the read path, a block at a time.
struct FileReader<'a> {
    fs: &'a Rootfs,
    ino: Ino,
    size: u64,
    pos: u64,
    pending: Option<ReadBytes>,
    taken: usize,
}

impl std::io::Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.as_ref().is_none_or(|p| self.taken >= p.len()) {
            if self.pos >= self.size {
                return Ok(0);
            }
            let want = (self.size - self.pos).min(crate::BLOCK_SIZE as u64) as u32;
            let bytes = self
                .fs
                .read_waiting(self.ino, self.pos, want)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if bytes.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{} ended at {} of {} bytes",
                    self.ino, self.pos, self.size
                )));
            }
            self.pos += bytes.len() as u64;
            self.pending = Some(bytes);
            self.taken = 0;
        }
        let Some(pending) = &self.pending else {
            return Ok(0);
        };
        let rest = &pending.as_slice()[self.taken..];
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.taken += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::pax_time;

    #[test]
    fn pax_times_round_trip_the_importer() {
        for (sec, nsec) in [
            (0, 0),
            (1_700_000_000, 5),
            (-1, 500_000_000),
            (-3, 0),
            (-2, 1),
        ] {
            let text = pax_time(sec, nsec);
            assert_eq!(
                crate::build::import::parse_pax_time(&text),
                Some((sec, nsec)),
                "{text}"
            );
        }
    }
}

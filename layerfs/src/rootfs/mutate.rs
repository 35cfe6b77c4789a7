//! Namespace and attribute changes: every one lands in the upper layer.
//! Removing a name the lower view has leaves a whiteout; a lower inode
//! whose attributes or link count change is copied up first.

use slayerfs_proto::index::{Inode, InodeKind, Xattr};
use slayerfs_proto::store::DentryRecord;

use super::{Attr, FsError, Rootfs, Time};
use crate::build::path::MAX_NAME_LEN;
use crate::geometry::Ino;
use crate::store::upper::{Change, OpId, Upper};

/// An inode to create.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub kind: InodeKind,
    /// Permission bits (07777), umask already applied.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: (u32, u32),
    pub symlink_target: Vec<u8>,
}

/// Attribute changes of a `setattr`.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

/// `setxattr` flags.
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

const S_ISGID: u32 = 0o2000;

fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::Invalid);
    }
    Ok(())
}

fn entry(ino: Ino) -> DentryRecord {
    DentryRecord {
        ino: ino.0,
        whiteout: false,
    }
}

impl Rootfs {
    /// Updates a directory whose entries changed: times, and its link
    /// count by `nlink_delta` (subdirectories added or removed).
    fn dir_changed(&self, ch: &Change<'_>, dir: Ino, nlink_delta: i32) -> Result<(), FsError> {
        let mut attr = self.copy_up(ch, dir)?;
        let now = Time::now();
        attr.inode.mtime_sec = now.sec;
        attr.inode.mtime_nsec = now.nsec;
        attr.ctime = now;
        attr.nlink = attr.nlink.saturating_add_signed(nlink_delta);
        ch.put_inode(dir, &attr.into_upper())?;
        Ok(())
    }

    /// Takes `name` out of `dir`: a whiteout if the lower view has it.
    fn remove_name(&self, ch: &Change<'_>, dir: Ino, name: &[u8]) -> Result<(), FsError> {
        if self.lower_name(dir, name)?.is_some() {
            ch.put_dentry(
                dir,
                name,
                DentryRecord {
                    ino: 0,
                    whiteout: true,
                },
            )?;
        } else {
            ch.remove_dentry(dir, name)?;
        }
        Ok(())
    }

    /// One name fewer for a non-directory; the last one removes it (at the
    /// last close if it is open).
    fn drop_link(&self, ch: &Change<'_>, attr: &Attr) -> Result<(), FsError> {
        let nlink = attr.nlink.saturating_sub(1);
        if nlink == 0 && !self.is_open(attr.ino) {
            ch.remove_inode(attr.ino)?;
            return Ok(());
        }
        let mut attr = self.copy_up(ch, attr.ino)?;
        attr.nlink = nlink;
        attr.ctime = Time::now();
        ch.put_inode(attr.ino, &attr.into_upper())?;
        Ok(())
    }

    /// Removes a directory that is known to be empty.
    fn drop_dir(&self, ch: &Change<'_>, ino: Ino) -> Result<(), FsError> {
        ch.clear_dentries(ino)?;
        ch.remove_inode(ino)?;
        Ok(())
    }

    fn parent_dir(&self, dir: Ino) -> Result<Attr, FsError> {
        let attr = self.getattr(dir)?;
        if !attr.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(attr)
    }

    /// Creates a file, directory, symlink or device node named `name`.
    pub fn create(&self, op: OpId, dir: Ino, name: &[u8], node: NewNode) -> Result<Attr, FsError> {
        let up = self.writable()?;
        check_name(name)?;
        if let Some(ino) = answered(up, op)? {
            return self.getattr(Ino(ino));
        }
        let ch = up.change();
        let parent = self.parent_dir(dir)?;
        if self.resolve(dir, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let is_dir = node.kind == InodeKind::Directory;
        let mut mode = node.mode & 0o7777;
        let mut gid = node.gid;
        // A setgid directory hands its group down, and its setgid bit to
        // subdirectories.
        if parent.inode.mode & S_ISGID != 0 {
            gid = parent.inode.gid;
            if is_dir {
                mode |= S_ISGID;
            }
        }
        let now = Time::now();
        let ino = ch.allocate_ino()?;
        let attr = Attr {
            ino,
            inode: Inode {
                kind: node.kind as i32,
                mode,
                uid: node.uid,
                gid,
                mtime_sec: now.sec,
                mtime_nsec: now.nsec,
                symlink_target: node.symlink_target,
                rdev_major: node.rdev.0,
                rdev_minor: node.rdev.1,
                size: 0,
                ..Inode::default()
            },
            nlink: if is_dir { 2 } else { 1 },
            atime: now,
            ctime: now,
        };
        let mut attr = attr;
        if attr.kind() == InodeKind::Symlink {
            attr.inode.size = attr.inode.symlink_target.len() as u64;
        }
        ch.put_inode(ino, &attr.clone().into_upper())?;
        ch.put_dentry(dir, name, entry(ino))?;
        self.dir_changed(&ch, dir, i32::from(is_dir))?;
        ch.commit(Some((op, ino.0)))?;
        Ok(attr)
    }

    pub fn unlink(&self, op: OpId, dir: Ino, name: &[u8]) -> Result<(), FsError> {
        let up = self.writable()?;
        if answered(up, op)?.is_some() {
            return Ok(());
        }
        let ch = up.change();
        self.parent_dir(dir)?;
        let ino = self.resolve(dir, name)?.ok_or(FsError::NotFound)?;
        let attr = self.getattr(ino)?;
        if attr.is_dir() {
            return Err(FsError::IsDir);
        }
        self.remove_name(&ch, dir, name)?;
        self.drop_link(&ch, &attr)?;
        self.dir_changed(&ch, dir, 0)?;
        Ok(ch.commit(Some((op, 0)))?)
    }

    pub fn rmdir(&self, op: OpId, dir: Ino, name: &[u8]) -> Result<(), FsError> {
        let up = self.writable()?;
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        if answered(up, op)?.is_some() {
            return Ok(());
        }
        let ch = up.change();
        self.parent_dir(dir)?;
        let ino = self.resolve(dir, name)?.ok_or(FsError::NotFound)?;
        if !self.getattr(ino)?.is_dir() {
            return Err(FsError::NotDir);
        }
        if !self.readdir(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.remove_name(&ch, dir, name)?;
        self.drop_dir(&ch, ino)?;
        self.dir_changed(&ch, dir, -1)?;
        Ok(ch.commit(Some((op, 0)))?)
    }

    /// Renames `name` of `dir` to `new_name` of `new_dir`, replacing what
    /// is there unless `no_replace`; `exchange` swaps the two.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        op: OpId,
        dir: Ino,
        name: &[u8],
        new_dir: Ino,
        new_name: &[u8],
        no_replace: bool,
        exchange: bool,
    ) -> Result<(), FsError> {
        let up = self.writable()?;
        check_name(new_name)?;
        if answered(up, op)?.is_some() {
            return Ok(());
        }
        let ch = up.change();
        self.parent_dir(dir)?;
        self.parent_dir(new_dir)?;
        let src = self.resolve(dir, name)?.ok_or(FsError::NotFound)?;
        let src_attr = self.getattr(src)?;
        let dst = self.resolve(new_dir, new_name)?;
        if exchange {
            let dst = dst.ok_or(FsError::NotFound)?;
            let dst_attr = self.getattr(dst)?;
            ch.put_dentry(new_dir, new_name, entry(src))?;
            ch.put_dentry(dir, name, entry(dst))?;
            let moved = i32::from(src_attr.is_dir()) - i32::from(dst_attr.is_dir());
            self.dir_changed(&ch, dir, -moved)?;
            if new_dir != dir {
                self.dir_changed(&ch, new_dir, moved)?;
            }
            return Ok(ch.commit(Some((op, 0)))?);
        }
        let mut new_dir_delta = 0;
        if let Some(dst) = dst {
            if no_replace {
                return Err(FsError::Exists);
            }
            if dst == src {
                // Two names of one inode: POSIX says do nothing.
                return Ok(());
            }
            let dst_attr = self.getattr(dst)?;
            match (src_attr.is_dir(), dst_attr.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    if !self.readdir(dst)?.is_empty() {
                        return Err(FsError::NotEmpty);
                    }
                    self.drop_dir(&ch, dst)?;
                    new_dir_delta -= 1;
                }
                (false, false) => self.drop_link(&ch, &dst_attr)?,
            }
        }
        ch.put_dentry(new_dir, new_name, entry(src))?;
        self.remove_name(&ch, dir, name)?;
        let moved = i32::from(src_attr.is_dir());
        if new_dir == dir {
            self.dir_changed(&ch, dir, new_dir_delta)?;
        } else {
            self.dir_changed(&ch, dir, -moved)?;
            self.dir_changed(&ch, new_dir, new_dir_delta + moved)?;
        }
        // The renamed inode's ctime changes, as on local filesystems.
        let mut attr = self.copy_up(&ch, src)?;
        attr.ctime = Time::now();
        ch.put_inode(src, &attr.into_upper())?;
        Ok(ch.commit(Some((op, 0)))?)
    }

    /// A new name for a non-directory.
    pub fn link(&self, op: OpId, ino: Ino, new_dir: Ino, new_name: &[u8]) -> Result<Attr, FsError> {
        let up = self.writable()?;
        check_name(new_name)?;
        if answered(up, op)?.is_some() {
            return self.getattr(ino);
        }
        let ch = up.change();
        self.parent_dir(new_dir)?;
        let mut attr = self.copy_up(&ch, ino)?;
        if attr.is_dir() {
            return Err(FsError::NotPermitted);
        }
        if self.resolve(new_dir, new_name)?.is_some() {
            return Err(FsError::Exists);
        }
        attr.nlink += 1;
        attr.ctime = Time::now();
        ch.put_inode(ino, &attr.clone().into_upper())?;
        ch.put_dentry(new_dir, new_name, entry(ino))?;
        self.dir_changed(&ch, new_dir, 0)?;
        ch.commit(Some((op, ino.0)))?;
        Ok(attr)
    }

    /// chmod, chown, truncate and utimes.
    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr, FsError> {
        let up = self.writable()?;
        let ch = up.change();
        let mut attr = self.copy_up(&ch, ino)?;
        let now = Time::now();
        if let Some(mode) = set.mode {
            attr.inode.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            attr.inode.uid = uid;
        }
        if let Some(gid) = set.gid {
            attr.inode.gid = gid;
        }
        if let Some(size) = set.size {
            self.truncate(&ch, &mut attr, size)?;
            attr.inode.mtime_sec = now.sec;
            attr.inode.mtime_nsec = now.nsec;
        }
        if let Some(t) = set.atime {
            attr.atime = t;
        }
        if let Some(t) = set.mtime {
            attr.inode.mtime_sec = t.sec;
            attr.inode.mtime_nsec = t.nsec;
        }
        attr.ctime = now;
        ch.put_inode(ino, &attr.clone().into_upper())?;
        ch.commit(None)?;
        Ok(attr)
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<(), FsError> {
        let up = self.writable()?;
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::Invalid);
        }
        let ch = up.change();
        let mut attr = self.copy_up(&ch, ino)?;
        let xattrs = &mut attr.inode.xattrs;
        match xattrs.binary_search_by(|x| x.name.as_slice().cmp(name)) {
            Ok(_) if flags & XATTR_CREATE != 0 => return Err(FsError::Exists),
            Ok(i) => xattrs[i].value = value.to_vec(),
            Err(_) if flags & XATTR_REPLACE != 0 => return Err(FsError::NoAttr),
            Err(i) => xattrs.insert(
                i,
                Xattr {
                    name: name.to_vec(),
                    value: value.to_vec(),
                },
            ),
        }
        attr.ctime = Time::now();
        ch.put_inode(ino, &attr.into_upper())?;
        Ok(ch.commit(None)?)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<(), FsError> {
        let up = self.writable()?;
        let ch = up.change();
        let mut attr = self.copy_up(&ch, ino)?;
        let before = attr.inode.xattrs.len();
        attr.inode.xattrs.retain(|x| x.name != name);
        if attr.inode.xattrs.len() == before {
            return Err(FsError::NoAttr);
        }
        attr.ctime = Time::now();
        ch.put_inode(ino, &attr.into_upper())?;
        Ok(ch.commit(None)?)
    }
}

/// What an earlier change did for this request, when the kernel sends it
/// again (a restart lost the answer).
fn answered(up: &Upper, op: OpId) -> Result<Option<u64>, FsError> {
    if !op.resent {
        return Ok(None);
    }
    Ok(up.reply_of(op.id)?)
}

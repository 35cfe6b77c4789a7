//! The FUSE operations, each a call into the rootfs and a reply.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use slayerfs_proto::index::InodeKind;

use super::attr::{decode_dev, file_attr, file_type, time_or_now};
use super::connection::RESEND_BIT;
use super::{errno, guarded, SlayerFuse, FILE_OPEN_FLAGS, MAX_IO, TTL};
use crate::geometry::Ino;
use crate::rootfs::{OpId, SetAttr};

/// The request a change answers; one the kernel sent again keeps the id
/// it had, without the resend bit.
fn op_id(req: &Request) -> OpId {
    let unique = req.unique().0;
    OpId {
        id: unique & !RESEND_BIT,
        resent: unique & RESEND_BIT != 0,
    }
}

impl Filesystem for SlayerFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let _span = tracing::trace_span!("lookup", parent = parent.0).entered();
            self.reply_entry(
                "lookup",
                parent.0,
                self.fs.lookup(Ino(parent.0), name.as_bytes()),
                reply,
            );
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || {
            let _span = tracing::trace_span!("getattr", ino = ino.0).entered();
            match self.fs.getattr(Ino(ino.0)) {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno("getattr", ino.0, e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            let _span = tracing::debug_span!("setattr", ino = ino.0).entered();
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(time_or_now),
                mtime: mtime.map(time_or_now),
            };
            match self.fs.setattr(Ino(ino.0), &set) {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno("setattr", ino.0, e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", ino.0, e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", || {
            let _span = tracing::debug_span!("mknod", parent = parent.0).entered();
            let kind = match mode & libc::S_IFMT {
                libc::S_IFREG | 0 => InodeKind::Regular,
                libc::S_IFCHR => InodeKind::CharDevice,
                libc::S_IFBLK => InodeKind::BlockDevice,
                libc::S_IFIFO => InodeKind::Fifo,
                libc::S_IFSOCK => InodeKind::Socket,
                _ => return reply.error(Errno::EINVAL),
            };
            let node = self.new_node(req, kind, mode & !umask, decode_dev(rdev), Vec::new());
            self.reply_entry(
                "mknod",
                parent.0,
                self.fs
                    .create(op_id(req), Ino(parent.0), name.as_bytes(), node),
                reply,
            );
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            let _span = tracing::debug_span!("mkdir", parent = parent.0).entered();
            let node = self.new_node(req, InodeKind::Directory, mode & !umask, (0, 0), Vec::new());
            self.reply_entry(
                "mkdir",
                parent.0,
                self.fs
                    .create(op_id(req), Ino(parent.0), name.as_bytes(), node),
                reply,
            );
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || {
            let _span = tracing::debug_span!("unlink", parent = parent.0).entered();
            self.reply_empty(
                "unlink",
                parent.0,
                self.fs.unlink(op_id(req), Ino(parent.0), name.as_bytes()),
                reply,
            );
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || {
            let _span = tracing::debug_span!("rmdir", parent = parent.0).entered();
            self.reply_empty(
                "rmdir",
                parent.0,
                self.fs.rmdir(op_id(req), Ino(parent.0), name.as_bytes()),
                reply,
            );
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            let _span = tracing::debug_span!("symlink", parent = parent.0).entered();
            let node = self.new_node(
                req,
                InodeKind::Symlink,
                0o777,
                (0, 0),
                target.as_os_str().as_bytes().to_vec(),
            );
            self.reply_entry(
                "symlink",
                parent.0,
                self.fs
                    .create(op_id(req), Ino(parent.0), link_name.as_bytes(), node),
                reply,
            );
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            let _span = tracing::debug_span!("rename", parent = parent.0, newparent = newparent.0)
                .entered();
            if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return reply.error(Errno::EINVAL);
            }
            let r = self.fs.rename(
                op_id(req),
                Ino(parent.0),
                name.as_bytes(),
                Ino(newparent.0),
                newname.as_bytes(),
                flags.contains(RenameFlags::RENAME_NOREPLACE),
                flags.contains(RenameFlags::RENAME_EXCHANGE),
            );
            self.reply_empty("rename", parent.0, r, reply);
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded("link", || {
            let _span = tracing::debug_span!("link", ino = ino.0).entered();
            self.reply_entry(
                "link",
                ino.0,
                self.fs
                    .link(op_id(req), Ino(ino.0), Ino(newparent.0), newname.as_bytes()),
                reply,
            );
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || match self.fs.getattr(Ino(ino.0)) {
            Ok(a) if a.is_dir() => reply.error(Errno::EISDIR),
            Ok(_) => {
                self.fs.opened(Ino(ino.0));
                reply.opened(FileHandle(0), FILE_OPEN_FLAGS);
            }
            Err(e) => reply.error(errno("open", ino.0, e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || {
            let span = tracing::debug_span!("read", ino = ino.0, offset, size);
            let _entered = span.clone().entered();
            let start = std::time::Instant::now();
            self.fs.read(Ino(ino.0), offset, size, move |read| {
                let _entered = span.entered();
                match read {
                    Ok(data) => reply.data(data.as_slice()),
                    Err(e) => reply.error(errno("read", ino.0, e)),
                }
                crate::metrics::fuse().answered("read", start.elapsed());
            });
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            let _span =
                tracing::debug_span!("write", ino = ino.0, offset, len = data.len()).entered();
            match self.fs.write(Ino(ino.0), offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", ino.0, e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded("flush", || {
            reply.ok();
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || {
            self.reply_empty("release", ino.0, self.fs.released(Ino(ino.0)), reply);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || {
            let _span = tracing::debug_span!("fsync", ino = ino.0).entered();
            self.reply_empty("fsync", ino.0, self.fs.fsync(Some(Ino(ino.0))), reply);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", || {
            let _span = tracing::debug_span!("opendir", ino = ino.0).entered();
            if !self.fs.is_writable() {
                // Directories of a read-only mount never change: the kernel may
                // stop sending opendir/releasedir (two round trips per directory
                // walked) and readdir serves the directory's own listing.
                return reply.error(Errno::ENOSYS);
            }
            match self.list(Ino(ino.0)) {
                Ok(listing) => {
                    let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                    self.dirs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(fh, listing);
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(e) => reply.error(errno("opendir", ino.0, e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let _span = tracing::debug_span!("readdir", ino = ino.0, offset).entered();
            let r = self.walk_listing(ino, fh, offset, |child, next, name, attr| {
                reply.add(child, next, file_type(attr.kind()), name)
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", || {
            let _span = tracing::debug_span!("readdirplus", ino = ino.0, offset).entered();
            let r = self.walk_listing(ino, fh, offset, |child, next, name, attr| {
                reply.add(child, next, name, &TTL, &file_attr(attr), Generation(0))
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", || {
            self.dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsyncdir", || {
            self.reply_empty("fsyncdir", 0, self.fs.fsync(None), reply);
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || {
            // The space an upper layer can grow into; a read-only mount has none.
            let mut s = (0u64, 0u64, 0u64, 0u64, 0u64, 4096u32);
            if let Some(up) = self.fs.upper() {
                if let Ok(v) = crate::store::upper::statvfs(up.data_dir()) {
                    s = v;
                }
            }
            reply.statfs(s.0, s.1, s.2, s.3, s.4, s.5, 255, s.5);
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded("setxattr", || {
            let _span = tracing::debug_span!("setxattr", ino = ino.0).entered();
            self.reply_empty(
                "setxattr",
                ino.0,
                self.fs.setxattr(Ino(ino.0), name.as_bytes(), value, flags),
                reply,
            );
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", || {
            match self.fs.getxattr(Ino(ino.0), name.as_bytes()) {
                Ok(v) if size == 0 => reply.size(v.len() as u32),
                Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
                Ok(v) => reply.data(&v),
                Err(e) => reply.error(errno("getxattr", ino.0, e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", || match self.fs.listxattr(Ino(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32);
                } else if buf.len() > size as usize {
                    reply.error(Errno::ERANGE);
                } else {
                    reply.data(&buf);
                }
            }
            Err(e) => reply.error(errno("listxattr", ino.0, e)),
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("removexattr", || {
            let _span = tracing::debug_span!("removexattr", ino = ino.0).entered();
            self.reply_empty(
                "removexattr",
                ino.0,
                self.fs.removexattr(Ino(ino.0), name.as_bytes()),
                reply,
            );
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        guarded("access", || {
            // The kernel checks permissions (default_permissions).
            reply.ok();
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            let _span = tracing::debug_span!("create", parent = parent.0).entered();
            let node = self.new_node(req, InodeKind::Regular, mode & !umask, (0, 0), Vec::new());
            match self
                .fs
                .create(op_id(req), Ino(parent.0), name.as_bytes(), node)
            {
                Ok(a) => {
                    self.fs.opened(a.ino);
                    reply.created(
                        &TTL,
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(0),
                        FILE_OPEN_FLAGS,
                    );
                }
                Err(e) => reply.error(errno("create", parent.0, e)),
            }
        });
    }
}

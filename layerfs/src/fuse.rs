//! The FUSE protocol over a [`Rootfs`], with `fuser` (no libfuse).
//!
//! Inode numbers are the rootfs's own, stable for the life of the upper
//! layer. The kernel may keep entries, attributes and file pages for long:
//! this process is the only writer, and every change it makes passes through
//! the kernel, which updates its caches from our replies.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, TimeOrNow,
};
use slayerfs_proto::index::InodeKind;

use crate::geometry::Ino;
use crate::rootfs::{Attr, FsError, NewNode, Rootfs, SetAttr, Time};

/// How long the kernel may trust what we tell it.
const TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_IO: u32 = 1 << 20;

/// Options of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Worker threads answering the kernel.
    pub threads: usize,
    /// Shown as the source in the mount table.
    pub fs_name: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            fs_name: "slayerfs".into(),
        }
    }
}

/// The session configuration of a mount: any uid may use it, permissions
/// are checked by the kernel, device nodes and setuid binaries work.
pub fn session_config(writable: bool, opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("slayerfs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    config
}

/// A directory listing taken at opendir, so readdir can resume at any
/// offset while the directory changes.
type Listing = Arc<Vec<(Vec<u8>, Ino)>>;

/// The FUSE side of a mount.
pub struct SlayerFuse {
    fs: Arc<Rootfs>,
    dirs: Mutex<HashMap<u64, Listing>>,
    /// Listings of a read-only mount's directories, by inode.
    ro_listings: moka::sync::Cache<u64, Listing>,
    next_fh: AtomicU64,
}

fn file_type(kind: InodeKind) -> FileType {
    match kind {
        InodeKind::Directory => FileType::Directory,
        InodeKind::Symlink => FileType::Symlink,
        InodeKind::CharDevice => FileType::CharDevice,
        InodeKind::BlockDevice => FileType::BlockDevice,
        InodeKind::Fifo => FileType::NamedPipe,
        InodeKind::Socket => FileType::Socket,
        InodeKind::Regular | InodeKind::Unspecified => FileType::RegularFile,
    }
}

fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

/// The kernel's 32-bit device number encoding (`new_encode_dev`).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

fn file_attr(a: &Attr) -> FileAttr {
    let mtime = system_time(a.mtime());
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.inode.size,
        blocks: a.inode.size.div_ceil(512),
        atime: system_time(a.atime),
        mtime,
        ctime: system_time(a.ctime),
        crtime: mtime,
        kind: file_type(a.kind()),
        perm: (a.inode.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.inode.uid,
        gid: a.inode.gid,
        rdev: encode_dev(a.inode.rdev_major, a.inode.rdev_minor),
        blksize: 4096,
        flags: 0,
    }
}

fn time_or_now(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::SpecificTime(t) => Time::from(t),
        TimeOrNow::Now => Time::now(),
    }
}

/// The errno of a failure; faults of our state or of the store are logged.
fn errno(op: &'static str, ino: u64, e: FsError) -> Errno {
    if e.is_fault() {
        tracing::error!(op, ino, error = %e, "filesystem operation failed");
    }
    Errno::from_i32(e.errno())
}

impl SlayerFuse {
    pub fn new(fs: Arc<Rootfs>) -> Self {
        SlayerFuse {
            fs,
            dirs: Mutex::new(HashMap::new()),
            ro_listings: moka::sync::Cache::builder()
                .max_capacity(1 << 20)
                .weigher(|_, l: &Listing| l.len().try_into().unwrap_or(u32::MAX))
                .build(),
            next_fh: AtomicU64::new(1),
        }
    }

    fn reply_entry(
        &self,
        op: &'static str,
        parent: u64,
        r: Result<Attr, FsError>,
        reply: ReplyEntry,
    ) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(op, parent, e)),
        }
    }

    fn reply_empty(&self, op: &'static str, ino: u64, r: Result<(), FsError>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(op, ino, e)),
        }
    }

    /// The listing a readdir continues: the one taken at opendir, or on a
    /// read-only mount (no opendir, see there) the directory's own, which
    /// never changes.
    fn listing(&self, ino: INodeNo, fh: FileHandle) -> Result<Listing, Errno> {
        if fh.0 != 0 {
            return self
                .dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&fh.0)
                .cloned()
                .ok_or(Errno::EBADF);
        }
        let dir = Ino(ino.0);
        self.ro_listings
            .try_get_with(ino.0, || self.fs.readdir(dir).map(Arc::new))
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => errno("readdir", ino.0, e),
                Err(shared) => Errno::from_i32(shared.errno()),
            })
    }

    /// Hands the entries of a directory from `offset` on to `add` (with
    /// the offset of the entry after each) until `add` says the reply is
    /// full. Offsets: 1 is ".", 2 is "..", 3 + i follows entry i.
    fn walk_listing(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(INodeNo, u64, &OsStr, &Attr) -> bool,
    ) -> Result<(), Errno> {
        let list = self.listing(ino, fh)?;
        let mut next = offset;
        if next < 2 {
            let dir = self
                .fs
                .getattr(Ino(ino.0))
                .map_err(|e| errno("readdir", ino.0, e))?;
            while next < 2 {
                let name = if next == 0 { "." } else { ".." };
                if add(ino, next + 1, OsStr::new(name), &dir) {
                    return Ok(());
                }
                next += 1;
            }
        }
        for (i, (name, child)) in list.iter().enumerate().skip((next - 2) as usize) {
            let attr = self
                .fs
                .getattr(*child)
                .map_err(|e| errno("readdir", ino.0, e))?;
            if add(
                INodeNo(child.0),
                3 + i as u64,
                OsStr::from_bytes(name),
                &attr,
            ) {
                break;
            }
        }
        Ok(())
    }

    fn open_flags(&self) -> FopenFlags {
        FopenFlags::FOPEN_KEEP_CACHE
    }

    fn new_node(
        &self,
        req: &Request,
        kind: InodeKind,
        mode: u32,
        rdev: (u32, u32),
        target: Vec<u8>,
    ) -> NewNode {
        NewNode {
            kind,
            mode,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            symlink_target: target,
        }
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
        let _span = tracing::trace_span!("lookup", parent = parent.0).entered();
        self.reply_entry(
            "lookup",
            parent.0,
            self.fs.lookup(Ino(parent.0), name.as_bytes()),
            reply,
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::trace_span!("getattr", ino = ino.0).entered();
        match self.fs.getattr(Ino(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", ino.0, e)),
        }
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
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", ino.0, e)),
        }
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
            self.fs.create(Ino(parent.0), name.as_bytes(), node),
            reply,
        );
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
        let _span = tracing::debug_span!("mkdir", parent = parent.0).entered();
        let node = self.new_node(req, InodeKind::Directory, mode & !umask, (0, 0), Vec::new());
        self.reply_entry(
            "mkdir",
            parent.0,
            self.fs.create(Ino(parent.0), name.as_bytes(), node),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("unlink", parent = parent.0).entered();
        self.reply_empty(
            "unlink",
            parent.0,
            self.fs.unlink(Ino(parent.0), name.as_bytes()),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("rmdir", parent = parent.0).entered();
        self.reply_empty(
            "rmdir",
            parent.0,
            self.fs.rmdir(Ino(parent.0), name.as_bytes()),
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
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
            self.fs.create(Ino(parent.0), link_name.as_bytes(), node),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span =
            tracing::debug_span!("rename", parent = parent.0, newparent = newparent.0).entered();
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let r = self.fs.rename(
            Ino(parent.0),
            name.as_bytes(),
            Ino(newparent.0),
            newname.as_bytes(),
            flags.contains(RenameFlags::RENAME_NOREPLACE),
            flags.contains(RenameFlags::RENAME_EXCHANGE),
        );
        self.reply_empty("rename", parent.0, r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("link", ino = ino.0).entered();
        self.reply_entry(
            "link",
            ino.0,
            self.fs
                .link(Ino(ino.0), Ino(newparent.0), newname.as_bytes()),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(Ino(ino.0)) {
            Ok(a) if a.is_dir() => reply.error(Errno::EISDIR),
            Ok(_) => {
                self.fs.opened(Ino(ino.0));
                reply.opened(FileHandle(0), self.open_flags());
            }
            Err(e) => reply.error(errno("open", ino.0, e)),
        }
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
        let _span = tracing::debug_span!("read", ino = ino.0, offset, size).entered();
        match self.fs.read(Ino(ino.0), offset, size) {
            Ok(data) => reply.data(data.as_slice()),
            Err(e) => reply.error(errno("read", ino.0, e)),
        }
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
        let _span = tracing::debug_span!("write", ino = ino.0, offset, len = data.len()).entered();
        match self.fs.write(Ino(ino.0), offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", ino.0, e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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
        self.reply_empty("release", ino.0, self.fs.released(Ino(ino.0)), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("fsync", ino = ino.0).entered();
        self.reply_empty("fsync", ino.0, self.fs.fsync(Some(Ino(ino.0))), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("opendir", ino = ino.0).entered();
        if !self.fs.is_writable() {
            // Directories of a read-only mount never change: the kernel may
            // stop sending opendir/releasedir (two round trips per directory
            // walked) and readdir serves the directory's own listing.
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.readdir(Ino(ino.0)) {
            Ok(entries) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno("opendir", ino.0, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = tracing::debug_span!("readdir", ino = ino.0, offset).entered();
        let r = self.walk_listing(ino, fh, offset, |child, next, name, attr| {
            reply.add(child, next, file_type(attr.kind()), name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _span = tracing::debug_span!("readdirplus", ino = ino.0, offset).entered();
        let r = self.walk_listing(ino, fh, offset, |child, next, name, attr| {
            reply.add(child, next, name, &TTL, &file_attr(attr), Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty("fsyncdir", 0, self.fs.fsync(None), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The space an upper layer can grow into; a read-only mount has none.
        let mut s = (0u64, 0u64, 0u64, 0u64, 0u64, 4096u32);
        if let Some(up) = self.fs.upper() {
            if let Ok(v) = crate::upper::statvfs(up.data_dir()) {
                s = v;
            }
        }
        reply.statfs(s.0, s.1, s.2, s.3, s.4, s.5, 255, s.5);
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
        let _span = tracing::debug_span!("setxattr", ino = ino.0).entered();
        self.reply_empty(
            "setxattr",
            ino.0,
            self.fs.setxattr(Ino(ino.0), name.as_bytes(), value, flags),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(Ino(ino.0), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno("getxattr", ino.0, e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(Ino(ino.0)) {
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
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("removexattr", ino = ino.0).entered();
        self.reply_empty(
            "removexattr",
            ino.0,
            self.fs.removexattr(Ino(ino.0), name.as_bytes()),
            reply,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (default_permissions).
        reply.ok();
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
        let _span = tracing::debug_span!("create", parent = parent.0).entered();
        let node = self.new_node(req, InodeKind::Regular, mode & !umask, (0, 0), Vec::new());
        match self.fs.create(Ino(parent.0), name.as_bytes(), node) {
            Ok(a) => {
                self.fs.opened(a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(0),
                    self.open_flags(),
                );
            }
            Err(e) => reply.error(errno("create", parent.0, e)),
        }
    }
}

//! The FUSE protocol over a [`Rootfs`], with `fuser` (no libfuse).
//!
//! Inode numbers are the rootfs's own, stable for the life of the upper
//! layer. The kernel may keep entries, attributes and file pages for long:
//! this process is the only writer, and every change it makes passes through
//! the kernel, which updates its caches from our replies.

mod attr;
mod ops;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, MountOption, ReplyEmpty, ReplyEntry,
    Request, SessionACL,
};
use slayerfs_proto::index::InodeKind;

use crate::geometry::Ino;
use crate::rootfs::{Attr, FsError, NewNode, Rootfs};
use attr::file_attr;

/// How long the kernel may trust what we tell it.
const TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_IO: u32 = 1 << 20;
/// File pages stay cached across opens: only we change files, through the
/// kernel.
const FILE_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE;

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

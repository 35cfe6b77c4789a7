//! The FUSE protocol over a [`Rootfs`], with `fuser` (no libfuse).
//!
//! Inode numbers are the rootfs's own, stable for the life of the upper
//! layer. The kernel may keep entries, attributes and file pages for long:
//! this process is the only writer, and every change it makes passes through
//! the kernel, which updates its caches from our replies.
//!
//! Nothing the kernel holds may depend on this process's memory, since a
//! later process takes the connection over ([`connection`]): files are open
//! without a handle of ours, and a directory read resumes from a cookie
//! that names a place in the directory, not in a listing we keep.

mod attr;
pub mod connection;
mod ops;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, ReplyEmpty, ReplyEntry, Request, SessionACL,
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
    /// Keys the directory cookies: the same seed must serve a connection
    /// for as long as it lives (a process taking one over uses the seed of
    /// the one before), and a secret one keeps names from being chosen to
    /// collide.
    pub listing_seed: ListingSeed,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            fs_name: "slayerfs".into(),
            listing_seed: ListingSeed::random(),
        }
    }
}

/// The key of directory cookies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ListingSeed(pub [u8; 16]);

impl std::fmt::Debug for ListingSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListingSeed(..)")
    }
}

impl ListingSeed {
    /// A seed from the kernel's random source (or the clock, without one).
    pub fn random() -> ListingSeed {
        let mut seed = [0u8; 16];
        let from_kernel =
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        if from_kernel.is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            seed = t.to_le_bytes();
        }
        ListingSeed(seed)
    }

    /// Where entry `name` sits in its directory's reading order: a keyed
    /// hash, 3 and up (1 and 2 follow "." and ".."), the same for a name
    /// whatever else the directory holds or held.
    fn cookie(&self, name: &[u8]) -> u64 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.0);
        h.update(name);
        let d = h.finalize();
        let v = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) >> 1;
        v.max(3)
    }
}

/// The session configuration of a mount: any uid may use it (the mount
/// has `allow_other`; permissions are checked by the kernel).
pub fn session_config(opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    // One descriptor for all workers: requests read and not answered stay
    // with the connection when this process ends (see `connection`).
    config.clone_fd = false;
    config
}

/// A directory's entries in cookie order, taken at opendir so that a
/// directory read does not list the directory again for every reply.
struct DirListing {
    dir: Ino,
    entries: Vec<(u64, Vec<u8>, Ino)>,
}

type Listing = Arc<DirListing>;

/// The FUSE side of a mount.
pub struct SlayerFuse {
    fs: Arc<Rootfs>,
    seed: ListingSeed,
    dirs: Mutex<HashMap<u64, Listing>>,
    /// Listings of a read-only mount's directories, by inode.
    ro_listings: moka::sync::Cache<u64, Listing>,
    next_fh: AtomicU64,
}

/// Runs one operation; a panic in it is logged and the request answered
/// EIO (fuser answers a reply dropped unsent so) instead of taking the
/// worker thread down. Each would be a defect; none is known.
/// Counted and timed in the metrics, but for reads, which may be answered
/// later and are timed when they are ([`ops`]).
fn guarded(op: &'static str, f: impl FnOnce()) {
    let start = std::time::Instant::now();
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let what = slayerfs_chunkstore::panic_text(panic.as_ref());
        tracing::error!(op, panic = %what, "a filesystem operation panicked; the mount goes on");
    }
    if op != "read" {
        crate::metrics::fuse().answered(op, start.elapsed());
    }
}

/// The errno of a failure; faults of our state or of the store are logged.
fn errno(op: &'static str, ino: u64, e: FsError) -> Errno {
    if e.is_fault() {
        tracing::error!(op, ino, error = %e, "filesystem operation failed");
    }
    crate::metrics::fuse().failed(e.errno());
    Errno::from_i32(e.errno())
}

impl SlayerFuse {
    pub fn new(fs: Arc<Rootfs>, seed: ListingSeed) -> Self {
        // Handles of an earlier process may still be open in the kernel:
        // start elsewhere (a clash would only cost a new listing, see
        // `listing`).
        let first_fh =
            u64::from_le_bytes(ListingSeed::random().0[..8].try_into().unwrap_or([1; 8])) >> 2;
        SlayerFuse {
            fs,
            seed,
            dirs: Mutex::new(HashMap::new()),
            ro_listings: moka::sync::Cache::builder()
                .max_capacity(1 << 20)
                .weigher(|_, l: &Listing| l.entries.len().try_into().unwrap_or(u32::MAX))
                .build(),
            next_fh: AtomicU64::new(first_fh.max(1)),
        }
    }

    /// Directory `dir`'s entries now, in cookie order.
    fn list(&self, dir: Ino) -> Result<Listing, FsError> {
        let mut entries: Vec<(u64, Vec<u8>, Ino)> = self
            .fs
            .readdir(dir)?
            .into_iter()
            .map(|(name, ino)| (self.seed.cookie(&name), name, ino))
            .collect();
        entries.sort_unstable();
        Ok(Arc::new(DirListing { dir, entries }))
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
    /// never changes. A handle this process did not give out (an earlier
    /// process did, before a restart) gets the directory as it is now:
    /// cookies make that a correct continuation.
    fn listing(&self, ino: INodeNo, fh: FileHandle) -> Result<Listing, Errno> {
        let dir = Ino(ino.0);
        if fh.0 != 0 {
            let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = dirs.get(&fh.0).filter(|l| l.dir == dir) {
                return Ok(l.clone());
            }
            drop(dirs);
            let l = self.list(dir).map_err(|e| errno("readdir", ino.0, e))?;
            dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            dirs.insert(fh.0, l.clone());
            return Ok(l);
        }
        self.ro_listings
            .try_get_with(ino.0, || self.list(dir))
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => errno("readdir", ino.0, e),
                Err(shared) => Errno::from_i32(shared.errno()),
            })
    }

    /// Hands the entries of a directory from `offset` on to `add` (with
    /// the offset to resume after each) until `add` says the reply is
    /// full. Offsets: 1 follows ".", 2 follows "..", any other is the
    /// cookie of the entry it follows.
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
        let first = if next <= 2 {
            0
        } else {
            list.entries
                .partition_point(|(cookie, _, _)| *cookie <= next)
        };
        for (cookie, name, child) in &list.entries[first..] {
            let attr = match self.fs.getattr(*child) {
                Ok(a) => a,
                // Removed since the listing was taken.
                Err(FsError::NotFound) => continue,
                Err(e) => return Err(errno("readdir", ino.0, e)),
            };
            if add(INodeNo(child.0), *cookie, OsStr::from_bytes(name), &attr) {
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

//! FUSE sessions at mount points, for the daemon and the CLI alike: a
//! rootfs mounted (or its connection taken over) and served on threads of
//! its own, unmounted (aborting a connection still bind-mounted elsewhere)
//! and flushed, or left to the next process; the mount table; the FUSE
//! control filesystem.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use slayerfs_layerfs::fuse::connection::{Connection, SavedInit};
use slayerfs_layerfs::fuse::{MountOptions, SlayerFuse};
use slayerfs_layerfs::rootfs::Rootfs;

/// Whether `path` is a mount point now.
pub fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let path = path.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(&unescape_mount_path(mp)) == path))
}

/// Mount paths in mountinfo escape space, tab, newline and backslash as
/// octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `mountpoint` is an empty-or-not directory nothing is
/// mounted on.
pub fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if is_mount_point(mountpoint).context("reading the mount table")? {
        bail!(
            "{} is already a mount point; unmount it first (fusermount3 -u {})",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    Ok(mountpoint.canonicalize()?)
}

/// Mounts the FUSE control filesystem if it is not (connections are
/// aborted through it). Best effort: without it, a session still ends when
/// its last mount goes.
pub fn ensure_fusectl() {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.is_dir() || is_mount_point(dir).unwrap_or(true) {
        return;
    }
    let (Ok(src), Ok(target), Ok(fstype)) = (
        std::ffi::CString::new("fusectl"),
        std::ffi::CString::new("/sys/fs/fuse/connections"),
        std::ffi::CString::new("fusectl"),
    ) else {
        return;
    };
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot mount the FUSE control filesystem");
    }
}

/// The device number (`major:minor`) of what is mounted at `path`, read
/// from the mount table (asking the filesystem would wait on a connection
/// no one serves yet). For FUSE the minor is the connection's number.
pub fn mounted_device(path: &Path) -> Option<(u32, u32)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .rev()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let mp = f.nth(1)?;
            (Path::new(&unescape_mount_path(mp)) == path).then_some(dev)
        })
        .next()
        .and_then(|dev| {
            let (maj, min) = dev.split_once(':')?;
            Some((maj.parse().ok()?, min.parse().ok()?))
        })
}

/// Ends a FUSE connection by its number (through the control filesystem):
/// every mount of it, bind mounts in containers too, answers ENOTCONN.
pub fn abort_connection(number: u32) {
    let abort = format!("/sys/fs/fuse/connections/{number}/abort");
    if let Err(e) = std::fs::write(&abort, b"1") {
        tracing::warn!(path = abort, error = %e, "cannot abort the FUSE connection");
    }
}

/// A FUSE session serving a rootfs at a mount point, on threads of its own.
pub struct MountHandle {
    pub mountpoint: PathBuf,
    pub rootfs: Arc<Rootfs>,
    worker: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The kernel's number for the FUSE connection (fusectl).
    connection: Option<u32>,
    /// The connection's descriptor, to hand to an fd store again.
    fd: OwnedFd,
}

impl MountHandle {
    /// Mounts `rootfs` at `mountpoint` on a new connection; `done` runs
    /// when the session ends (however it was unmounted).
    pub fn start(
        rootfs: Arc<Rootfs>,
        mountpoint: &Path,
        opts: MountOptions,
        done: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<Self> {
        let conn = Connection::mount(mountpoint, rootfs.is_writable(), &opts)
            .with_context(|| format!("mounting at {}", mountpoint.display()))?;
        Self::serve(rootfs, conn, mountpoint, opts, |_, _| Ok(()), done)
    }

    /// Serves `rootfs` on `conn`, which is mounted at `mountpoint` (new,
    /// or taken over from an earlier process); `keep` runs before the
    /// kernel can send anything (see [`Connection::into_session`]).
    pub fn serve(
        rootfs: Arc<Rootfs>,
        conn: Connection,
        mountpoint: &Path,
        opts: MountOptions,
        keep: impl FnOnce(BorrowedFd<'_>, &SavedInit) -> std::io::Result<()>,
        done: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<Self> {
        let fresh = !conn.is_taken_over();
        let fs = SlayerFuse::new(rootfs.clone(), opts.listing_seed);
        let (session, fd) = match conn.into_session(fs, &opts, keep) {
            Ok(s) => s,
            Err(e) => {
                if fresh {
                    detach(mountpoint);
                }
                return Err(e).with_context(|| {
                    format!("starting the FUSE session at {}", mountpoint.display())
                });
            }
        };
        let worker = std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || {
                let r = session.run();
                done();
                r
            })
            .context("starting the FUSE session")?;
        if fresh {
            // The kernel learns the root's attributes now (it keeps them for
            // the attribute lifetime): a bind mount of ours that outlives
            // the session, aborted at Commit or Remove, still stats as the
            // directory it was, as containerd's own snapshotters' mounts do.
            let _ = std::fs::metadata(mountpoint);
        }
        Ok(MountHandle {
            mountpoint: mountpoint.to_path_buf(),
            rootfs,
            worker: Some(worker),
            connection: mounted_device(mountpoint).map(|(_, minor)| minor),
            fd,
        })
    }

    /// The connection's descriptor (for an fd store that lost its copy).
    pub fn connection_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Unmounts (if still mounted), waits for the session to end and
    /// flushes the upper layer.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    /// Leaves the connection to whoever takes it over: nothing is
    /// unmounted, the session serves until this process ends.
    pub fn leave(mut self) {
        self.worker = None;
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
        if is_mount_point(&self.mountpoint).unwrap_or(false) {
            unmount(&self.mountpoint)
                .with_context(|| format!("unmounting {}", self.mountpoint.display()))?;
        }
        // Bind mounts of it elsewhere (a container's rootfs) keep the
        // filesystem alive after our own mount point is gone; the session
        // ends only when the connection is aborted.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !worker.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !worker.is_finished() {
            if let Some(conn) = self.connection {
                tracing::info!(mountpoint = %self.mountpoint.display(), "aborting the FUSE connection, still mounted elsewhere");
                abort_connection(conn);
            }
        }
        let result = worker.join();
        self.rootfs
            .checkpoint()
            .context("flushing the upper layer")?;
        match result {
            Ok(r) => r.context("FUSE session"),
            Err(_) => bail!("the FUSE session panicked"),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmounting");
        }
    }
}

/// Unmounts `mp`; if it is busy (a process has its cwd there), detaches it.
fn unmount(mp: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EBUSY) {
        return Err(e);
    }
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}

/// Lazily detaches a mount (a dead session's).
pub fn detach(mp: &Path) {
    if let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Serves `rootfs` at `mountpoint` until it is unmounted, by
/// `fusermount3 -u`/`umount`, or by SIGINT/SIGTERM (which unmount it);
/// `ready` runs once the mount is in place. Upper records are flushed
/// before returning.
pub async fn serve(
    rootfs: Arc<Rootfs>,
    mountpoint: &Path,
    opts: MountOptions,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let handle = MountHandle::start(rootfs, mountpoint, opts, move || {
        let _ = done_tx.send(());
    })?;
    ready();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = done_rx => {}
        _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
        _ = int.recv() => tracing::info!("SIGINT: unmounting"),
    }
    tokio::task::spawn_blocking(move || handle.stop())
        .await
        .context("waiting for the FUSE session")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\011c"), "/a b\tc");
        assert_eq!(unescape_mount_path(r"/a\134x"), r"/a\x");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}

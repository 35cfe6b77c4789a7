//! The upper directory of `slayerfs mount --rw`: one mount at a time may
//! use it. Opening its database says who holds it, refuses at once when the
//! holder still has it mounted, and waits (a few seconds) for a holder on
//! its way out — unmounted, flushing and exiting — so that an unmount
//! followed at once by a mount gets the mount.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::fusemount::is_mount_point;

/// How long a mount waits for a holder that is no longer mounted.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// The record of where the upper is mounted, and by which process.
const MOUNT_RECORD: &str = "mounted";

/// Opens the upper's database in `dir/db` with a page cache of
/// `cache_bytes`, creating `dir` if needed.
pub fn open_db(dir: &Path, cache_bytes: u64) -> anyhow::Result<sled::Db> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the upper directory {}", dir.display()))?;
    let path = dir.join("db");
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut waiting_for = None;
    loop {
        let err = match sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(e) => e,
        };
        if !is_lock_conflict(&err) {
            return Err(err).with_context(|| {
                format!("opening the upper layer's database in {}", dir.display())
            });
        }
        // sled's lock is an flock on its data file: the kernel knows who.
        let holder = lock_holder(&path.join("db"));
        if let Some(pid) = holder {
            if let Some(mountpoint) = mounted_at(dir, pid) {
                bail!(
                    "the upper {} is in use: mounted at {} by process {pid}; unmount it first (fusermount3 -u {})",
                    dir.display(),
                    mountpoint.display(),
                    mountpoint.display()
                );
            }
        }
        if Instant::now() >= deadline {
            match holder {
                Some(pid) => bail!(
                    "the upper {} is held by process {pid}, which has not released it within {} s (it is not mounted anywhere)",
                    dir.display(),
                    RELEASE_WAIT.as_secs()
                ),
                None => return Err(err).with_context(|| {
                    format!("opening the upper layer's database in {}", dir.display())
                }),
            }
        }
        if let Some(pid) = holder.filter(|_| waiting_for != holder) {
            waiting_for = holder;
            tracing::warn!(
                "waiting for process {pid} to release the upper {} (it has it open but not mounted)",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == ErrorKind::Other
        && io.to_string().contains("could not acquire lock"))
}

/// The process holding an flock on `file`, from `/proc/locks`.
fn lock_holder(file: &Path) -> Option<u32> {
    let meta = std::fs::metadata(file).ok()?;
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    parse_lock_holder(&locks, &want)
}

/// `1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF` → 1234, for the
/// `maj:min:ino` wanted.
fn parse_lock_holder(locks: &str, file_id: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "->"; only holders count.
        let (kind, pid, id) = match fields.as_slice() {
            [_, kind, _, _, pid, id, ..] => (*kind, *pid, *id),
            _ => return None,
        };
        (kind == "FLOCK" && id == file_id)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// Where process `pid` has the upper mounted now, from the record it wrote
/// once mounted, if that mount is still in the mount table.
fn mounted_at(dir: &Path, pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join(MOUNT_RECORD)).ok()?;
    let (recorded, mountpoint) = text.trim_end_matches('\n').split_once(' ')?;
    if recorded.parse::<u32>().ok()? != pid {
        return None;
    }
    let mountpoint = PathBuf::from(mountpoint);
    is_mount_point(&mountpoint)
        .unwrap_or(false)
        .then_some(mountpoint)
}

/// Records that this process has the upper in `dir` mounted at
/// `mountpoint` (for the message of a mount that must be refused).
pub fn record_mount(dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{MOUNT_RECORD}.tmp"));
    std::fs::write(
        &tmp,
        format!("{} {}\n", std::process::id(), mountpoint.display()),
    )
    .and_then(|()| std::fs::rename(&tmp, dir.join(MOUNT_RECORD)))
    .with_context(|| format!("recording the mount in {}", dir.display()))
}

/// Removes the record of [`record_mount`] if it is still this process's
/// (the next mount may have written its own once our lock was released).
pub fn clear_mount(dir: &Path) {
    let path = dir.join(MOUNT_RECORD);
    let ours = std::fs::read_to_string(&path)
        .is_ok_and(|t| t.split(' ').next() == Some(std::process::id().to_string().as_str()));
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_holders_are_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 11 fd:00:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 77 fd:00:5678 0 EOF\n";
        assert_eq!(parse_lock_holder(locks, "fd:00:5678"), Some(1234));
        assert_eq!(parse_lock_holder(locks, "fd:00:99"), None);
        assert_eq!(parse_lock_holder("", "fd:00:5678"), None);
    }
}

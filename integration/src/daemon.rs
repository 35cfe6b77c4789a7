//! Processes the tests start: our snapshotter daemon (and anything else,
//! such as containerd), stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::bin;

/// A process of ours, stopped when dropped: SIGTERM (the snapshotter then
/// unmounts its filesystems), SIGKILL if it is still there after 20 s.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to a minute for `path` to appear; panics naming `what` if not.
pub fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not create {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a snapshotter started by [`start_snapshotter`] keeps things.
pub struct SnapshotterPaths {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl SnapshotterPaths {
    /// The layout under a test directory: `snap/`, `snap.sock`,
    /// `snapshotter.log` (appended to across restarts).
    pub fn in_dir(dir: &Path) -> Self {
        SnapshotterPaths {
            root: dir.join("snap"),
            socket: dir.join("snap.sock"),
            log: dir.join("snapshotter.log"),
        }
    }

    /// The log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `slayerfs-snapshotter` with `config` as its configuration file
/// and returns once its socket is there (it appears only once it listens).
pub fn start_snapshotter(paths: &SnapshotterPaths, config: &Path) -> Proc {
    let _ = std::fs::remove_file(&paths.socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .expect("opening the snapshotter log");
    let child = Command::new(bin("slayerfs-snapshotter"))
        .arg("--root")
        .arg(&paths.root)
        .arg("--address")
        .arg(&paths.socket)
        .env("SLAYERFS_CONFIG", config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting slayerfs-snapshotter");
    wait_for(&paths.socket, "the snapshotter");
    Proc(child)
}

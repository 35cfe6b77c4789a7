//! A gRPC client of our snapshotter daemon, over its unix socket (what
//! containerd's proxy plugin does), and the daemon it talks to, for the
//! tests of the snapshots API.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::{Code, Status};

use crate::bins::bin;
use crate::daemon::{
    start_snapshotter, start_snapshotter_binary, write_config, Proc, SnapshotterPaths,
};

pub type Client = SnapshotsClient<Channel>;

pub const NAME: &str = "slayerfs";

pub struct Daemon {
    pub paths: SnapshotterPaths,
    config: PathBuf,
    proc: Option<Proc>,
    /// Started without `--unmount-on-exit`: SIGTERM leaves the mounts to
    /// the next start.
    restartable: bool,
    env: Vec<(&'static str, String)>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.restartable {
            // Once more, as a daemon that unmounts when stopped.
            self.restartable = false;
            self.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
        }
        // Stopped (SIGTERM, SIGKILL after 20 s), then whatever it left is
        // cleared: a mount whose connection its fd holder keeps with no
        // daemon serving it would hang the test's removal of its directory.
        drop(self.proc.take());
        clear_leftovers(&self.paths.root);
    }
}

/// Ends the fd holders of the daemon at `root` and detaches the mounts
/// under it, saying so if there were any (the daemon should leave none).
pub fn clear_leftovers(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", root.display());
    let left: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|mp| mp.starts_with(&prefix))
        .collect();
    if left.is_empty() {
        return;
    }
    eprintln!(
        "the stopped daemon left {} mounts under {}",
        left.len(),
        root.display()
    );
    for pid in holder_pids(root) {
        // SAFETY: a holder this test's daemon started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    for mp in left {
        let _ = std::process::Command::new("umount")
            .args(["-l", mp])
            .status();
    }
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, "")
    }

    /// With `extra` appended to the configuration file.
    pub fn start_with(dir: &Path, extra: &str) -> Daemon {
        let config = write_config(dir, extra);
        let paths = SnapshotterPaths::in_dir(dir);
        let proc = Some(start_snapshotter(&paths, &config));
        Daemon {
            paths,
            config,
            proc,
            restartable: false,
            env: Vec::new(),
        }
    }

    /// A daemon that any signal only restarts (no `--unmount-on-exit`);
    /// dropped, it is restarted once more with the flag and stopped, so
    /// that nothing stays mounted or held.
    /// `extra` is appended to its configuration file, `env` added to its
    /// environment (S3 credentials).
    pub fn start_restartable(dir: &Path, extra: &str, env: &[(&'static str, String)]) -> Daemon {
        let config = write_config(dir, extra);
        let paths = SnapshotterPaths::in_dir(dir);
        let proc = Some(start_snapshotter_binary(
            &bin("slayerfs-snapshotter"),
            &paths,
            &config,
            env,
            &[],
        ));
        Daemon {
            paths,
            config,
            proc,
            restartable: true,
            env: env.to_vec(),
        }
    }

    pub fn kill_and_restart(&mut self) {
        let binary = bin("slayerfs-snapshotter");
        self.restart(libc::SIGKILL, &binary);
    }

    /// Ends the daemon with `signal`, waits for it to exit, and starts
    /// `binary` (the same build or another) in its place.
    pub fn restart(&mut self, signal: i32, binary: &Path) {
        self.stop_with(signal);
        let args: &[&str] = if self.restartable {
            &[]
        } else {
            &["--unmount-on-exit"]
        };
        self.proc = Some(start_snapshotter_binary(
            binary,
            &self.paths,
            &self.config,
            &self.env,
            args,
        ));
    }

    /// Ends the daemon with `signal` and waits for it to exit.
    pub fn stop_with(&mut self, signal: i32) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(p.0.id() as i32, signal) };
            let _ = p.0.wait();
            // Already reaped: dropping it signals nothing.
            std::mem::forget(p);
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.0.id())
    }

    pub async fn client(&self) -> Client {
        let sock = self.paths.socket.clone();
        let channel = Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(sock.clone())
            }))
            .await
            .unwrap();
        SnapshotsClient::new(channel)
    }
}

pub async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<String, Status> {
    let r = c
        .prepare(PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        })
        .await?
        .into_inner();
    assert_eq!(r.mounts.len(), 1, "{r:?}");
    Ok(r.mounts[0].source.clone())
}

pub async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), Status> {
    c.commit(CommitSnapshotRequest {
        snapshotter: NAME.into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

pub async fn remove(c: &mut Client, key: &str) -> Result<(), Status> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: NAME.into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

pub async fn mounts(c: &mut Client, key: &str) -> Result<String, Status> {
    let r = c
        .mounts(MountsRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        })
        .await?
        .into_inner();
    Ok(r.mounts[0].source.clone())
}

/// Every snapshot as (name, kind, parent, labels), sorted.
pub async fn state(c: &mut Client) -> Vec<(String, i32, String, BTreeMap<String, String>)> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: NAME.into(),
            filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        for i in r.info {
            out.push((i.name, i.kind, i.parent, i.labels.into_iter().collect()));
        }
    }
    out.sort();
    out
}

pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            assert!(!s.message().is_empty(), "an error without a message");
            s.code()
        }
    }
}

pub fn mounts_under(dir: &Path) -> usize {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .count()
}

/// The fd holders serving the daemon whose root is `root`.
pub fn holder_pids(root: &Path) -> Vec<u32> {
    let sock = root.join("fdholder.sock");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args
            .first()
            .is_some_and(|a| a.ends_with(b"slayerfs-fdholder"))
            && args.get(2) == Some(&sock.as_os_str().as_encoded_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

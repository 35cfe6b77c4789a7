//! `slayerfs mount` run by tests: detached with `--daemon`, with a state
//! directory of the test's own, unmounted (and waited for) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bins::bin;

/// A mounted image.
pub struct SlayerMount {
    pub mountpoint: PathBuf,
    pub log: PathBuf,
    pid: u32,
}

/// Writes a config whose state (layer records, disk cache) lives in
/// `state_dir`, and returns its path.
pub fn test_config(state_dir: &Path) -> anyhow::Result<PathBuf> {
    test_config_with(state_dir, "")
}

/// [`test_config`] followed by `more` (TOML tables).
pub fn test_config_with(state_dir: &Path, more: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join("config.toml");
    std::fs::write(
        &path,
        format!("state_dir = {:?}\n{more}", state_dir.display().to_string()),
    )?;
    Ok(path)
}

impl SlayerMount {
    /// `slayerfs mount --daemon IMAGE MOUNTPOINT --store STORE [args…]`.
    pub fn start(
        image: &str,
        mountpoint: &Path,
        store: &str,
        state_dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<SlayerMount> {
        Self::start_configured(image, mountpoint, store, state_dir, "", args)
    }

    /// [`Self::start`] with `config` added to the test config.
    pub fn start_configured(
        image: &str,
        mountpoint: &Path,
        store: &str,
        state_dir: &Path,
        config: &str,
        args: &[&str],
    ) -> anyhow::Result<SlayerMount> {
        std::fs::create_dir_all(mountpoint)?;
        let config = test_config_with(state_dir, config)?;
        let log = state_dir.join(format!(
            "mount-{}.log",
            mountpoint
                .file_name()
                .map_or("x".into(), |n| n.to_string_lossy())
        ));
        let out = Command::new(bin("slayerfs"))
            .arg("--config")
            .arg(&config)
            .args(["mount", "--daemon", "--log"])
            .arg(&log)
            .arg(image)
            .arg(mountpoint)
            .args(["--store", store])
            .args(args)
            .output()
            .context("running slayerfs mount")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "slayerfs mount failed: {}{}\nlog: {}",
                String::from_utf8_lossy(&out.stderr),
                stdout,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let pid = stdout
            .split("(pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no pid in {stdout:?}"))?;
        Ok(SlayerMount {
            mountpoint: mountpoint.to_path_buf(),
            log,
            pid,
        })
    }

    /// What the mount process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the mount process to exit.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if self.pid == 0 {
            return Ok(());
        }
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .status()?;
        if !status.success() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let pid = std::mem::take(&mut self.pid);
        wait_gone(pid, Duration::from_secs(20))
    }
}

/// Waits until process `pid` has exited.
pub fn wait_gone(pid: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie of ours would never go: our mounts are detached
        // (setsid, re-parented), so /proc/PID disappears on exit.
        if Instant::now() > deadline {
            bail!("process {pid} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for SlayerMount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

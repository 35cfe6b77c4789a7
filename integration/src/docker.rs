//! A private Docker Engine for tests: `dockerd` from the runtimes in the
//! checkout, with its own data-root, exec-root, socket and pidfile, on a
//! containerd the test started, with our snapshotter as its storage driver
//! (the containerd image store); no iptables, no bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{run_text, Proc};
use crate::runtime::{docker_bin, readme_block, Containerd};

pub struct Dockerd {
    pub socket: PathBuf,
    pub log: PathBuf,
    runtime: Containerd,
    _proc: Proc,
}

impl Dockerd {
    /// Starts dockerd under `dir/docker` on the containerd at
    /// `dir/containerd.sock` (started as `runtime`); returns once it
    /// answers `docker version`.
    pub fn start(dir: &Path, runtime: Containerd) -> Dockerd {
        let home = dir.join("docker");
        std::fs::create_dir_all(&home).expect("docker directory");
        let config = home.join("daemon.json");
        // The README's daemon.json, as written.
        let json = readme_block(
            "### Docker Engine (28 and later, containerd image store)",
            "json",
        );
        std::fs::write(&config, json).expect("daemon.json");
        let socket = home.join("docker.sock");
        let log = home.join("dockerd.log");
        let child = Command::new(docker_bin("dockerd"))
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(home.join("data"))
            .arg("--exec-root")
            .arg(home.join("exec"))
            .arg("--pidfile")
            .arg(home.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(dir.join("containerd.sock"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--userland-proxy=false",
            ])
            .env("PATH", path_env(runtime))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("dockerd log"))
            .spawn()
            .expect("starting dockerd");
        let d = Dockerd {
            socket,
            log,
            runtime,
            _proc: Proc(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out) = d.docker(&["version"]);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer: {out}\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// `docker ARGS` against this daemon: (success, stdout + stderr).
    pub fn docker(&self, args: &[&str]) -> (bool, String) {
        run_text(
            Command::new(docker_bin("docker"))
                .arg("--host")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args)
                .env("PATH", path_env(self.runtime))
                .env("DOCKER_CONFIG", self.socket.with_file_name("client")),
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// PATH with Docker's commands (docker-init, docker-proxy) and then the
/// containerd's first.
fn path_env(runtime: Containerd) -> std::ffi::OsString {
    let docker = docker_bin("dockerd");
    let usr = docker
        .parent()
        .and_then(Path::parent)
        .expect("dockerd is in usr/sbin");
    let mut all = vec![usr.join("sbin"), usr.join("bin")];
    all.extend(std::env::split_paths(&runtime.path_env()));
    std::env::join_paths(all).expect("PATH entries")
}

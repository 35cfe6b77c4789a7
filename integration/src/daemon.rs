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
    start_snapshotter_with_env(paths, config, &[])
}

/// Starts `slayerfs-snapshotter` like [`start_snapshotter`], with extra
/// environment variables (S3 credentials). It unmounts everything when
/// stopped (`--unmount-on-exit`), so that a test leaves nothing behind.
pub fn start_snapshotter_with_env(
    paths: &SnapshotterPaths,
    config: &Path,
    env: &[(&str, String)],
) -> Proc {
    start_snapshotter_binary(
        &bin("slayerfs-snapshotter"),
        paths,
        config,
        env,
        &["--unmount-on-exit"],
    )
}

/// Starts `binary` (a snapshotter, perhaps a copy at another path) with
/// `args` after `--root` and `--address`; returns once it listens.
pub fn start_snapshotter_binary(
    binary: &Path,
    paths: &SnapshotterPaths,
    config: &Path,
    env: &[(&str, String)],
    args: &[&str],
) -> Proc {
    let _ = std::fs::remove_file(&paths.socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .expect("opening the snapshotter log");
    let child = Command::new(binary)
        .arg("--root")
        .arg(&paths.root)
        .arg("--address")
        .arg(&paths.socket)
        .args(args)
        .env("SLAYERFS_CONFIG", config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting slayerfs-snapshotter");
    let mut proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paths.socket.exists() {
        let exited = proc.0.try_wait().ok().flatten();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the snapshotter did not create {} ({})\nits log:\n{}",
            paths.socket.display(),
            exited.map_or("still running".to_string(), |s| s.to_string()),
            paths.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits up to a minute for something to accept connections on `addr`.
pub fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A registry (Debian's `docker-registry`) on 127.0.0.1, plain HTTP, its
/// data and request log under a directory.
pub struct Registry {
    pub addr: String,
    pub log: PathBuf,
    _proc: Proc,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Self::start_with_login(dir, None)
    }

    /// A registry that wants `login` (user, password) for every request
    /// (htpasswd, basic auth) when given.
    pub fn start_with_login(dir: &Path, login: Option<(&str, &str)>) -> Registry {
        std::fs::create_dir_all(dir).expect("registry directory");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        if let Some((user, pass)) = login {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("running htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("htpasswd file");
            text.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, text).expect("registry config");
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("registry log"))
            .spawn()
            .expect("starting docker-registry");
        let proc = Proc(child);
        wait_listening(&addr, "the registry");
        Registry {
            addr,
            log,
            _proc: proc,
        }
    }

    /// Where the request log is now, for [`Self::blobs_served_since`].
    pub fn mark(&self) -> usize {
        std::fs::read(&self.log).map(|b| b.len()).unwrap_or(0)
    }

    /// The digests of the blobs the registry was asked for (GET) since
    /// `mark`, in order, each once.
    pub fn blobs_served_since(&self, mark: usize) -> Vec<String> {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(bytes.get(mark..).unwrap_or_default());
        let mut out = Vec::new();
        for line in text.lines().filter(|l| l.contains("GET")) {
            let mut rest = line;
            while let Some(i) = rest.find("/blobs/sha256:") {
                let d = &rest[i + "/blobs/".len()..];
                let digest: String = d.chars().take("sha256:".len() + 64).collect();
                if digest.len() == 71 && !out.contains(&digest) {
                    out.push(digest);
                }
                rest = &rest[i + 1..];
            }
        }
        out
    }
}

/// containerd (the Debian package) with its own root, state and socket
/// under `dir`, our snapshotter as the `slayerfs` proxy plugin at
/// `snapshotter_socket`, and `cri` appended to its config (empty: the CRI
/// plugin is disabled). Returns once its socket is there.
pub fn start_containerd(dir: &Path, snapshotter_socket: &Path, cri: &str) -> Proc {
    let cri = if cri.is_empty() {
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n".to_string()
    } else {
        cri.to_string()
    };
    let config = dir.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state-containerd\"\n[grpc]\n  address = \"{d}/containerd.sock\"\n[proxy_plugins.slayerfs]\n  type = \"snapshot\"\n  address = \"{s}\"\n{cri}",
            d = dir.display(),
            s = snapshotter_socket.display(),
        ),
    )
    .expect("containerd config");
    spawn_containerd(Path::new("containerd"), &config, dir, None)
}

/// Runs `binary` (a containerd) with `config`, logging to
/// `dir/containerd.log`, with `path` as its PATH if given (where it finds
/// its shims and runc); returns once `dir/containerd.sock` is there.
pub fn spawn_containerd(
    binary: &Path,
    config: &Path,
    dir: &Path,
    path: Option<&std::ffi::OsStr>,
) -> Proc {
    let mut cmd = Command::new(binary);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let child = cmd
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("containerd.log")).expect("containerd log"))
        .spawn()
        .expect("starting containerd");
    let proc = Proc(child);
    wait_for(&dir.join("containerd.sock"), "containerd");
    proc
}

/// Runs `cmd` (stdin closed): whether it succeeded, and its stdout then
/// stderr as text.
pub fn run_text(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("starting a command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `ctr` against the containerd whose socket is `dir/containerd.sock`, in
/// `namespace` (ctr's default when `None`).
pub fn ctr_in(dir: &Path, namespace: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(dir.join("containerd.sock"));
    if let Some(ns) = namespace {
        cmd.arg("--namespace").arg(ns);
    }
    run_text(cmd.args(args))
}

/// `ctr run --rm` of `cmd` in a new container `name` of `image` on our
/// snapshotter, in `namespace` (ctr's default when `None`).
pub fn ctr_run(
    dir: &Path,
    namespace: Option<&str>,
    image: &str,
    name: &str,
    cmd: &[&str],
) -> (bool, String) {
    let mut args = vec!["run", "--rm", "--snapshotter", "slayerfs", image, name];
    args.extend_from_slice(cmd);
    ctr_in(dir, namespace, &args)
}

/// Block files and index blobs in a snapshotter's block directory (its
/// root's `blocks`).
pub fn stored_objects(root: &Path) -> (usize, usize) {
    fn walk(d: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(d) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(_) => 1,
                Err(_) => 0,
            })
            .sum()
    }
    let store = root.join("blocks");
    (walk(&store.join("blocks")), walk(&store.join("indexes")))
}

/// Runs `script` with `sh -e` in `cwd` (extra environment `env`); panics
/// with its output if it fails, returns its output otherwise.
pub fn sh(script: &str, cwd: &Path, env: &[(&str, String)]) -> String {
    let (ok, text) = run_text(
        Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v))),
    );
    assert!(ok, "{script}\n{text}");
    text
}

/// Writes `dir/slayerfs.toml`: state under `dir/state`, then `extra`
/// (more settings); returns its path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("slayerfs.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n{extra}",
            dir.join("state").display().to_string()
        ),
    )
    .expect("writing the configuration");
    path
}

/// `[store]` settings for a local store directory.
pub fn local_store(dir: &Path) -> String {
    format!("[store]\nurl = {:?}\n", dir.display().to_string())
}

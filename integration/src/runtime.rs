//! The containerd versions the tests run against — the system's (Debian's
//! 1.6) and the ones `scripts/install-runtimes.sh` unpacks into the checkout
//! (1.7, 2.x) — each started with the configuration that version wants for
//! our snapshotter, CRI and lazy pulls, and its own `ctr`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::daemon::{run_text, wait_for, Proc};

/// A containerd line the tests know how to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// Debian 12's package, on the PATH.
    V1_6,
    /// Debian trixie's, in `.runtimes/containerd-1.7`.
    V1_7,
    /// Debian unstable's (2.1 or later), in `.runtimes/containerd-2`.
    V2,
}

/// Where `scripts/install-runtimes.sh` unpacks runtimes
/// (`SLAYERFS_RUNTIMES` overrides it).
pub fn runtimes_dir() -> PathBuf {
    std::env::var_os("SLAYERFS_RUNTIMES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.runtimes"))
}

/// Docker Engine's commands (`dockerd`, `docker`), unpacked beside the
/// runtimes; panics with what to run when they are not there.
pub fn docker_bin(name: &str) -> PathBuf {
    let dir = runtimes_dir().join("docker/usr");
    let path = [dir.join("sbin").join(name), dir.join("bin").join(name)]
        .into_iter()
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!(
            "{name} is not under {}: run scripts/install-deps.sh",
            dir.display()
        )
    })
}

/// How the CRI plugin is set up, if at all.
pub struct Cri<'a> {
    /// The registry (host:port, plain HTTP) images are pulled from.
    pub registry: &'a str,
    /// CRI pulls with the client-side unpack that passes the layer
    /// annotations to our Prepares as labels (`disable_snapshot_annotations
    /// = false`); on 2.x the default is the transfer service instead.
    pub local_pull: bool,
    /// The pause image pods start from (the default one, on a registry this
    /// machine cannot reach, otherwise).
    pub sandbox_image: Option<&'a str>,
}

impl Containerd {
    pub const ALL: [Containerd; 3] = [Containerd::V1_6, Containerd::V1_7, Containerd::V2];

    /// The directory of this version's commands (`None`: the PATH's).
    pub fn bin_dir(self) -> Option<PathBuf> {
        let name = match self {
            Containerd::V1_6 => return None,
            Containerd::V1_7 => "containerd-1.7",
            Containerd::V2 => "containerd-2",
        };
        let dir = runtimes_dir().join(name).join("usr/bin");
        assert!(
            dir.join("containerd").exists(),
            "containerd {self:?} is not in {}: run scripts/install-deps.sh",
            dir.display()
        );
        Some(dir)
    }

    /// PATH with this version's commands first: containerd finds its shim
    /// there, and tests their `ctr`.
    pub fn path_env(self) -> OsString {
        let system = std::env::var_os("PATH").unwrap_or_default();
        match self.bin_dir() {
            None => system,
            Some(dir) => {
                let mut all = vec![dir];
                all.extend(std::env::split_paths(&system));
                std::env::join_paths(all).expect("PATH entries")
            }
        }
    }

    pub fn is_2x(self) -> bool {
        self == Containerd::V2
    }

    /// The configuration this version wants: root, state and socket under
    /// `dir`, our snapshotter as the `slayerfs` proxy plugin at `socket`,
    /// the CRI plugin as `cri` says (disabled when `None`), and on 2.x the
    /// transfer service unpacking onto our snapshotter with the remote
    /// snapshot labels exported (the lazy `ctr image pull`).
    pub fn config(self, dir: &Path, socket: &Path, cri: Option<&Cri>) -> String {
        let d = dir.display();
        let s = socket.display();
        let hosts = dir.join("certs.d");
        let mut text;
        if self.is_2x() {
            text = format!(
                r#"version = 3
root = "{d}/root"
state = "{d}/state-containerd"
[grpc]
  address = "{d}/containerd.sock"
[proxy_plugins.slayerfs]
  type = "snapshot"
  address = "{s}"
  [proxy_plugins.slayerfs.exports]
    enable_remote_snapshot_annotations = "true"
[plugins."io.containerd.transfer.v1.local"]
  config_path = "{h}"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "slayerfs"
"#,
                h = hosts.display()
            );
            match cri {
                None => text.push_str(
                    "[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n\
                     [plugins.\"io.containerd.cri.v1.images\"]\n  disable = true\n\
                     [plugins.\"io.containerd.cri.v1.runtime\"]\n  disable = true\n",
                ),
                Some(c) => text.push_str(&format!(
                    r#"[plugins."io.containerd.cri.v1.images"]
  snapshotter = "slayerfs"
  disable_snapshot_annotations = {annotations}
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{h}"
[plugins."io.containerd.cri.v1.runtime"]
  # Pods ask for an OOM score below the tests' own, which a process
  # without CAP_SYS_RESOURCE (a node inside a container) may not set.
  restrict_oom_score_adj = true
"#,
                    annotations = !c.local_pull,
                    h = hosts.display()
                )),
            }
            if let Some(image) = cri.and_then(|c| c.sandbox_image) {
                text.push_str(&format!(
                    "[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{image}\"\n"
                ));
            }
        } else {
            text = format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state-containerd"
[grpc]
  address = "{d}/containerd.sock"
[proxy_plugins.slayerfs]
  type = "snapshot"
  address = "{s}"
"#
            );
            match cri {
                None => {
                    text.push_str("[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n")
                }
                Some(c) => text.push_str(&format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
{sandbox}  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "slayerfs"
    disable_snapshot_annotations = {annotations}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{h}"
"#,
                    annotations = !c.local_pull,
                    h = hosts.display(),
                    sandbox = c
                        .sandbox_image
                        .map_or(String::new(), |i| format!("  sandbox_image = \"{i}\"\n")),
                )),
            }
        }
        text
    }

    /// Starts this containerd with [`Self::config`] (and a `hosts.toml`
    /// saying the registry speaks plain HTTP); returns once its socket is
    /// there.
    pub fn start(self, dir: &Path, socket: &Path, cri: Option<&Cri>) -> Proc {
        if let Some(c) = cri {
            write_hosts(dir, c.registry);
        }
        let config = dir.join("containerd.toml");
        std::fs::write(&config, self.config(dir, socket, cri)).expect("containerd config");
        let binary = self
            .bin_dir()
            .map_or(PathBuf::from("containerd"), |d| d.join("containerd"));
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("PATH", self.path_env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).expect("containerd log"))
            .spawn()
            .expect("starting containerd");
        let proc = Proc(child);
        wait_for(&dir.join("containerd.sock"), "containerd");
        proc
    }

    /// This version's `ctr` against the containerd at `dir`, in `namespace`
    /// (ctr's default when `None`): (success, stdout + stderr).
    pub fn ctr(self, dir: &Path, namespace: Option<&str>, args: &[&str]) -> (bool, String) {
        let binary = self
            .bin_dir()
            .map_or(PathBuf::from("ctr"), |d| d.join("ctr"));
        let mut cmd = Command::new(binary);
        cmd.env("PATH", self.path_env());
        cmd.arg("--address").arg(dir.join("containerd.sock"));
        if let Some(ns) = namespace {
            cmd.arg("--namespace").arg(ns);
        }
        run_text(cmd.args(args))
    }
}

/// `dir/certs.d/REGISTRY/hosts.toml`: the registry at `registry` is plain
/// HTTP (containerd's hosts configuration, read by CRI, the transfer
/// service and `ctr --hosts-dir`).
pub fn write_hosts(dir: &Path, registry: &str) -> PathBuf {
    let hosts = dir.join("certs.d");
    let d = hosts.join(registry);
    std::fs::create_dir_all(&d).expect("hosts directory");
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
        ),
    )
    .expect("hosts.toml");
    hosts
}

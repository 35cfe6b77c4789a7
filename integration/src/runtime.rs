//! The containerd versions the tests run against — the system's (Debian's
//! 1.6) and the ones `scripts/install-runtimes.sh` unpacks into the checkout
//! (1.7, 2.x) — each started with the configuration that version wants for
//! our snapshotter, CRI and lazy pulls, and its own `ctr`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::{run_text, spawn_containerd, Proc};

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

/// The first fenced block of `lang` under `heading` in the README; panics
/// when the README has none (a test then says which section moved).
pub fn readme_block(heading: &str, lang: &str) -> String {
    const README: &str = include_str!("../../README.md");
    let section = README
        .split_once(&format!("\n{heading}\n"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("the README has no section {heading:?}"));
    // Up to the next heading (a TOML comment has one `#` and a space).
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|h| section.find(h))
        .min()
        .unwrap_or(section.len());
    let section = &section[..end];
    let fence = format!("```{lang}\n");
    section
        .split_once(&fence)
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| format!("{block}\n"))
        .unwrap_or_else(|| panic!("no {lang} block under {heading:?} in the README"))
}

/// A TOML text edited by lines, keeping every line of the original.
struct Toml(String);

impl Toml {
    /// Adds `keys` at the top level: after the `version` line, before any
    /// table.
    fn top(&mut self, keys: &[&str]) {
        let at = self
            .0
            .find("\n")
            .filter(|_| self.0.starts_with("version"))
            .map_or(0, |i| i + 1);
        self.0.insert_str(at, &(keys.join("\n") + "\n"));
    }

    /// Adds `keys` to the table `header`: right under its header when the
    /// text has it, else in a new table at the end.
    fn set(&mut self, header: &str, keys: &[&str]) {
        let lines = keys.iter().map(|k| format!("  {k}\n")).collect::<String>();
        let mut at = None;
        let mut offset = 0;
        for line in self.0.split_inclusive('\n') {
            offset += line.len();
            if line.trim() == header {
                at = Some(offset);
                break;
            }
        }
        match at {
            Some(at) => self.0.insert_str(at, &lines),
            None => {
                if !self.0.ends_with('\n') {
                    self.0.push('\n');
                }
                self.0.push_str(&format!("{header}\n{lines}"));
            }
        }
    }
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

    /// The README's section of this version's configuration, whose TOML
    /// block every test starts from: what the README says runs.
    pub fn readme_heading(self) -> &'static str {
        if self.is_2x() {
            "### containerd 2.1 and later (config version 3)"
        } else {
            "### containerd 1.6 and 1.7 (config version 2)"
        }
    }

    /// The configuration the tests run: the README's block for this
    /// version as written (our socket for `/run/slayerfs/snapshotter.sock`)
    /// plus what only a test needs: root, state and socket under `dir`, the
    /// registry's `hosts.toml`, the CRI plugin as `cri` says (disabled
    /// when `None`), pods' OOM scores kept within the tests' own.
    pub fn config(self, dir: &Path, socket: &Path, cri: Option<&Cri>) -> String {
        let d = dir.display();
        let h = dir.join("certs.d");
        let h = h.display();
        let block = readme_block(self.readme_heading(), "toml");
        let mut text = Toml(block.replace(
            "/run/slayerfs/snapshotter.sock",
            &socket.display().to_string(),
        ));
        text.top(&[
            &format!("root = \"{d}/root\""),
            &format!("state = \"{d}/state-containerd\""),
        ]);
        text.set("[grpc]", &[&format!("address = \"{d}/containerd.sock\"")]);
        // Pods ask for an OOM score below the tests' own, which a process
        // without CAP_SYS_RESOURCE (a node inside a container) may not set.
        let oom = "restrict_oom_score_adj = true";
        if self.is_2x() {
            const IMAGES: &str = "[plugins.\"io.containerd.cri.v1.images\"]";
            const RUNTIME: &str = "[plugins.\"io.containerd.cri.v1.runtime\"]";
            text.set(
                "[plugins.\"io.containerd.transfer.v1.local\"]",
                &[&format!("config_path = \"{h}\"")],
            );
            match cri {
                None => {
                    text.set(
                        "[plugins.\"io.containerd.grpc.v1.cri\"]",
                        &["disable = true"],
                    );
                    text.set(IMAGES, &["disable = true"]);
                    text.set(RUNTIME, &["disable = true"]);
                }
                Some(c) => {
                    if c.local_pull {
                        text.set(IMAGES, &["disable_snapshot_annotations = false"]);
                    }
                    text.set(
                        "[plugins.\"io.containerd.cri.v1.images\".registry]",
                        &[&format!("config_path = \"{h}\"")],
                    );
                    text.set(RUNTIME, &[oom]);
                    if let Some(image) = c.sandbox_image {
                        text.set(
                            "[plugins.\"io.containerd.cri.v1.images\".pinned_images]",
                            &[&format!("sandbox = \"{image}\"")],
                        );
                    }
                }
            }
        } else {
            const CRI: &str = "[plugins.\"io.containerd.grpc.v1.cri\"]";
            match cri {
                None => text.set(CRI, &["disable = true"]),
                Some(c) => {
                    assert!(c.local_pull, "CRI on containerd 1.x pulls locally");
                    text.set(CRI, &[oom]);
                    if let Some(image) = c.sandbox_image {
                        text.set(CRI, &[&format!("sandbox_image = \"{image}\"")]);
                    }
                    text.set(
                        "[plugins.\"io.containerd.grpc.v1.cri\".registry]",
                        &[&format!("config_path = \"{h}\"")],
                    );
                }
            }
        }
        text.0
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
        spawn_containerd(&binary, &config, dir, Some(&self.path_env()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every version's config as the tests run it: the README's block, each
    /// of its lines kept, with the tests' additions.
    #[test]
    fn configs_start_from_the_readme() {
        let cri = Cri {
            registry: "127.0.0.1:5000",
            local_pull: true,
            sandbox_image: Some("127.0.0.1:5000/pause:1"),
        };
        for v in Containerd::ALL {
            let block = readme_block(v.readme_heading(), "toml");
            for cri in [None, Some(&cri)] {
                let text = v.config(Path::new("/t"), Path::new("/t/snap.sock"), cri);
                eprintln!("{v:?} {}:\n{text}", cri.is_some());
                let mut lines = text.lines();
                for want in block.lines() {
                    let want = want.replace("/run/slayerfs/snapshotter.sock", "/t/snap.sock");
                    assert!(
                        lines.any(|l| l == want),
                        "{v:?}: the README's line {want:?} is not in order in\n{text}"
                    );
                }
                assert!(text.contains("address = \"/t/containerd.sock\""), "{text}");
            }
        }
    }
}

//! An image published for lazy pulls, real parts only: built with umoci,
//! pushed to a real registry, converted by `slayerfs convert` into a real
//! S3 server; and the `ctr`, CRI and `slayerfs pull` calls that pull and
//! run it.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use slayerfs_integration::bins::bin;
use slayerfs_integration::cri::image_service_client::ImageServiceClient;
use slayerfs_integration::cri::{connect, ImageSpec, PullImageRequest};
pub use slayerfs_integration::daemon::ctr_run as run;
use slayerfs_integration::daemon::{ctr_in, run_text, sh, write_config, Registry};
use slayerfs_integration::s3::S3Server;

pub const BIG_MIB: usize = 200;

/// `ctr` in the CRI plugin's namespace: (success, stdout + stderr).
pub fn ctr(dir: &Path, args: &[&str]) -> (bool, String) {
    ctr_in(dir, K8S, args)
}

/// The namespace of images pulled through CRI.
pub const K8S: Option<&str> = Some("k8s.io");

/// PullImage through containerd's CRI plugin, as kubelet calls it.
pub async fn cri_pull(dir: &Path, image: &str) -> Result<String, String> {
    let channel = connect(&dir.join("containerd.sock"))
        .await
        .map_err(|e| e.to_string())?;
    let mut images = ImageServiceClient::new(channel);
    let r = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(r.into_inner().image_ref)
}

pub fn cri_pull_blocking(dir: &Path, image: &str) -> Result<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cri_pull(dir, image))
}

/// Two layers made with umoci: busybox and a small file; a big file. Tag
/// v2 adds a third layer.
pub fn build_image(dir: &Path) {
    sh(
        &format!(
            r#"
        umoci init --layout img
        umoci new --image img:v1
        umoci unpack --image img:v1 b
        mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/data
        cp /bin/busybox b/rootfs/bin/busybox
        for a in sh cat head wc; do ln -s busybox b/rootfs/bin/$a; done
        echo "a small file" > b/rootfs/etc/small
        umoci repack --image img:v1 b && rm -rf b
        umoci unpack --image img:v1 b
        head -c {BIG_MIB}M /dev/urandom > b/rootfs/data/big
        umoci repack --image img:v1 b && rm -rf b
        umoci unpack --image img:v1 b
        echo "an extra layer" > b/rootfs/etc/extra
        umoci repack --image img:v2 b && rm -rf b
        "#
        ),
        dir,
        &[],
    );
}

/// What the tests pull, all in one registry: the original image
/// (`plain:v1`), the same converted by `slayerfs convert` from the registry
/// into S3 and pushed back (`lazy:v1`, same chain ids), and a
/// never-converted image with one more layer (`plain:v2`).
pub struct Images {
    pub s3: S3Server,
    pub s3_root: std::path::PathBuf,
    pub registry: Registry,
    /// The daemon's (and converter's) configuration file.
    pub config: std::path::PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub index_digests: Vec<String>,
    pub index_bytes: u64,
    pub config_digest: String,
}

pub fn publish_images(dir: &Path) -> Images {
    let s3_root = dir.join("s3");
    let s3 = S3Server::start(&s3_root, &["images"]).unwrap();
    let env = s3.env();
    let registry = Registry::start(&dir.join("registry"));
    build_image(dir);

    let config = write_config(
        dir,
        &format!(
            "[store]\nurl = \"s3://images\"\n[store.s3]\nendpoint = \"{}\"\nmax_attempts = 2\nconnect_timeout_ms = 1000\noperation_timeout_ms = 5000\n",
            s3.endpoint()
        ),
    );
    let mut conv_env = env.clone();
    conv_env.push(("SLAYERFS_CONFIG", config.display().to_string()));
    sh(
        &format!(
            "skopeo copy -q --dest-tls-verify=false oci:img:v1 docker://{r}/plain:v1\n\
             skopeo copy -q --dest-tls-verify=false oci:img:v2 docker://{r}/plain:v2\n\
             {} convert docker://{r}/plain:v1 docker://{r}/lazy:v1 --quiet\n",
            bin("slayerfs").display(),
            r = registry.addr
        ),
        dir,
        &conv_env,
    );
    let conv_manifest = sh(
        &format!(
            "skopeo inspect --raw --tls-verify=false docker://{}/lazy:v1",
            registry.addr
        ),
        dir,
        &[],
    );
    let manifest: serde_json::Value = serde_json::from_str(&conv_manifest).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    Images {
        index_digests: layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect(),
        index_bytes: layers.iter().map(|l| l["size"].as_u64().unwrap()).sum(),
        config_digest: manifest["config"]["digest"].as_str().unwrap().to_string(),
        s3,
        s3_root,
        registry,
        config,
        env,
    }
}

impl Images {
    /// The blobs the registry served since `mark` that a lazy pull should
    /// not have asked for: anything but the converted image's config and
    /// indexes (the original layers above all).
    pub fn blobs_beyond_indexes_since(&self, mark: usize) -> Vec<String> {
        self.registry
            .blobs_served_since(mark)
            .into_iter()
            .filter(|b| *b != self.config_digest && !self.index_digests.contains(b))
            .collect()
    }
}

/// `ctr` in the default namespace.
pub fn ctr_default(dir: &Path, args: &[&str]) -> (bool, String) {
    ctr_in(dir, None, args)
}

pub fn slayerfs_pull(dir: &Path, image: &str) -> (bool, String) {
    run_text(
        Command::new(bin("slayerfs"))
            .arg("pull")
            .arg(image)
            .arg("--address")
            .arg(dir.join("containerd.sock")),
    )
}

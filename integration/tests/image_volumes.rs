//! Kubernetes image volumes (KEP-4639) on our snapshotter, driven through
//! the CRI API as kubelet drives it, real parts only: containerd 2.x's CRI
//! plugin, a pod sandbox on the host network, a container with an OCI
//! image mounted read-only at `/model` — a converted image, think of a
//! model's weights — pulled lazily and read in the container: only the
//! blocks read are fetched from S3. Removing the pod unmounts it all.

mod lazy_images;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use lazy_images::{publish_images, BIG_MIB};
use slayerfs_integration::cri::image_service_client::ImageServiceClient;
use slayerfs_integration::cri::runtime_service_client::RuntimeServiceClient;
use slayerfs_integration::cri::*;
use slayerfs_integration::daemon::{sh, start_snapshotter_with_env, SnapshotterPaths};
use slayerfs_integration::runtime::{Containerd, Cri};
use tonic::transport::Channel;

/// A small image to run pods and containers from: busybox, its entrypoint
/// waiting until it is stopped (the pod's pause container).
fn build_pause(dir: &Path, registry: &str) {
    sh(
        &format!(
            r#"
        umoci init --layout pause
        umoci new --image pause:v1
        umoci unpack --image pause:v1 b
        mkdir -p b/rootfs/bin
        cp /bin/busybox b/rootfs/bin/busybox
        for a in sh sleep cat head wc dd touch; do ln -s busybox b/rootfs/bin/$a; done
        umoci repack --image pause:v1 b && rm -rf b
        umoci config --image pause:v1 --config.entrypoint /bin/sh \
          --config.cmd -c --config.cmd "trap 'exit 0' TERM; while :; do sleep 1; done"
        skopeo copy -q --dest-tls-verify=false oci:pause:v1 docker://{registry}/pause:v1
        "#
        ),
        dir,
        &[],
    );
}

struct Clients {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

async fn pull(c: &mut Clients, image: &str) -> Result<String, tonic::Status> {
    let r = c
        .images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
            auth: None,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

/// ExecSync of `script` with `sh -c`: exit code, stdout, stderr.
async fn exec(c: &mut Clients, id: &str, script: &str) -> (i32, String, String) {
    let r = c
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.to_string(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script}: {e}"))
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

#[test]
fn an_image_volume_is_mounted_lazily_and_reads_only_what_it_reads() {
    let v = Containerd::V2;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = publish_images(dir);
    let reg = images.registry.addr.clone();
    build_pause(dir, &reg);
    let pause = format!("{reg}/pause:v1");
    let paths = SnapshotterPaths::in_dir(dir);
    let _snapshotter = start_snapshotter_with_env(&paths, &images.config, &images.env);
    let cri = Cri {
        registry: &reg,
        local_pull: false,
        sandbox_image: Some(&pause),
    };
    let containerd = v.start(dir, &paths.socket, Some(&cri));
    let log = || {
        format!(
            "snapshotter log:\n{}\ncontainerd log:\n{}",
            paths.log_text(),
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        )
    };
    let s3_bytes = || images.s3.counters.get_bytes.load(Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = slayerfs_integration::cri::connect(&dir.join("containerd.sock"))
            .await
            .expect("CRI connection");
        let mut c = Clients {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        };
        // The CRI plugin may still be starting.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let pause_ref = loop {
            match pull(&mut c, &pause).await {
                Ok(r) => break r,
                Err(e)
                    if e.code() == tonic::Code::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await
                }
                Err(e) => panic!("PullImage {pause}: {e}\n{}", log()),
            }
        };

        // The volume's image, pulled as kubelet pulls it: lazily.
        let model = format!("{reg}/lazy:v1");
        let lazy_before = paths.log_text().matches("layer pulled lazily").count();
        let before = s3_bytes();
        let model_ref = pull(&mut c, &model)
            .await
            .unwrap_or_else(|e| panic!("PullImage {model}: {e}\n{}", log()));
        let lazy = paths.log_text().matches("layer pulled lazily").count() - lazy_before;
        assert_eq!(lazy, 2, "{}", log());
        assert!(s3_bytes() - before <= images.index_bytes, "{}", log());

        let host_network = || NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
        };
        let logs = dir.join("pod-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "model-server".into(),
                uid: "3a0f6c2e-model".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // On the host network the pod has the host's UTS namespace too.
            hostname: String::new(),
            log_directory: logs.display().to_string(),
            labels: HashMap::new(),
            annotations: HashMap::new(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                }),
            }),
        };
        let pod = c
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", log()))
            .into_inner()
            .pod_sandbox_id;
        let container = c
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "server".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: pause_ref.clone(),
                        annotations: HashMap::new(),
                    }),
                    command: vec!["/bin/sleep".into(), "3600".into()],
                    args: vec![],
                    mounts: vec![Mount {
                        container_path: "/model".into(),
                        host_path: String::new(),
                        readonly: true,
                        image: Some(ImageSpec {
                            image: model_ref.clone(),
                            annotations: HashMap::new(),
                        }),
                        image_sub_path: String::new(),
                    }],
                    labels: HashMap::new(),
                    annotations: HashMap::new(),
                    log_path: "server.log".into(),
                    linux: Some(LinuxContainerConfig {
                        security_context: Some(LinuxContainerSecurityContext {
                            namespace_options: Some(host_network()),
                        }),
                    }),
                }),
                sandbox_config: Some(sandbox),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", log()))
            .into_inner()
            .container_id;
        c.runtime
            .start_container(StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", log()));

        // Reads in the volume: a small file, 1 MiB of the large one and a
        // 4 KiB read far into it; a few blocks' worth fetched, not the file.
        let before = s3_bytes();
        let (code, out, err) = exec(
            &mut c,
            &container,
            "cat /model/etc/small; head -c 1048576 /model/data/big | wc -c; \
             dd if=/model/data/big bs=4096 skip=40000 count=1 2>/dev/null | wc -c",
        )
        .await;
        assert_eq!(code, 0, "{out}{err}\n{}", log());
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines, ["a small file", "1048576", "4096"], "{err}");
        let fetched = s3_bytes() - before;
        let big = (BIG_MIB as u64) << 20;
        eprintln!("image volume: {fetched} bytes from S3 for 1 MiB + 4 KiB of a {big}-byte file");
        assert!(
            fetched < 24 << 20,
            "reading 1 MiB + 4 KiB fetched {fetched} bytes\n{}",
            log()
        );
        // Read-only, as the volume is declared.
        let (code, _, err) = exec(&mut c, &container, "touch /model/etc/new").await;
        assert_ne!(code, 0, "wrote into a read-only image volume");
        assert!(err.contains("Read-only"), "{err}");

        // Removing the pod leaves no mount of ours.
        c.runtime
            .stop_container(StopContainerRequest {
                container_id: container.clone(),
                timeout: 2,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", log()));
        c.runtime
            .remove_container(RemoveContainerRequest {
                container_id: container,
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", log()));
        c.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", log()));
        c.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", log()));
        for image in [&model_ref, &pause_ref] {
            c.images
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        annotations: HashMap::new(),
                    }),
                })
                .await
                .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}\n{}", log()));
        }
    });
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = paths.root.display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}\n{}", log());
    assert!(!paths.log_text().contains("panicked"), "{}", log());
    drop(containerd);
}

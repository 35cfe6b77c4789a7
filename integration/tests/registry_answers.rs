//! What registries answer besides the image. A real `docker-registry` with
//! htpasswd basic auth: without credentials `slayerfs convert` fails with
//! the refusal named and nothing written; with `--creds`, the
//! `[registry.auths]` config or docker's `config.json` it works. A server
//! error (500), which a real registry does not produce on demand, comes from
//! a stand-in that answers nothing else: a clear error, nothing written.

use std::process::Command;

use slayerfs_integration::bins::bin;
use slayerfs_integration::daemon::{local_store, run_text, sh, write_config, Registry};

#[test]
fn credentials_come_from_flags_config_or_docker_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start_with_login(&dir.join("registry"), Some(("alice", "s3cret")));
    let reg = &registry.addr;
    sh(
        &format!(
            r#"
        umoci init --layout img
        umoci new --image img:v1
        umoci unpack --image img:v1 b
        mkdir -p b/rootfs/etc && echo private > b/rootfs/etc/secret
        umoci repack --image img:v1 b && rm -rf b
        skopeo copy -q --dest-tls-verify=false --dest-creds alice:s3cret oci:img:v1 docker://{reg}/private:v1
        "#
        ),
        dir,
        &[],
    );
    let base = local_store(&dir.join("store"));
    let config = write_config(dir, &base);
    let convert = |extra: &[&str], out: &str, env: &[(&str, String)]| {
        run_text(
            Command::new(bin("slayerfs"))
                .args(["convert", "-q"])
                .args(extra)
                .arg(format!("docker://{reg}/private:v1"))
                .arg(format!("oci:{out}"))
                .env("SLAYERFS_CONFIG", &config)
                .env("DOCKER_CONFIG", dir.join("no-docker-config"))
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir),
        )
    };

    // No credentials, or wrong ones: the registry's refusal, nothing written.
    for (extra, out) in [(vec![], "none"), (vec!["--creds", "alice:wrong"], "wrong")] {
        let (ok, text) = convert(&extra, out, &[]);
        assert!(!ok, "{text}");
        assert!(
            text.contains("401") || text.to_lowercase().contains("authorized"),
            "{text}"
        );
        assert!(!dir.join(out).exists());
    }
    // --creds.
    let (ok, text) = convert(&["--creds", "alice:s3cret"], "by-flag", &[]);
    assert!(ok, "{text}");
    // docker's config.json (DOCKER_CONFIG names its directory).
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        // "alice:s3cret" in base64.
        format!(r#"{{"auths": {{"{reg}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();
    let (ok, text) = convert(
        &[],
        "by-docker-config",
        &[("DOCKER_CONFIG", docker.display().to_string())],
    );
    assert!(ok, "{text}");
    // [registry.auths] in our config, and a push back with them.
    write_config(
        dir,
        &format!("{base}[registry.auths.\"{reg}\"]\nusername = \"alice\"\npassword = \"s3cret\"\n"),
    );
    let (ok, text) = run_text(
        Command::new(bin("slayerfs"))
            .args(["convert", "-q"])
            .arg(format!("docker://{reg}/private:v1"))
            .arg(format!("docker://{reg}/private:slayerfs"))
            .env("SLAYERFS_CONFIG", &config)
            .env("DOCKER_CONFIG", dir.join("no-docker-config"))
            .current_dir(dir),
    );
    assert!(ok, "{text}");
    let tree = sh(
        &format!(
            "skopeo copy -q --src-tls-verify=false --src-creds alice:s3cret docker://{reg}/private:slayerfs oci:back:v1\n\
             SLAYERFS_CONFIG={} {} inspect --tree oci:back:v1",
            config.display(),
            bin("slayerfs").display()
        ),
        dir,
    &[],
    );
    assert!(tree.contains("etc/secret"), "{tree}");
}

/// Answers every HTTP request with 500 until the test ends.
fn failing_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = r#"{"errors":[{"code":"UNKNOWN","message":"storage is broken"}]}"#;
            let _ = write!(
                s,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_registry_that_fails_is_a_clear_error_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = failing_server();
    let config = write_config(dir, &local_store(&dir.join("store")));
    let run = |args: &[String]| {
        run_text(
            Command::new(bin("slayerfs"))
                .args(args)
                .env("SLAYERFS_CONFIG", &config)
                .current_dir(dir),
        )
    };
    let (ok, text) = run(&[
        "convert".into(),
        "-q".into(),
        format!("docker://{reg}/img:v1"),
        "oci:out".into(),
    ]);
    assert!(
        !ok && text.contains(&reg) && text.contains("storage is broken"),
        "{text}"
    );
    assert!(!dir.join("out").exists());
    // The pull fails at the registry, before containerd is asked anything.
    let (ok, text) = run(&[
        "pull".into(),
        format!("{reg}/img:v1"),
        "--address".into(),
        dir.join("no-containerd.sock").display().to_string(),
    ]);
    assert!(!ok && text.contains("storage is broken"), "{text}");
    assert!(!text.contains("containerd at"), "{text}");
}

//! Running containers on real containerd and runc live through restarts of
//! our daemon. Two containers loop over their rootfs — one of an image
//! converted into the S3 test server and pulled lazily (its blocks come
//! from S3 as they are read), one of an image never converted (unpacked
//! through our mounts) — reading lower files (one through a descriptor
//! kept open), appending to a file and reading it back, and making,
//! renaming and removing directories; every failure is logged outside the
//! rootfs. The daemon is killed with SIGKILL, stopped with SIGTERM and
//! replaced by a copy of its binary at another path; after each, both
//! containers are RUNNING, `ctr task exec` works, and at the end nothing
//! failed and every record written is there. Then a read of blocks never
//! fetched is in flight, with S3 down, when the daemon is killed: it
//! completes, with the right bytes, once the next daemon runs and S3 is
//! back. containerd keeps working with the daemon afterwards.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use slayerfs_integration::bins::bin;
use slayerfs_integration::daemon::{ctr_in, run_text, sh, start_containerd, Registry};
use slayerfs_integration::s3::S3Server;
use slayerfs_integration::snapshots_api::Daemon;

fn ctr(dir: &Path, args: &[&str]) -> (bool, String) {
    ctr_in(dir, None, args)
}

fn ok(dir: &Path, daemon: &Daemon, args: &[&str]) -> String {
    let (success, text) = ctr(dir, args);
    assert!(
        success,
        "ctr {args:?}: {text}\nsnapshotter log:\n{}",
        daemon.paths.log_text()
    );
    text
}

/// busybox, a small file, a 40 MiB file the loop reads, and an 8 MiB file
/// only the in-flight read touches (its md5 kept outside).
fn build_image(dir: &Path) {
    sh(
        r#"
        umoci init --layout img
        umoci new --image img:v1
        umoci unpack --image img:v1 b
        mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/data b/rootfs/tmp
        cp /bin/busybox b/rootfs/bin/busybox
        for a in sh cat dd wc grep tail mkdir mv rmdir md5sum echo sleep; do ln -s busybox b/rootfs/bin/$a; done
        echo "a small file" > b/rootfs/etc/small
        head -c 40M /dev/urandom > b/rootfs/data/big
        head -c 8M /dev/urandom > b/rootfs/data/untouched
        md5sum < b/rootfs/data/untouched | cut -d' ' -f1 > untouched.md5
        umoci repack --image img:v1 b && rm -rf b
        "#,
        dir,
        &[],
    );
}

/// The loop each container runs, logging failures under /out.
const LOOP: &str = r#"
mkdir -p /scratch
exec 3</data/big
i=0
while [ ! -e /out/stop ]; do
  i=$((i+1))
  cat /etc/small > /dev/null || echo "cat small $i" >> /out/fail
  n=$(dd bs=4096 count=1 <&3 2>/dev/null | wc -c) || echo "read fd $i" >> /out/fail
  [ "$n" = 4096 ] || exec 3</data/big
  n=$(dd if=/data/big bs=4096 count=1 skip=$(( (i * 7919) % 10240 )) 2>/dev/null | wc -c)
  [ "$n" = 4096 ] || echo "random read $i: $n bytes" >> /out/fail
  echo "record $i" >> /scratch/log || echo "append $i" >> /out/fail
  [ "$(tail -n 1 /scratch/log)" = "record $i" ] || echo "read back $i" >> /out/fail
  { mkdir /scratch/d$i && mv /scratch/d$i /scratch/e$i && rmdir /scratch/e$i; } || echo "dirs $i" >> /out/fail
  echo $i > /out/count
done
"#;

/// Kills and removes the test's containers when dropped, so that a failing
/// test leaves no shim or task behind (dropped before containerd).
struct Containers<'a> {
    dir: &'a Path,
    names: Vec<String>,
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ctr(self.dir, &["task", "kill", "-s", "SIGKILL", name]);
            let _ = ctr(self.dir, &["task", "rm", "-f", name]);
            let _ = ctr(self.dir, &["container", "rm", name]);
        }
    }
}

fn task_status(dir: &Path, name: &str) -> String {
    let (_, out) = ctr(dir, &["task", "ls"]);
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("missing")
        .to_string()
}

fn count(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn running_containers_live_through_a_kill_a_restart_and_an_upgrade() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s3_root = dir.join("s3");
    let mut s3 = S3Server::start(&s3_root, &["images"]).unwrap();
    let s3_addr = s3.addr;
    let env = s3.env();
    let registry = Registry::start(&dir.join("registry"));
    build_image(dir);
    let store = format!(
        "[store]\nurl = \"s3://images\"\n[store.s3]\nendpoint = \"{}\"\nmax_attempts = 10\ninitial_backoff_ms = 200\nconnect_timeout_ms = 500\noperation_timeout_ms = 5000\n",
        s3.endpoint()
    );
    let mut daemon = Daemon::start_restartable(dir, &store, &env);
    let mut conv_env = env.clone();
    conv_env.push((
        "SLAYERFS_CONFIG",
        dir.join("slayerfs.toml").display().to_string(),
    ));
    let r = &registry.addr;
    sh(
        &format!(
            "skopeo copy -q --dest-tls-verify=false oci:img:v1 docker://{r}/plain:v1\n\
             {} convert docker://{r}/plain:v1 docker://{r}/lazy:v1 --quiet\n",
            bin("slayerfs").display()
        ),
        dir,
        &conv_env,
    );
    let _containerd = start_containerd(dir, &daemon.paths.socket, "");
    for image in ["lazy:v1", "plain:v1"] {
        let (pulled, out) = run_text(
            Command::new(bin("slayerfs"))
                .arg("pull")
                .arg(format!("{r}/{image}"))
                .arg("--address")
                .arg(dir.join("containerd.sock")),
        );
        assert!(pulled, "{out}\n{}", daemon.paths.log_text());
    }

    // runc keeps its state per namespace in one place for every
    // containerd on the machine: names of this run only.
    let names: Vec<String> = ["lazy", "plain"]
        .iter()
        .map(|n| format!("{n}-{}", std::process::id()))
        .collect();
    let containers = [
        (names[0].as_str(), "lazy:v1"),
        (names[1].as_str(), "plain:v1"),
    ];
    let _cleanup = Containers {
        dir,
        names: containers.iter().map(|(n, _)| n.to_string()).collect(),
    };
    for (name, image) in containers {
        let out = dir.join(format!("out-{name}"));
        std::fs::create_dir_all(&out).unwrap();
        let mount = format!("type=bind,src={},dst=/out,options=rbind:rw", out.display());
        ok(
            dir,
            &daemon,
            &[
                "run",
                "-d",
                "--snapshotter",
                "slayerfs",
                "--mount",
                &mount,
                &format!("{r}/{image}"),
                name,
                "sh",
                "-c",
                LOOP,
            ],
        );
        wait_until("the loop to start", Duration::from_secs(30), || {
            count(&out) > 3
        });
    }

    let copy = dir.join("upgrade/slayerfs-snapshotter");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(bin("slayerfs-snapshotter"), &copy).unwrap();
    let restarts = [
        ("SIGKILL", libc::SIGKILL, bin("slayerfs-snapshotter")),
        ("SIGTERM", libc::SIGTERM, bin("slayerfs-snapshotter")),
        ("upgrade", libc::SIGTERM, copy.clone()),
    ];
    for (n, (what, signal, binary)) in restarts.iter().enumerate() {
        let before: Vec<u64> = containers
            .iter()
            .map(|(c, _)| count(&dir.join(format!("out-{c}"))))
            .collect();
        daemon.restart(*signal, binary);
        for (i, (name, _)) in containers.iter().enumerate() {
            let out = dir.join(format!("out-{name}"));
            wait_until(
                &format!("{name} to go on after the {what}"),
                Duration::from_secs(30),
                || count(&out) > before[i] + 3,
            );
            assert_eq!(task_status(dir, name), "RUNNING", "{name} after the {what}");
            let exec_id = format!("check{n}");
            let small = ok(
                dir,
                &daemon,
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    name,
                    "cat",
                    "/etc/small",
                ],
            );
            assert_eq!(small.trim(), "a small file", "{name} after the {what}");
        }
    }

    // Every record written before now reads back, nothing failed.
    for (name, _) in containers {
        let out = dir.join(format!("out-{name}"));
        let written = count(&out);
        let log = ok(
            dir,
            &daemon,
            &[
                "task",
                "exec",
                "--exec-id",
                "log",
                name,
                "cat",
                "/scratch/log",
            ],
        );
        let want: String = (1..=written).map(|i| format!("record {i}\n")).collect();
        assert!(
            log.starts_with(&want),
            "{name}: records lost ({} bytes, {} expected)",
            log.len(),
            want.len()
        );
        let failures = std::fs::read_to_string(out.join("fail")).unwrap_or_default();
        assert_eq!(
            failures,
            "",
            "{name} saw failures\n{}",
            daemon.paths.log_text()
        );
    }

    // A read of blocks never fetched, in flight while S3 is down, when the
    // daemon is killed: answered once the next daemon runs and S3 is back.
    drop(s3);
    let lazy = containers[0].0;
    let out = dir.join(format!("out-{lazy}"));
    ok(
        dir,
        &daemon,
        &[
            "task",
            "exec",
            "-d",
            "--exec-id",
            "inflight",
            lazy,
            "sh",
            "-c",
            "md5sum < /data/untouched > /out/md5.tmp && mv /out/md5.tmp /out/md5",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(!out.join("md5").exists(), "the read did not wait for S3");
    daemon.restart(libc::SIGKILL, &bin("slayerfs-snapshotter"));
    std::thread::sleep(Duration::from_millis(500));
    s3 = S3Server::start_at(&s3_root, &["images"], s3_addr).unwrap();
    wait_until(
        "the in-flight read to complete",
        Duration::from_secs(60),
        || out.join("md5").exists(),
    );
    let want = std::fs::read_to_string(dir.join("untouched.md5")).unwrap();
    let got = std::fs::read_to_string(out.join("md5")).unwrap();
    assert_eq!(
        got.split_whitespace().next(),
        Some(want.trim()),
        "the in-flight read's bytes"
    );
    assert!(s3.counters.gets.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // Stop the loops; containerd still works with the daemon: a new
    // container runs, containers and images go.
    for (name, _) in containers {
        std::fs::write(dir.join(format!("out-{name}")).join("stop"), b"").unwrap();
    }
    for (name, _) in containers {
        wait_until(&format!("{name} to stop"), Duration::from_secs(30), || {
            task_status(dir, name) == "STOPPED"
        });
        let failures =
            std::fs::read_to_string(dir.join(format!("out-{name}/fail"))).unwrap_or_default();
        assert_eq!(
            failures,
            "",
            "{name} saw failures\n{}",
            daemon.paths.log_text()
        );
        ok(dir, &daemon, &["task", "rm", name]);
        ok(dir, &daemon, &["container", "rm", name]);
    }
    let again = ok(
        dir,
        &daemon,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "slayerfs",
            &format!("{r}/lazy:v1"),
            &format!("after-{}", std::process::id()),
            "cat",
            "/etc/small",
        ],
    );
    assert_eq!(again.trim(), "a small file");
    for image in ["lazy:v1", "plain:v1"] {
        ok(
            dir,
            &daemon,
            &["images", "rm", "--sync", &format!("{r}/{image}")],
        );
    }
    let log = daemon.paths.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.matches("taking over the FUSE connection").count() >= 8,
        "{log}"
    );
}

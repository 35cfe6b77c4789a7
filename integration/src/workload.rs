//! The stand-in container of the tests: `slayerfs-fs-workload run` working
//! in a snapshot's mount until told to stop, and what it must find after.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bins::bin;
use crate::snapshots_api::{commit, prepare, Client, Daemon};

/// The stand-in container, working in `dir` until `stop` appears.
pub struct Workload {
    child: Child,
    stop: PathBuf,
    output: Option<std::thread::JoinHandle<String>>,
}

impl Workload {
    /// With `storm` threads changing names as fast as they can.
    pub fn start(dir: &str, lower: &str, stop: &Path, storm: usize) -> Workload {
        let mut child = Command::new(bin("slayerfs-fs-workload"))
            .args(["run", dir, lower])
            .arg(stop)
            .arg(storm.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first, "ready\n", "the workload did not start");
        let output = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            rest
        });
        Workload {
            child,
            stop: stop.to_path_buf(),
            output: Some(output),
        }
    }

    /// Stops it: its output, and the number of journal records it wrote.
    /// A failure shows `daemon`'s log too.
    pub fn finish(mut self, daemon: &Daemon) -> (String, u64) {
        std::fs::write(&self.stop, b"").unwrap();
        // An operation that never returns is a failure too.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the workload is stuck in an operation\nsnapshotter log:\n{}",
                daemon.paths.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self.output.take().unwrap().join().unwrap();
        assert!(
            status.success(),
            "the workload failed:\n{out}\nsnapshotter log:\n{}",
            daemon.paths.log_text()
        );
        let records = out
            .lines()
            .find_map(|l| l.strip_prefix("done "))
            .and_then(|l| l.split(' ').find_map(|w| w.strip_prefix("records=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no summary line:\n{out}"));
        (out, records)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record the workload was told it wrote is in its journal.
pub fn assert_journal(mp: &str, records: u64) {
    let journal = std::fs::read_to_string(format!("{mp}/journal")).unwrap();
    let want: String = (0..records).map(|i| format!("record {i:08}\n")).collect();
    assert!(
        journal.len() >= want.len() && journal[..want.len()] == want,
        "the journal lost acknowledged records: {} bytes, {} expected",
        journal.len(),
        want.len()
    );
}

/// Runs `slayerfs-fs-workload ARGS…` to its end (`fill`, `check`, …):
/// whether it succeeded.
pub fn run_workload(args: &[&str]) -> bool {
    Command::new(bin("slayerfs-fs-workload"))
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Commits `name`, an image of one `lower` file of `bytes` of the workload's
/// pattern, for stand-in containers to stand on.
pub async fn commit_lower_image(c: &mut Client, name: &str, bytes: u64) {
    let work = format!("{name}-work");
    let mp = prepare(c, &work, "").await.expect("preparing the image");
    let lower = format!("{mp}/lower");
    let filled =
        tokio::task::spawn_blocking(move || run_workload(&["fill", &lower, &bytes.to_string()]));
    assert!(filled.await.expect("the fill task"), "filling the image");
    commit(c, name, &work).await.expect("committing the image");
}

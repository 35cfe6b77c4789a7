//! A full state disk (the most common node failure: `/var/lib` out of
//! space): with the daemon's root on a small tmpfs filled from outside,
//! requests that need space fail with an error that says so, the daemon
//! and everything committed stay, and once space comes back the same
//! requests succeed without a restart.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use containerd_snapshots::tonic::Code;
use slayerfs_integration::snapshots_api::{commit, prepare, remove, state, Daemon};
use slayerfs_integration::tree::{run, Unmount};

/// Fills the filesystem of `path` with a file there; returns its path.
fn fill(path: &Path) -> std::path::PathBuf {
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // What the kernel keeps in reserve for metadata goes too.
    let _ = f.write_all(&[0u8; 4096]);
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_fails_requests_clearly_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small");
    std::fs::create_dir_all(&dir).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
        .arg(&dir));
    let _small = Unmount(dir.clone());
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client().await;

    let a = prepare(&mut c, "a", "").await.unwrap();
    std::fs::write(Path::new(&a).join("kept"), vec![7u8; 3 << 20]).unwrap();
    commit(&mut c, "c1", "a").await.unwrap();
    let b = prepare(&mut c, "b", "c1").await.unwrap();
    std::fs::write(Path::new(&b).join("written"), b"before the disk filled").unwrap();
    let before = state(&mut c).await;

    let filler = fill(&dir);
    // Requests that need space fail, saying why.
    let p = prepare(&mut c, "x", "c1").await;
    let w = std::fs::write(Path::new(&b).join("more"), vec![1u8; 4 << 20]);
    let cm = commit(&mut c, "c2", "b").await;
    let log = daemon.paths.log_text();
    eprintln!(
        "full disk: prepare {:?}; write {:?}; commit {:?}",
        p.as_ref().map(|_| ()).map_err(|s| s.message().to_string()),
        w.as_ref().map_err(|e| e.to_string()),
        cm.as_ref().map_err(|s| s.message().to_string())
    );
    if let Err(s) = &p {
        assert!(
            s.message().contains("No space left on device"),
            "Prepare on a full disk: {s:?}"
        );
    }
    assert!(w.is_err(), "a 4 MiB write into a full disk succeeded");
    if let Err(s) = &cm {
        assert!(
            s.message().to_lowercase().contains("space"),
            "Commit on a full disk: {s:?}"
        );
        assert_ne!(s.code(), Code::Ok);
    }
    // Nothing committed is lost, reads go on.
    assert_eq!(
        std::fs::read(Path::new(&b).join("kept")).unwrap(),
        vec![7u8; 3 << 20]
    );
    assert_eq!(
        std::fs::read(Path::new(&b).join("written")).unwrap(),
        b"before the disk filled"
    );
    let now = state(&mut c).await;
    for snap in &before {
        let still = now.iter().find(|s| s.0 == snap.0);
        assert!(
            still.is_some() || (snap.0 == "b" && cm.is_ok()),
            "{} lost on a full disk",
            snap.0
        );
    }

    // Space comes back: the same requests work, no restart.
    std::fs::remove_file(&filler).unwrap();
    if p.is_ok() {
        remove(&mut c, "x").await.unwrap();
    }
    let x = prepare(&mut c, "x", "c1")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{log}\n{}", daemon.paths.log_text()));
    std::fs::write(Path::new(&x).join("after"), b"space again").unwrap();
    commit(&mut c, "c3", "x")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.paths.log_text()));
    let v = prepare(&mut c, "check", "c3").await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&v).join("after")).unwrap(),
        b"space again"
    );
    assert_eq!(
        std::fs::read(Path::new(&v).join("kept")).unwrap(),
        vec![7u8; 3 << 20]
    );
    assert!(!daemon.paths.log_text().contains("panicked"));
}

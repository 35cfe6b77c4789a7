//! The real holder binary, started by a client: it keeps descriptors by
//! name across clients, hands back the same open files, forgets one whose
//! other end is gone, answers one holder per socket, and exits when asked.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use slayerfs_fdstore::{FdName, HolderClient};

fn holder() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slayerfs-fdholder"))
}

/// Asks the holder at a socket to quit when dropped (a failing test leaves
/// no process behind).
struct QuitOnDrop(PathBuf);

impl Drop for QuitOnDrop {
    fn drop(&mut self) {
        if let Ok(c) = HolderClient::connect_or_spawn(self.0.clone(), PathBuf::from("/nonexistent"))
        {
            let _ = c.quit();
        }
    }
}

fn names(list: &[(FdName, OwnedFd)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn descriptors_outlive_their_clients_and_dead_ones_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fdholder.sock");
    let a = HolderClient::connect_or_spawn(socket.clone(), holder()).unwrap();
    let _quit = QuitOnDrop(socket.clone());
    let (read_end, mut write_end) = std::io::pipe().unwrap();
    let kept = FdName::new("kept").unwrap();
    a.put(&kept, read_end.as_fd()).unwrap();
    drop(read_end);
    let (doomed_read, doomed_write) = std::io::pipe().unwrap();
    let doomed = FdName::new("doomed").unwrap();
    a.put(&doomed, doomed_read.as_fd()).unwrap();
    drop(doomed_read);
    drop(a);

    // Another client (a restarted daemon) finds the same holder and the
    // same open files.
    let b = HolderClient::connect_or_spawn(socket.clone(), PathBuf::from("/nonexistent")).unwrap();
    let list = b.list().unwrap();
    assert_eq!(names(&list), vec!["doomed", "kept"]);
    write_end.write_all(b"through the holder").unwrap();
    let mut got = [0u8; 18];
    std::fs::File::from(list.into_iter().find(|(n, _)| n == &kept).unwrap().1)
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(&got, b"through the holder");

    // A descriptor whose other end is gone is let go of on the next sweep.
    drop(doomed_write);
    let deadline = Instant::now() + Duration::from_secs(15);
    while names(&b.list().unwrap()).contains(&"doomed") {
        assert!(
            Instant::now() < deadline,
            "the dead descriptor is still held"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(names(&b.list().unwrap()), vec!["kept"], "a live one stays");
    b.remove(&kept).unwrap();
    drop(write_end);
    assert!(b.list().unwrap().is_empty());
    assert!(b.remove(&kept).is_err(), "removing twice is an error");

    // Asked to quit, it exits and takes its socket with it.
    b.quit().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(Instant::now() < deadline, "the holder did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

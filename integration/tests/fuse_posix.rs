//! POSIX behaviour of a writable `slayerfs mount` beyond what the overlayfs
//! comparison covers: permissions for a non-root uid, link counts, times,
//! files unlinked while open, large directories; copy-on-write of a large
//! lower file without copying it; a full upper disk; blocks missing from
//! the store; a busy mount point; and SIGTERM unmounting cleanly.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_ok, convert, slayerfs, text};
use sha2::{Digest, Sha256};
use slayerfs_integration::fixtures::{noise, write_image, Compression, FEntry, FKind, FLayer};
use slayerfs_integration::mount::{test_config, wait_gone, SlayerMount};

const MIB: usize = 1 << 20;

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

struct Image {
    tmp: tempfile::TempDir,
    image: String,
    store: PathBuf,
}

impl Image {
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn mount(&self, name: &str, rw: bool) -> SlayerMount {
        let upper = self.path(&format!("{name}-upper"));
        let mut args = Vec::new();
        if rw {
            args = vec!["--rw", "--upper", upper.to_str().unwrap()];
        }
        SlayerMount::start(
            &self.image,
            &self.path(name),
            self.store.to_str().unwrap(),
            &self.path("state"),
            &args,
        )
        .unwrap()
    }
}

/// A converted image of `layers` in a local store.
fn image(layers: &[FLayer]) -> Image {
    let tmp = tempfile::tempdir().unwrap();
    write_image(&tmp.path().join("src"), "v1", layers).unwrap();
    let store = tmp.path().join("store");
    let image = oci(&tmp.path().join("conv"), "v1");
    assert_ok(&convert(
        &oci(&tmp.path().join("src"), "v1"),
        &image,
        store.to_str().unwrap(),
    ));
    Image { tmp, image, store }
}

fn base_layer() -> FLayer {
    FLayer {
        entries: vec![
            FEntry::new("etc", FKind::Dir),
            FEntry::new("etc/shadow", FKind::File(b"secret".to_vec())).mode(0o600),
            FEntry::new("etc/motd", FKind::File(b"hello".to_vec())).mode(0o644),
            FEntry::new("home", FKind::Dir).mode(0o755),
            FEntry::new("home/user", FKind::Dir)
                .owner(1000, 1000)
                .mode(0o700),
            FEntry::new("tmp", FKind::Dir).mode(0o1777),
            FEntry::new("lib", FKind::Dir),
            FEntry::new("lib/three-blocks", FKind::File(noise(3 * MIB * 4 + 100, 9))),
        ],
        compression: Compression::Gzip,
    }
}

/// Runs `sh -c script` as uid/gid 1000 and returns (success, stderr).
fn as_user(script: &str) -> (bool, String) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(1000) != 0
                || libc::setuid(1000) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn posix_permissions_links_times_and_open_unlinked_files() {
    let img = image(&[base_layer()]);
    let m = img.mount("mnt", true);
    let root = m.mountpoint.clone();

    // Permissions are the kernel's to check, from our attributes.
    let shadow = root.join("etc/shadow");
    let (ok, err) = as_user(&format!("cat {}", shadow.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_user(&format!("echo x > {}/etc/new", root.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = as_user(&format!(
        "echo mine > {}/home/user/f && cat {}/home/user/f",
        root.display(),
        root.display()
    ));
    assert!(ok, "the user's own directory: {err}");
    let (ok, err) = as_user(&format!(
        "echo x > {}/tmp/t && rm {}/tmp/t",
        root.display(),
        root.display()
    ));
    assert!(ok, "sticky /tmp: {err}");
    let meta = std::fs::metadata(root.join("home/user/f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1000, 1000),
        "created with the caller's ids"
    );
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = as_user(&format!("cat {}", shadow.display()));
    assert!(ok, "readable after chmod: {err}");

    // Link counts.
    let motd = root.join("etc/motd");
    std::fs::hard_link(&motd, root.join("etc/motd2")).unwrap();
    assert_eq!(std::fs::metadata(&motd).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::metadata(&motd).unwrap().ino(),
        std::fs::metadata(root.join("etc/motd2")).unwrap().ino()
    );
    std::fs::remove_file(&motd).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("etc/motd2")).unwrap().nlink(),
        1
    );
    assert_eq!(std::fs::read(root.join("etc/motd2")).unwrap(), b"hello");
    let etc_links = std::fs::metadata(root.join("etc")).unwrap().nlink();
    std::fs::create_dir(root.join("etc/sub")).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("etc")).unwrap().nlink(),
        etc_links + 1
    );
    assert_eq!(
        errno(std::fs::create_dir(root.join("etc/sub"))),
        libc::EEXIST
    );
    assert_eq!(errno(std::fs::remove_dir(root.join("nope"))), libc::ENOENT);

    // Times: utimes sets exactly; a change in a directory moves its mtime.
    let f = std::fs::File::options()
        .write(true)
        .open(root.join("etc/motd2"))
        .unwrap();
    let t = std::time::UNIX_EPOCH + Duration::new(1_234_567_890, 123_456_789);
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
    let meta = std::fs::metadata(root.join("etc/motd2")).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_234_567_890, 123_456_789)
    );
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (1_234_567_890, 123_456_789)
    );
    let before = std::fs::metadata(root.join("lib")).unwrap().mtime();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(root.join("lib/new"), b"n").unwrap();
    assert!(std::fs::metadata(root.join("lib")).unwrap().mtime() > before);
    drop(f);

    // An unlinked file stays readable and writable while open.
    let mut open = std::fs::File::options()
        .read(true)
        .write(true)
        .open(root.join("lib/new"))
        .unwrap();
    std::fs::remove_file(root.join("lib/new")).unwrap();
    assert_eq!(errno(std::fs::metadata(root.join("lib/new"))), libc::ENOENT);
    open.seek(SeekFrom::End(0)).unwrap();
    open.write_all(b" more").unwrap();
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    open.read_to_string(&mut back).unwrap();
    assert_eq!(back, "n more");
    assert_eq!(open.metadata().unwrap().nlink(), 0);
    open.sync_all().unwrap();
    drop(open);

    // A large directory lists completely (readdir resumes at offsets).
    let big = root.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..3000 {
        std::fs::write(big.join(format!("entry-with-a-longish-name-{i:05}")), b"").unwrap();
    }
    assert_eq!(std::fs::read_dir(&big).unwrap().count(), 3000);
    let (ok, err) = as_user(&format!("ls -f {} | wc -l", big.display()));
    assert!(ok, "{err}");

    // All of it survives a remount.
    m.unmount().unwrap();
    let m = img.mount("mnt", true);
    assert_eq!(
        std::fs::read_dir(m.mountpoint.join("big")).unwrap().count(),
        3000
    );
    assert!(!m.mountpoint.join("etc/motd").exists());
    assert_eq!(
        std::fs::read(m.mountpoint.join("home/user/f")).unwrap(),
        b"mine\n"
    );
    let meta = std::fs::metadata(m.mountpoint.join("etc/motd2")).unwrap();
    assert_eq!((meta.mtime(), meta.nlink()), (1_234_567_890, 1));
    m.unmount().unwrap();
}

fn allocated_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn one_byte_into_a_large_lower_file_copies_no_data() {
    let size = 72 * MIB + 5;
    let content = noise(size, 42);
    let img = image(&[FLayer {
        entries: vec![FEntry::new("model.bin", FKind::File(content.clone()))],
        compression: Compression::None,
    }]);
    let m = img.mount("mnt", true);
    let path = m.mountpoint.join("model.bin");
    let mid = size / 2 + 12345;
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.write_all_at(&[content[mid] ^ 0xff], mid as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut expected = content;
    expected[mid] ^= 0xff;
    let want = hex::encode(Sha256::digest(&expected));
    let read = std::fs::read(&path).unwrap();
    assert_eq!(read.len(), size);
    assert_eq!(
        hex::encode(Sha256::digest(&read)),
        want,
        "the whole file reads right"
    );
    let data = img.path("mnt-upper/data");
    let upper_bytes = allocated_bytes(&data);
    assert!(
        upper_bytes > 0 && upper_bytes <= 4 << 20,
        "the upper holds {upper_bytes} bytes of file data"
    );
    // Holes: a sparse write far past the end, and a truncate-extend.
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.write_all_at(b"end", (100 * MIB) as u64).unwrap();
    f.set_len((100 * MIB + 3) as u64).unwrap();
    drop(f);
    let mut r = std::fs::File::open(&path).unwrap();
    let mut gap = vec![1u8; 28 * MIB - 5];
    r.seek(SeekFrom::Start(size as u64)).unwrap();
    r.read_exact(&mut gap).unwrap();
    assert!(gap.iter().all(|&b| b == 0), "the gap reads zeros");
    drop(r);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 * MIB as u64)
        .unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[..10], &expected[..10]);
    assert!(
        after[10..].iter().all(|&b| b == 0),
        "shrink then extend reads zeros"
    );
    m.unmount().unwrap();

    // The change survives a remount; the lower file itself is unchanged.
    let m = img.mount("mnt", true);
    assert_eq!(
        std::fs::metadata(m.mountpoint.join("model.bin"))
            .unwrap()
            .len(),
        4 * MIB as u64
    );
    m.unmount().unwrap();
    let ro = img.mount("ro", false);
    let lower = std::fs::read(ro.mountpoint.join("model.bin")).unwrap();
    assert_eq!(lower[mid], expected[mid] ^ 0xff);
    ro.unmount().unwrap();
}

#[test]
fn a_full_upper_fails_the_write_and_keeps_what_was_written() {
    let img = image(&[base_layer()]);
    // A small filesystem for the upper layer.
    let upper_fs = img.path("small");
    std::fs::create_dir_all(&upper_fs).unwrap();
    slayerfs_integration::tree::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
            .arg(&upper_fs),
    );
    let _small = slayerfs_integration::tree::Unmount(upper_fs.clone());
    let upper = upper_fs.join("upper");
    let m = SlayerMount::start(
        &img.image,
        &img.path("mnt"),
        img.store.to_str().unwrap(),
        &img.path("state"),
        &["--rw", "--upper", upper.to_str().unwrap()],
    )
    .unwrap();
    let path = m.mountpoint.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = noise(MIB, 5);
    let mut written = 0usize;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < 200 * MIB, "never ran out of space");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    assert_eq!(len, written, "the size is what was accepted");
    let back = std::fs::read(&path).unwrap();
    for (i, piece) in back.chunks(MIB).enumerate() {
        assert_eq!(piece, &chunk[..piece.len()], "MiB {i} reads back");
    }
    // Freeing space makes the upper writable again.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(m.mountpoint.join("after"), b"fits").unwrap();
    assert_eq!(std::fs::read(m.mountpoint.join("after")).unwrap(), b"fits");
    m.unmount().unwrap();
}

/// The hex names of the blocks in a local store.
fn block_names(store: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in std::fs::read_dir(store.join("blocks")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            names.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    names
}

/// Reading `rel` fails with EIO in bounded time, and the log names one of
/// `blocks`.
fn assert_eio_naming_a_block(m: &SlayerMount, rel: &str, blocks: &[String]) {
    let started = Instant::now();
    let r = std::fs::read(m.mountpoint.join(rel));
    assert_eq!(errno(r), libc::EIO);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "EIO came in bounded time"
    );
    // The log is written by the mount process; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = m.log_text();
        if blocks.iter().any(|b| log.contains(b.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "the log names the block: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn damaged_or_missing_blocks_are_eio_naming_the_block_and_nothing_hangs() {
    let img = image(&[base_layer()]);
    let blocks = block_names(&img.store);
    assert!(blocks.len() >= 3);
    // Damaged: every stored block replaced by other bytes.
    for sub in std::fs::read_dir(img.store.join("blocks"))
        .unwrap()
        .flatten()
    {
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            std::fs::write(f.path(), b"not a zstd frame of the right bytes").unwrap();
        }
    }
    let m = img.mount("damaged", false);
    // Names and attributes come from the index: they still work.
    let meta = std::fs::metadata(m.mountpoint.join("lib/three-blocks")).unwrap();
    assert_eq!(meta.len(), (12 * MIB + 100) as u64);
    assert_eio_naming_a_block(&m, "lib/three-blocks", &blocks);
    assert_eio_naming_a_block(&m, "etc/motd", &blocks);
    m.unmount().unwrap();

    // Missing: the store has no blocks at all.
    std::fs::remove_dir_all(img.store.join("blocks")).unwrap();
    std::fs::create_dir_all(img.store.join("blocks")).unwrap();
    let m = img.mount("missing", false);
    assert_eio_naming_a_block(&m, "lib/three-blocks", &blocks);
    assert!(m.mountpoint.join("etc/motd").exists());
    m.unmount().unwrap();
}

#[test]
fn busy_mount_points_are_refused_and_sigterm_unmounts() {
    let img = image(&[base_layer()]);
    let m = img.mount("mnt", false);
    let out = slayerfs(
        &[
            "mount",
            &img.image,
            m.mountpoint.to_str().unwrap(),
            "--store",
            img.store.to_str().unwrap(),
        ],
        &[],
    );
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("already a mount point"), "{err}");
    m.unmount().unwrap();

    // Foreground mount, stopped by SIGTERM.
    let mnt = img.path("fg");
    std::fs::create_dir_all(&mnt).unwrap();
    let config = test_config(&img.path("state")).unwrap();
    let mut child = Command::new(slayerfs_integration::bins::bin("slayerfs"))
        .arg("--config")
        .arg(&config)
        .arg("mount")
        .arg(&img.image)
        .arg(&mnt)
        .args(["--store", img.store.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !slayerfs_snapshotter::fusemount::is_mount_point(&mnt).unwrap() {
        assert!(Instant::now() < deadline, "never mounted");
        assert!(child.try_wait().unwrap().is_none(), "mount exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(mnt.join("etc/motd")).unwrap(), b"hello");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!slayerfs_snapshotter::fusemount::is_mount_point(&mnt).unwrap());
    let _ = wait_gone(child.id(), Duration::from_secs(1));
}

/// An upper unmounted and mounted again at once gets the mount, though the
/// process that had it may still be flushing and holding its database; an
/// upper still mounted elsewhere is refused at once, naming that process.
#[test]
fn an_upper_remounts_at_once_and_one_in_use_is_refused() {
    let img = image(&[base_layer()]);
    let upper = img.path("loop-upper");
    let config = test_config(&img.path("state")).unwrap();
    let mount = |mnt: &Path| {
        std::fs::create_dir_all(mnt).unwrap();
        Command::new(slayerfs_integration::bins::bin("slayerfs"))
            .arg("--config")
            .arg(&config)
            .args(["mount", "--daemon", "--rw", "--upper"])
            .arg(&upper)
            .arg(&img.image)
            .arg(mnt)
            .args(["--store", img.store.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let pid_of = |out: &std::process::Output| -> u32 {
        let (stdout, _) = text(out);
        stdout
            .split("(pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
    };
    let mnt = img.path("loop");
    // A failing round must not leave its mount (and its process) behind.
    let _unmount = slayerfs_integration::tree::Unmount(mnt.clone());
    let mut pids = Vec::new();
    // The thread that resumes a stopped process, joined before anything
    // is asserted, so that a failing round never leaves a process stopped.
    let mut resume: Option<std::thread::JoinHandle<()>> = None;
    for round in 0..20 {
        let out = mount(&mnt);
        if let Some(t) = resume.take() {
            t.join().unwrap();
        }
        let (_, err) = text(&out);
        assert!(out.status.success(), "round {round}: {err}");
        pids.push(pid_of(&out));
        std::fs::write(mnt.join(format!("round-{round}")), round.to_string()).unwrap();
        // Unmounted, and straight on to the next mount: no waiting here.
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "round {round}: fusermount3 -u");
        if round % 2 == 1 {
            // A slow exit, made certain: the process stays stopped, holding
            // the upper, while the next mount starts.
            let pid = pids[round] as i32;
            // SAFETY: signalling the mount process this test started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            resume = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }));
        }
    }
    let out = mount(&mnt);
    assert!(out.status.success(), "{}", text(&out).1);
    let pid = pid_of(&out);
    for round in 0..20 {
        assert_eq!(
            std::fs::read_to_string(mnt.join(format!("round-{round}"))).unwrap(),
            round.to_string(),
            "round {round}'s write"
        );
    }
    // In use: refused at once, with the holder and where it is mounted.
    let started = Instant::now();
    let out = mount(&img.path("elsewhere"));
    let (_, err) = text(&out);
    assert!(
        !out.status.success(),
        "a second mount of the upper succeeded"
    );
    let want = format!("mounted at {} by process {pid}", mnt.display());
    assert!(err.contains(&want), "`{err}` lacks `{want}`");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused only after {:?}",
        started.elapsed()
    );
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    for p in pids.into_iter().chain([pid]) {
        wait_gone(p, Duration::from_secs(20)).unwrap();
    }
}

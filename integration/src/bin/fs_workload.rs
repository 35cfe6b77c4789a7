//! `slayerfs-fs-workload`: what a container does to its root filesystem,
//! run against a mount while the daemon serving it restarts.
//!
//! `fill FILE SIZE` writes SIZE bytes of the test pattern to FILE; `check
//! FILE SIZE` exits 0 only if FILE holds exactly that.
//! `run DIR LOWER STOP [STORM]` works in DIR until the file STOP appears:
//! its cwd is DIR, it keeps LOWER (a file of the pattern) open and mapped
//! and reads both at random places, appends numbered records to `journal`
//! through one open descriptor and reads each back, and creates, writes,
//! renames, lists, unlinks and removes names in `churn/`; STORM more
//! threads (default 0) create, rename, link, unlink, make and remove
//! directories in `storm/<n>/` as fast as they can. Every failure is
//! printed as `FAIL <op>: <error>`; at the end one line
//! `done ops=N failures=F records=R longest_ms=L storm_ops=S` (L: the
//! longest any single operation of the main loop took). Exits 1 if
//! anything failed.
//!
//! `crash DIR LOG` works in DIR until an operation fails (its daemon was
//! killed): two threads churn names in `churn/` (creates, writes,
//! renames over other names, links, unlinks, directories), while the main
//! thread makes files in `durable/`, each written and fsynced (directly,
//! or under a temporary name then renamed, with the directory fsynced)
//! before it is appended to LOG, outside the mount. `verify DIR LOG` then
//! checks what a crash must not break: every name in DIR points at an
//! inode, each inode has as many names as its link count, every file reads
//! to its size, and every file LOG names holds its bytes.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The byte the pattern has at `offset`.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (offset >> 20) as u8
}

fn fill(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(off + i as u64);
        }
        f.write_all(&buf[..n])?;
        off += n as u64;
    }
    f.sync_all()
}

/// Whether FILE holds exactly `size` bytes of the pattern.
fn check(path: &Path, size: u64) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    if data.len() as u64 != size {
        return Err(format!("{} bytes, {size} expected", data.len()));
    }
    check_pattern(&data, 0)
}

/// A small deterministic generator (no dependency for randomness).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Run {
    ops: u64,
    failures: u64,
    longest: Duration,
}

impl Run {
    /// Runs one operation, timing it and printing its failure.
    fn op(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) {
        let start = Instant::now();
        let r = f();
        self.longest = self.longest.max(start.elapsed());
        self.ops += 1;
        if let Err(e) = r {
            self.failures += 1;
            println!("FAIL {name}: {e}");
        }
    }
}

fn check_pattern(data: &[u8], at: u64) -> Result<(), String> {
    for (i, b) in data.iter().enumerate() {
        if *b != pattern(at + i as u64) {
            return Err(format!("wrong byte at {}", at + i as u64));
        }
    }
    Ok(())
}

/// One storm thread: namespace changes, each of which must succeed.
fn storm(n: usize, stop: &Path) -> Run {
    let mut run = Run {
        ops: 0,
        failures: 0,
        longest: Duration::ZERO,
    };
    let base = format!("storm/{n}");
    run.op("storm mkdir", || {
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())
    });
    let mut i: u64 = 0;
    while !stop.exists() {
        i += 1;
        let p = |name: &str| format!("{base}/{name}{i}");
        let e = |e: std::io::Error| e.to_string();
        run.op("storm create", || std::fs::write(p("c"), b"x").map_err(e));
        run.op("storm rename", || {
            std::fs::rename(p("c"), p("r")).map_err(e)
        });
        run.op("storm link", || {
            std::fs::hard_link(p("r"), p("l")).map_err(e)
        });
        run.op("storm unlink", || std::fs::remove_file(p("r")).map_err(e));
        run.op("storm unlink link", || {
            std::fs::remove_file(p("l")).map_err(e)
        });
        run.op("storm mkdir", || std::fs::create_dir(p("d")).map_err(e));
        run.op("storm rename dir", || {
            std::fs::rename(p("d"), p("e")).map_err(e)
        });
        run.op("storm rmdir", || std::fs::remove_dir(p("e")).map_err(e));
    }
    run
}

fn run(dir: &Path, lower: &Path, stop: &Path, storms: usize) -> Result<Run, String> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    std::env::set_current_dir(dir).map_err(err("chdir"))?;
    let lower_file = File::open(lower).map_err(err("open lower"))?;
    let size = lower_file.metadata().map_err(err("stat lower"))?.len();
    if size < 8192 {
        return Err("the lower file is too small".into());
    }
    // SAFETY: a read-only shared mapping of a file we keep open; only read.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&lower_file),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping is `size` bytes and lives until the process ends.
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, size as usize) };
    // What an earlier run left there is not this run's.
    for leftover in ["churn", "storm"] {
        match std::fs::remove_dir_all(leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("clearing {leftover}: {e}")),
        }
    }
    std::fs::create_dir_all("churn").map_err(err("mkdir churn"))?;
    let journal = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open("journal")
        .map_err(err("open journal"))?;
    let mut run = Run {
        ops: 0,
        failures: 0,
        longest: Duration::ZERO,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut records: u64 = 0;
    let storms: Vec<_> = (0..storms)
        .map(|n| {
            let stop = stop.to_path_buf();
            std::thread::spawn(move || storm(n, &stop))
        })
        .collect();
    println!("ready");
    let _ = std::io::stdout().flush();
    while !stop.exists() {
        let at = rng.next() % (size - 4096);
        run.op("pread lower", || {
            let mut buf = [0u8; 4096];
            lower_file
                .read_exact_at(&mut buf, at)
                .map_err(|e| e.to_string())?;
            check_pattern(&buf, at)
        });
        let at = rng.next() % (size - 64);
        run.op("mmap lower", || {
            check_pattern(&mapped[at as usize..at as usize + 64], at)
        });
        let record = format!("record {records:08}\n");
        let off = records * record.len() as u64;
        run.op("journal write", || {
            journal
                .write_all_at(record.as_bytes(), off)
                .map_err(|e| e.to_string())
        });
        run.op("journal read back", || {
            let mut back = vec![0u8; record.len()];
            journal
                .read_exact_at(&mut back, off)
                .map_err(|e| e.to_string())?;
            (back == record.as_bytes()).then_some(()).ok_or_else(|| {
                format!(
                    "record {records} reads back {:?}",
                    String::from_utf8_lossy(&back)
                )
            })
        });
        records += 1;
        let i = records;
        run.op("create", || {
            std::fs::write(format!("churn/new{i}"), format!("file {i}")).map_err(|e| e.to_string())
        });
        run.op("rename", || {
            std::fs::rename(format!("churn/new{i}"), format!("churn/f{i}"))
                .map_err(|e| e.to_string())
        });
        run.op("read renamed", || {
            let got = std::fs::read_to_string(format!("churn/f{i}")).map_err(|e| e.to_string())?;
            (got == format!("file {i}"))
                .then_some(())
                .ok_or(format!("churn/f{i} holds {got:?}"))
        });
        run.op("mkdir", || {
            std::fs::create_dir(format!("churn/d{i}")).map_err(|e| e.to_string())
        });
        run.op("rmdir", || {
            std::fs::remove_dir(format!("churn/d{i}")).map_err(|e| e.to_string())
        });
        if i > 2 {
            run.op("unlink", || {
                std::fs::remove_file(format!("churn/f{}", i - 2)).map_err(|e| e.to_string())
            });
        }
        run.op("readdir", || {
            let n = std::fs::read_dir("churn")
                .map_err(|e| e.to_string())?
                .count();
            (n <= 3)
                .then_some(())
                .ok_or(format!("churn has {n} entries, at most 3 expected"))
        });
        run.op("stat cwd", || {
            let c =
                CString::new(Path::new(".").as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: a valid C string and a stat buffer.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(())
        });
    }
    let mut storm_ops = 0;
    for t in storms {
        let r = t
            .join()
            .map_err(|_| "a storm thread panicked".to_string())?;
        storm_ops += r.ops;
        run.failures += r.failures;
    }
    println!(
        "done ops={} failures={} records={records} longest_ms={} storm_ops={storm_ops}",
        run.ops,
        run.failures,
        run.longest.as_millis()
    );
    Ok(run)
}

/// How many bytes durable file `n` has, and the pattern offset they start at.
fn durable_shape(n: u64) -> (u64, u64) {
    ((n % 7) * 4096 + n % 1000, n * 1_000_003)
}

/// Whether an error only says the name was not in the state the churn
/// guessed (expected), not that the filesystem failed.
fn expected_miss(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::EISDIR | libc::ENOTDIR)
    )
}

/// One churn thread: random namespace and data changes in `churn/<k>`
/// until something fails for real.
fn churn(k: u64) {
    let base = format!("churn/{k}");
    if std::fs::create_dir_all(&base).is_err() {
        return;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k + 1) ^ std::process::id() as u64);
    let mut buf = Vec::new();
    loop {
        let r = rng.next();
        let a = format!("{base}/n{}", r % 48);
        let b = format!("{base}/n{}", (r >> 8) % 48);
        let d = format!("{base}/d{}", (r >> 16) % 6);
        let done = match r % 9 {
            0 | 1 => {
                buf.resize(((r >> 24) % 20_000) as usize, (r >> 40) as u8);
                std::fs::write(&a, &buf)
            }
            2 => std::fs::rename(&a, &b),
            3 => std::fs::hard_link(&a, &b),
            4 => std::fs::remove_file(&a),
            5 => std::fs::create_dir(&d),
            6 => std::fs::remove_dir(&d),
            7 => OpenOptions::new()
                .write(true)
                .open(&a)
                .and_then(|f| f.set_len((r >> 24) % 30_000)),
            _ => std::fs::rename(&a, format!("{d}/m{}", (r >> 32) % 8)),
        };
        if let Err(e) = done {
            if !expected_miss(&e) {
                return;
            }
        }
    }
}

fn sync_dir(dir: &str) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes durable files until an operation fails; each is logged only once
/// it is durable.
fn crash(dir: &Path, log: &Path) -> Result<u64, String> {
    std::env::set_current_dir(dir).map_err(|e| format!("chdir: {e}"))?;
    std::fs::create_dir_all("durable").map_err(|e| format!("mkdir durable: {e}"))?;
    let first = std::fs::read_to_string(log).map_or(0, |l| l.lines().count() as u64);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open log: {e}"))?;
    for k in 0..2 {
        std::thread::spawn(move || churn(k));
    }
    let mut n = first;
    loop {
        let (size, at) = durable_shape(n);
        let data: Vec<u8> = (0..size).map(|i| pattern(at + i)).collect();
        let (kind, made) = if n.is_multiple_of(2) {
            let name = format!("durable/f-{n}");
            let made = File::create(&name)
                .and_then(|mut f| f.write_all(&data).and_then(|_| f.sync_all()))
                .and_then(|_| sync_dir("durable"));
            ("f", made)
        } else {
            let tmp = format!("durable/.tmp-{n}");
            let made = File::create(&tmp)
                .and_then(|mut f| f.write_all(&data).and_then(|_| f.sync_all()))
                .and_then(|_| std::fs::rename(&tmp, format!("durable/r-{n}")))
                .and_then(|_| sync_dir("durable"));
            ("r", made)
        };
        if made.is_err() {
            return Ok(n - first);
        }
        writeln!(log, "{kind} {n}")
            .and_then(|_| log.sync_data())
            .map_err(|e| format!("log: {e}"))?;
        n += 1;
    }
}

/// What a crash must not break (see the module's doc); the failures.
fn verify(dir: &Path, log: &Path) -> Vec<String> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    let mut failures = Vec::new();
    let mut names: HashMap<u64, (u64, u64, String)> = HashMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut seen = 0u64;
    while let Some(d) = dirs.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("listing {}: {e}", d.display()));
                continue;
            }
        };
        for entry in entries {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    failures.push(format!("listing {}: {e}", d.display()));
                    continue;
                }
            };
            seen += 1;
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{} names no inode: {e}", path.display()));
                    continue;
                }
            };
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let slot =
                names
                    .entry(meta.ino())
                    .or_insert((0, meta.nlink(), path.display().to_string()));
            slot.0 += 1;
            if meta.is_file() {
                match std::fs::read(&path) {
                    Ok(d) if d.len() as u64 == meta.len() => {}
                    Ok(d) => failures.push(format!(
                        "{} read {} bytes of {}",
                        path.display(),
                        d.len(),
                        meta.len()
                    )),
                    Err(e) => failures.push(format!("reading {}: {e}", path.display())),
                }
            }
        }
    }
    for (ino, (found, nlink, one)) in &names {
        if found != nlink {
            failures.push(format!(
                "inode {ino} ({one}): {found} names, link count {nlink}"
            ));
        }
    }
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    let mut durable = 0;
    for line in logged.lines() {
        let Some((kind, n)) = line.split_once(' ') else {
            failures.push(format!("log line {line:?}"));
            continue;
        };
        let Ok(n) = n.parse::<u64>() else {
            failures.push(format!("log line {line:?}"));
            continue;
        };
        let path = dir.join(format!("durable/{kind}-{n}"));
        let (size, at) = durable_shape(n);
        match std::fs::read(&path) {
            Ok(d) if d.len() as u64 == size => {
                if let Err(e) = check_pattern(&d, at) {
                    failures.push(format!("{}: {e}", path.display()));
                }
            }
            Ok(d) => failures.push(format!(
                "{}: {} bytes, {size} fsynced",
                path.display(),
                d.len()
            )),
            Err(e) => failures.push(format!("{} was fsynced: {e}", path.display())),
        }
        durable += 1;
    }
    println!(
        "verified names={seen} inodes={} durable={durable}",
        names.len()
    );
    failures
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["fill", file, size] => match size
            .parse()
            .map_err(|e| format!("{e}"))
            .and_then(|s| fill(Path::new(file), s).map_err(|e| e.to_string()))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fill: {e}");
                ExitCode::FAILURE
            }
        },
        ["check", file, size] => match size
            .parse::<u64>()
            .map_err(|e| format!("{e}"))
            .and_then(|s| check(Path::new(file), s))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("check: {e}");
                ExitCode::FAILURE
            }
        },
        ["run", dir, lower, stop, rest @ ..] if rest.len() <= 1 => match run(
            Path::new(dir),
            Path::new(lower),
            Path::new(stop),
            rest.first().and_then(|n| n.parse().ok()).unwrap_or(0),
        ) {
            Ok(r) if r.failures == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                println!("FAIL setup: {e}");
                ExitCode::FAILURE
            }
        },
        ["crash", dir, log] => match crash(Path::new(dir), Path::new(log)) {
            Ok(n) => {
                println!("done durable={n}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("FAIL {e}");
                ExitCode::FAILURE
            }
        },
        ["verify", dir, log] => {
            let failures = verify(Path::new(dir), Path::new(log));
            for f in &failures {
                println!("FAIL {f}");
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: slayerfs-fs-workload fill FILE SIZE | check FILE SIZE | run DIR LOWER STOP [STORM] | crash DIR LOG | verify DIR LOG");
            ExitCode::from(2)
        }
    }
}

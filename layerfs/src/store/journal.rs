//! An upper layer's journal: every change, written with one `write(2)`
//! before it is applied and answered, so that what a container was told is
//! done survives the death of this process (the page cache outlives it;
//! power loss stays the business of fsync, which checkpoints).
//!
//! Files `journal.<n>` in the upper's data directory, replayed in order at
//! open. A record sets or removes keys and removes data files: absolute
//! effects, so replaying one already applied changes nothing, and replaying
//! every record since the last checkpoint always ends in the state the
//! last answered change left. An fsync syncs the current file (files are
//! made with a synced directory); a checkpoint starts a new file, flushes
//! the database and deletes the older files.
//!
//! Record: `len: u32 LE | crc32(payload): u32 LE | payload`; payload: a
//! sequence of entries, each `0 tree key` (remove), `1 tree key value`
//! (set) or `2 ino` (remove the data file), with `tree: u8`, `ino: u64 LE`
//! and byte strings as `len: u32 LE | bytes`. A record that is cut short or
//! does not match its checksum ends the replay of its file (a write torn
//! by the process's death was never answered).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The longest record accepted back (a change touches a few keys; a
/// truncate of a huge file touches one key per 64 MiB chunk).
const MAX_RECORD: usize = 64 << 20;
/// A checkpoint is due once the current file is this long: it bounds what
/// a start after a crash replays (about 3,000 changes, some 10 ms), at one
/// database flush per megabyte of changes.
pub const CHECKPOINT_BYTES: u64 = 1 << 20;

/// One effect of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Remove {
        tree: u8,
        key: Vec<u8>,
    },
    Set {
        tree: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveDataFile {
        ino: u64,
    },
}

/// What [`Journal::open`] found: the journal to append to, the effects of
/// every intact record in order, and the number of the last file read.
pub struct Opened {
    pub journal: Journal,
    pub records: Vec<Vec<Effect>>,
    pub last: Option<u64>,
}

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

struct Current {
    n: u64,
    file: File,
    len: u64,
    /// The file's name has been made durable (its directory synced).
    named_durably: bool,
}

/// The journal of one upper layer.
pub struct Journal {
    dir: PathBuf,
    current: Mutex<Current>,
}

fn file_name(n: u64) -> String {
    format!("journal.{n}")
}

/// The number of a journal file, from its name.
fn file_number(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()?.strip_prefix("journal.")?.parse().ok()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Opens the journal in `dir`: the effects of every intact record of
    /// the files there, in order, and a new file to append to. The files
    /// read stay until [`Journal::drop_through`] their number.
    pub fn open(dir: &Path) -> Result<Opened, JournalError> {
        let mut numbers = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            if let Some(n) = file_number(&e.file_name()) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut records = Vec::new();
        for n in &numbers {
            let path = dir.join(file_name(*n));
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err(&path))?;
            let (recs, intact) = decode_file(&bytes);
            if intact < bytes.len() {
                tracing::warn!(path = %path.display(), at = intact, "journal ends in a torn or damaged record; it was never answered");
            }
            records.extend(recs);
        }
        let last = numbers.last().copied();
        let next = last.map_or(1, |n| n + 1);
        let current = Self::create(dir, next)?;
        Ok(Opened {
            journal: Journal {
                dir: dir.to_path_buf(),
                current: Mutex::new(current),
            },
            records,
            last,
        })
    }

    fn create(dir: &Path, n: u64) -> Result<Current, JournalError> {
        let path = dir.join(file_name(n));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // Its name is made durable by the first sync, not here: a new
        // snapshot's Prepare would otherwise wait on a directory sync
        // behind every other writer of the disk, for a file no one may
        // ever sync.
        Ok(Current {
            n,
            file,
            len: 0,
            named_durably: false,
        })
    }

    /// Makes every record appended so far durable against power loss
    /// (and the current file's name, the first time).
    pub fn sync(&self) -> Result<(), JournalError> {
        let mut cur = self.current();
        let path = self.dir.join(file_name(cur.n));
        cur.file.sync_data().map_err(io_err(&path))?;
        if !cur.named_durably {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            cur.named_durably = true;
        }
        Ok(())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record; once this returns, the change survives this
    /// process. Returns the length of the current file.
    pub fn append(&self, effects: &[Effect]) -> Result<u64, JournalError> {
        let record = encode_record(effects);
        let mut cur = self.current();
        let path = self.dir.join(file_name(cur.n));
        cur.file.write_all(&record).map_err(io_err(&path))?;
        cur.len += record.len() as u64;
        Ok(cur.len)
    }

    /// Starts a new file; returns the number of the last one before it
    /// (every record appended so far is in files up to that number).
    pub fn rotate(&self) -> Result<u64, JournalError> {
        let mut cur = self.current();
        let next = Self::create(&self.dir, cur.n + 1)?;
        let old = std::mem::replace(&mut *cur, next);
        Ok(old.n)
    }

    /// Deletes the files numbered up to `n` (their records are durable
    /// in the database).
    pub fn drop_through(&self, n: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if file_number(&e.file_name()).is_some_and(|m| m <= n) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a journal file");
                }
            }
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_record(effects: &[Effect]) -> Vec<u8> {
    let mut payload = Vec::new();
    for e in effects {
        match e {
            Effect::Remove { tree, key } => {
                payload.push(0);
                payload.push(*tree);
                put_bytes(&mut payload, key);
            }
            Effect::Set { tree, key, value } => {
                payload.push(1);
                payload.push(*tree);
                put_bytes(&mut payload, key);
                put_bytes(&mut payload, value);
            }
            Effect::RemoveDataFile { ino } => {
                payload.push(2);
                payload.extend_from_slice(&ino.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Every intact record of a file, and how many bytes they take.
fn decode_file(bytes: &[u8]) -> (Vec<Vec<Effect>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((rec, len)) = decode_record(&bytes[at..]) {
        records.push(rec);
        at += len;
    }
    (records, at)
}

fn decode_record(bytes: &[u8]) -> Option<(Vec<Effect>, usize)> {
    let head = bytes.get(..8)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((decode_effects(payload)?, 8 + len))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let l = self.take(4)?;
        let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        self.take(len).map(<[u8]>::to_vec)
    }
}

fn decode_effects(payload: &[u8]) -> Option<Vec<Effect>> {
    let mut c = Cursor(payload);
    let mut effects = Vec::new();
    while !c.0.is_empty() {
        effects.push(match c.byte()? {
            0 => Effect::Remove {
                tree: c.byte()?,
                key: c.bytes()?,
            },
            1 => Effect::Set {
                tree: c.byte()?,
                key: c.bytes()?,
                value: c.bytes()?,
            },
            2 => {
                let b = c.take(8)?;
                Effect::RemoveDataFile {
                    ino: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                }
            }
            _ => return None,
        });
    }
    Some(effects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Effect> {
        vec![
            Effect::Set {
                tree: 1,
                key: b"k1".to_vec(),
                value: b"v1".to_vec(),
            },
            Effect::Remove {
                tree: 2,
                key: b"k2".to_vec(),
            },
            Effect::RemoveDataFile { ino: 77 },
        ]
    }

    #[test]
    fn records_come_back_in_order_across_files_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let Opened {
            journal: j,
            records: old,
            last,
        } = Journal::open(dir.path()).unwrap();
        assert!(old.is_empty() && last.is_none());
        j.append(&sample()).unwrap();
        let n = j.rotate().unwrap();
        j.append(&sample()[..1]).unwrap();
        drop(j);
        let Opened {
            journal: j,
            records: recs,
            last,
        } = Journal::open(dir.path()).unwrap();
        assert_eq!(recs, vec![sample(), sample()[..1].to_vec()]);
        assert_eq!(last, Some(n + 1));
        j.drop_through(n + 1);
        let recs = Journal::open(dir.path()).unwrap().records;
        assert!(recs.is_empty(), "{recs:?}");
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_replay_without_a_panic() {
        let good = encode_record(&sample());
        let mut two = good.clone();
        two.extend_from_slice(&good);
        for cut in 0..good.len() {
            let (recs, at) = decode_file(&two[..good.len() + cut]);
            assert_eq!((recs.len(), at), (1, good.len()), "cut at {cut}");
        }
        for flip in 0..good.len() {
            let mut bad = good.clone();
            bad[flip] ^= 0x40;
            let (recs, _) = decode_file(&bad);
            assert!(recs.is_empty(), "flip at {flip}");
        }
        let mut huge = vec![0xff; 8];
        huge.extend_from_slice(&[0; 16]);
        assert!(decode_file(&huge).0.is_empty());
    }
}

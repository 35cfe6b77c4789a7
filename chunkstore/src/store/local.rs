//! A block store in a local directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{clip, trace_name, BlockStore, ObjectKey, RangeRead, StoreError, MAX_TRACES_LISTED};
use crate::id::{BlockId, ChainDigest, IndexDigest, TraceDigest};

/// Objects as files under a root directory, written to a temporary file,
/// synced, then renamed into place, so a crash never leaves a partial object.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::Open {
            store: root.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    /// A store at `root` that is only read here: the directory is not
    /// created, and while it does not exist every object is missing.
    pub fn open_read_only(root: &Path) -> Self {
        LocalStore {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `key`.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.relative_path())
    }

    /// Every object in the store. Files whose names are not keys (such as
    /// the temporary files of writes in flight) are not objects.
    pub fn list(&self) -> Result<Vec<ObjectKey>, StoreError> {
        let listing = |e: std::io::Error| StoreError::Open {
            store: self.location(),
            message: format!("listing objects: {e}"),
        };
        let mut keys = Vec::new();
        for name in names_in(&self.root.join("indexes")).map_err(listing)? {
            if let Ok(d) = format!("sha256:{name}").parse::<IndexDigest>() {
                keys.push(ObjectKey::Index(d));
            }
        }
        for fan in names_in(&self.root.join("blocks")).map_err(listing)? {
            for name in names_in(&self.root.join("blocks").join(&fan)).map_err(listing)? {
                let id = hex::decode(&name)
                    .ok()
                    .and_then(|b| BlockId::from_slice(&b));
                // Only the canonical spelling: the key must map back to this file.
                if let Some(id) = id.filter(|id| id.to_hex() == name && name.starts_with(&fan)) {
                    keys.push(ObjectKey::Block(id));
                }
            }
        }
        Ok(keys)
    }

    /// Removes the temporary files of writes whose process is gone (a
    /// writer killed mid-write leaves one, and nothing else would ever
    /// remove it); writes of live processes are left alone. Files of a
    /// build that did not name the writer go once they are an hour old.
    /// Returns how many files went and the bytes they took.
    pub fn remove_abandoned_writes(&self) -> Result<(usize, u64), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let listing = |e: std::io::Error| StoreError::Open {
            store: self.location(),
            message: format!("listing temporary files: {e}"),
        };
        let mut dirs = vec![self.root.join("indexes")];
        for fan in names_in(&self.root.join("blocks")).map_err(listing)? {
            dirs.push(self.root.join("blocks").join(fan));
        }
        let (mut files, mut bytes) = (0, 0);
        for dir in dirs {
            for name in names_in(&dir).map_err(listing)? {
                let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
                    continue;
                };
                let path = dir.join(&name);
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let abandoned = match writer_pid(rest) {
                    Some(pid) => !process_exists(pid),
                    None => meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age > LEGACY_TEMP_AGE),
                };
                if abandoned && std::fs::remove_file(&path).is_ok() {
                    files += 1;
                    bytes += meta.blocks() * 512;
                }
            }
        }
        Ok((files, bytes))
    }

    /// Deletes an object; returns the bytes it took (0 if it was not there).
    pub fn remove(&self, key: &ObjectKey) -> Result<u64, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let path = self.path_of(key);
        let size = match std::fs::symlink_metadata(&path) {
            Ok(m) => m.blocks() * 512,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io_err("stat", key, e)),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.io_err("remove", key, e)),
        }
    }

    /// A failed read of `key`: not found, or why not.
    fn read_err(&self, key: &ObjectKey, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound {
            return StoreError::NotFound {
                store: self.location(),
                key: Box::new(*key),
            };
        }
        self.io_err("read", key, e)
    }

    fn io_err(&self, op: &'static str, key: &ObjectKey, source: std::io::Error) -> StoreError {
        StoreError::Io {
            store: self.location(),
            op,
            key: Box::new(*key),
            source,
        }
    }
}

/// Temporary files are `.tmp-<writer pid>-<random>`: a sweep tells a
/// write in flight from one a dead process left.
const TEMP_PREFIX: &str = ".tmp-";
const LEGACY_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", std::process::id())
}

/// The writer named by a temporary file's name after the prefix.
fn writer_pid(rest: &str) -> Option<libc::pid_t> {
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok().filter(|p| *p > 0)
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The UTF-8 names in `dir` (none if it does not exist yet).
fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for e in entries {
        if let Ok(name) = e?.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// O_DIRECT alignment of buffer address, offset and length.
const DIRECT_ALIGN: usize = 4096;

/// Staging buffers for O_DIRECT writes, reused (a fresh 4 MiB buffer per
/// block costs page faults) but few, so memory stays bounded however many
/// threads write.
static STAGING: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
const STAGING_KEEP: usize = 4;

/// Writes `data` to a new temporary file in `dir` without the page cache:
/// on this kind of machine a buffered write costs the CPU several times what
/// compressing the block did. Returns `None` where the filesystem does not
/// support O_DIRECT (tmpfs, some overlay setups).
fn write_direct(dir: &Path, data: &[u8]) -> std::io::Result<Option<tempfile::NamedTempFile>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = tempfile::Builder::new()
        .prefix(&temp_prefix())
        .make_in(dir, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_DIRECT)
                .open(p)
        });
    let mut tmp = match opened {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Address and length must both be aligned: stage the bytes in an
    // aligned window of a slightly larger buffer, zero-padded, then cut the
    // file back to its true length.
    let rounded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut staging = STAGING
        .lock()
        .ok()
        .and_then(|mut s| s.pop())
        .unwrap_or_default();
    if staging.len() < rounded + DIRECT_ALIGN {
        staging.resize(rounded + DIRECT_ALIGN, 0);
    }
    let offset = staging.as_ptr().align_offset(DIRECT_ALIGN);
    let window = &mut staging[offset..offset + rounded];
    window[..data.len()].copy_from_slice(data);
    window[data.len()..].fill(0);
    let written = tmp.write_all(window);
    if let Ok(mut pool) = STAGING.lock() {
        if pool.len() < STAGING_KEEP {
            pool.push(staging);
        }
    }
    match written {
        Ok(()) => {}
        // Some filesystems accept the flag at open and refuse the write.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    }
    tmp.as_file().set_len(data.len() as u64)?;
    Ok(Some(tmp))
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let new_dir = !dir.is_dir();
    std::fs::create_dir_all(dir)?;
    let tmp = match write_direct(dir, data)? {
        Some(t) => t,
        None => {
            let mut t = tempfile::Builder::new()
                .prefix(&temp_prefix())
                .tempfile_in(dir)?;
            t.write_all(data)?;
            t
        }
    };
    tmp.as_file().sync_data()?;
    // Another writer may have renamed the same content in meanwhile; replacing
    // it with identical bytes is harmless.
    tmp.persist(path).map_err(|e| e.error)?;
    // The name is durable only once its directory is (and a new
    // directory's own name once its parent is): a layer committed after
    // this must not point at a block power loss can take away.
    sync_dir(dir)?;
    if new_dir {
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl BlockStore for LocalStore {
    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key);
        let limit = key.max_stored_bytes();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let file = std::fs::File::open(&path)?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| self.io_err("read", key, std::io::Error::other(e)))?;
        match read {
            Ok(bytes) if bytes.len() as u64 > limit => Err(StoreError::too_large(
                self.location(),
                key,
                bytes.len() as u64,
            )),
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(self.read_err(key, e)),
        }
    }

    async fn get_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> Result<RangeRead, StoreError> {
        let path = self.path_of(key);
        let limit = key.max_stored_bytes();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<RangeRead> {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            let object_len = file.metadata()?.len();
            let at = clip(&range, object_len);
            let mut bytes = vec![0u8; (at.end - at.start).min(limit) as usize];
            file.read_exact_at(&mut bytes, at.start)?;
            Ok(RangeRead {
                bytes,
                start: at.start,
                object_len,
            })
        })
        .await
        .map_err(|e| self.io_err("read", key, std::io::Error::other(e)))?;
        read.map_err(|e| self.read_err(key, e))
    }

    async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        tokio::fs::try_exists(self.path_of(key))
            .await
            .map_err(|e| self.io_err("stat", key, e))
    }

    async fn put_replacing(&self, key: &ObjectKey, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path_of(key);
        tokio::task::spawn_blocking(move || write_atomically(&path, &data))
            .await
            .map_err(|e| self.io_err("write", key, std::io::Error::other(e)))?
            .map_err(|e| self.io_err("write", key, e))
    }

    async fn list_traces(&self, chain: &ChainDigest) -> Result<Vec<TraceDigest>, StoreError> {
        let prefix = ObjectKey::traces_of(chain);
        let dir = self.root.join(&prefix);
        let names = tokio::task::spawn_blocking(move || names_in(&dir))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StoreError::List {
                store: self.location(),
                prefix,
                message: e.to_string(),
            })?;
        let mut found: Vec<TraceDigest> = names.iter().filter_map(|n| trace_name(n)).collect();
        found.sort();
        found.truncate(MAX_TRACES_LISTED);
        Ok(found)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let this = self.clone();
        let key = *key;
        tokio::task::spawn_blocking(move || this.remove(&key).map(|_| ()))
            .await
            .map_err(|e| self.io_err("remove", &key, std::io::Error::other(e)))?
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_of_dead_processes_are_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let fan = dir.path().join("blocks").join("ab");
        std::fs::create_dir_all(&fan).unwrap();
        std::fs::create_dir_all(dir.path().join("indexes")).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let files = [
            (fan.join(format!(".tmp-{dead}-x1")), false),
            (
                dir.path().join("indexes").join(format!(".tmp-{dead}-x2")),
                false,
            ),
            (fan.join(format!("{}x3", temp_prefix())), true),
            (fan.join(".tmp-legacy"), true),
            (fan.join("ab00"), true),
        ];
        for (f, _) in &files {
            std::fs::write(f, b"partial").unwrap();
        }
        let (n, bytes) = store.remove_abandoned_writes().unwrap();
        assert_eq!(n, 2);
        assert!(bytes > 0);
        for (f, stays) in &files {
            assert_eq!(f.exists(), *stays, "{}", f.display());
        }
    }
}

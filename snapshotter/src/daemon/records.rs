//! containerd snapshot records in sled: key, kind, parent, labels, times,
//! with the rules containerd's snapshots API sets for them — a parent must
//! exist and be committed, keys are unique, only an active snapshot can be
//! committed, a snapshot with children cannot be removed, labels have a
//! size limit. Each change is one sled transaction over the records and the
//! parent→children index, flushed before it returns, so a crash never
//! leaves half a change; changes also take one lock, so that concurrent
//! clients' changes apply one after the other.
//!
//! It knows nothing of mounts or layers; the snapshot service decides what
//! a record's state means on disk.

use std::collections::BTreeMap;
use std::time::SystemTime;

use slayerfs_layerfs::store::{abort, finish_tx, suffixes};
use slayerfs_proto::store::{SnapshotKind, SnapshotRecord};
use slayerfs_proto::Message;
use sled::transaction::{
    ConflictableTransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

/// containerd's limit on one label: key and value together.
pub const MAX_LABEL_BYTES: usize = 4096;
/// The longest snapshot key or name taken (containerd's own are a
/// namespace, a number and a digest: well under 200 bytes).
pub const MAX_KEY_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("snapshot {0}: not found")]
    NotFound(String),
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("snapshot records: {0}")]
    Store(#[from] sled::Error),
    #[error("corrupt snapshot record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "the state disk is full ({free_kib} KiB free, {} MiB kept for the database): No space left on device",
        ROOM_KEPT >> 20
    )]
    NoRoom { free_kib: u64 },
}

/// Free space below which new records are refused. sled marks its whole
/// database failed, until it is opened again, after one write of its log
/// fails; refusing first keeps the daemon working once space comes back.
pub const ROOM_KEPT: u64 = 8 << 20;

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub key: String,
    pub id: u64,
    pub kind: SnapshotKind,
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Committed snapshots: the index digest of their layer.
    pub layer: String,
}

fn to_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    }
}

fn from_parts(sec: i64, nsec: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::new(sec.max(0) as u64, nsec.min(999_999_999))
}

impl Snapshot {
    fn from_record(key: String, rec: SnapshotRecord) -> Result<Self, RecordError> {
        let kind = SnapshotKind::from_i32(rec.kind)
            .filter(|k| *k != SnapshotKind::Unspecified)
            .ok_or_else(|| RecordError::Corrupt {
                key: key.clone(),
                reason: format!("kind {}", rec.kind),
            })?;
        Ok(Snapshot {
            key,
            id: rec.id,
            kind,
            parent: rec.parent,
            labels: rec.labels,
            created: from_parts(rec.created_sec, rec.created_nsec),
            updated: from_parts(rec.updated_sec, rec.updated_nsec),
            layer: rec.layer,
        })
    }

    fn record(&self) -> SnapshotRecord {
        let (created_sec, created_nsec) = to_parts(self.created);
        let (updated_sec, updated_nsec) = to_parts(self.updated);
        SnapshotRecord {
            id: self.id,
            kind: self.kind as i32,
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created_sec,
            created_nsec,
            updated_sec,
            updated_nsec,
            layer: self.layer.clone(),
        }
    }
}

/// Checks labels against containerd's rules.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), RecordError> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(RecordError::InvalidArgument(
                "label key must not be empty".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(RecordError::InvalidArgument(format!(
                "label key and value of {} ({} bytes) over the {MAX_LABEL_BYTES}-byte limit",
                k.chars().take(64).collect::<String>(),
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), RecordError> {
    if key.is_empty() {
        return Err(RecordError::InvalidArgument(
            "snapshot key must not be empty".into(),
        ));
    }
    if key.contains('\0') {
        return Err(RecordError::InvalidArgument(
            "snapshot key must not contain NUL".into(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RecordError::InvalidArgument(format!(
            "snapshot key of {} bytes is over the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

fn child_key(parent: &str, child: &str) -> Vec<u8> {
    let mut k = parent.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(child.as_bytes());
    k
}

type TxResult<T> = Result<T, ConflictableTransactionError<RecordError>>;

fn tx_get(tree: &TransactionalTree, key: &str) -> TxResult<Option<Snapshot>> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => match SnapshotRecord::decode(bytes.as_ref()) {
            Ok(rec) => match Snapshot::from_record(key.to_string(), rec) {
                Ok(s) => Ok(Some(s)),
                Err(e) => abort(e),
            },
            Err(e) => abort(RecordError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            }),
        },
    }
}

fn tx_has_children(
    children: &TransactionalTree,
    key: &str,
) -> Result<bool, UnabortableTransactionError> {
    // Transactional trees have no range scan; the children index is read
    // through a marker kept per parent: the count of children.
    Ok(children
        .get(count_key(key))?
        .is_some_and(|v| v.as_ref() != 0u64.to_be_bytes()))
}

fn count_key(parent: &str) -> Vec<u8> {
    let mut k = vec![0xff];
    k.extend_from_slice(parent.as_bytes());
    k
}

fn tx_add_child(
    children: &TransactionalTree,
    parent: &str,
    child: &str,
    delta: i64,
) -> TxResult<()> {
    if parent.is_empty() {
        return Ok(());
    }
    let n = children
        .get(count_key(parent))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    let n = n.saturating_add_signed(delta);
    if delta > 0 {
        children.insert(child_key(parent, child), &[][..])?;
    } else {
        children.remove(child_key(parent, child))?;
    }
    if n == 0 {
        children.remove(count_key(parent))?;
    } else {
        children.insert(count_key(parent), &n.to_be_bytes())?;
    }
    Ok(())
}

/// The snapshot records of one daemon.
#[derive(Clone)]
pub struct Records {
    db: sled::Db,
    snapshots: sled::Tree,
    children: sled::Tree,
    record_writes: std::sync::Arc<std::sync::Mutex<()>>,
    /// Where the database is, for its free space ([`ROOM_KEPT`]).
    room_at: Option<std::path::PathBuf>,
}

impl Records {
    pub fn open(db: &sled::Db) -> Result<Self, RecordError> {
        Ok(Records {
            snapshots: db.open_tree("snapshots")?,
            children: db.open_tree("snapshot_children")?,
            db: db.clone(),
            record_writes: Default::default(),
            room_at: None,
        })
    }

    /// Refuses new records while the filesystem of `dir` has less than
    /// [`ROOM_KEPT`] free.
    pub fn keeping_room_in(mut self, dir: &std::path::Path) -> Self {
        self.room_at = Some(dir.to_path_buf());
        self
    }

    fn ensure_room(&self) -> Result<(), RecordError> {
        let Some(dir) = &self.room_at else {
            return Ok(());
        };
        // A filesystem that cannot say leaves the check to the write.
        let Ok(free) = slayerfs_layerfs::store::upper::free_bytes(dir) else {
            return Ok(());
        };
        if free < ROOM_KEPT {
            return Err(RecordError::NoRoom {
                free_kib: free >> 10,
            });
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Snapshot, RecordError> {
        let bytes = self
            .snapshots
            .get(key.as_bytes())?
            .ok_or_else(|| RecordError::NotFound(key.to_string()))?;
        let rec = SnapshotRecord::decode(bytes.as_ref()).map_err(|e| RecordError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Snapshot::from_record(key.to_string(), rec)
    }

    /// Creates an active or view snapshot of `parent` (empty: none).
    pub fn create(
        &self,
        key: &str,
        parent: &str,
        kind: SnapshotKind,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot, RecordError> {
        if !matches!(kind, SnapshotKind::Active | SnapshotKind::View) {
            return Err(RecordError::InvalidArgument(format!(
                "snapshot {key}: only active and view snapshots are created"
            )));
        }
        self.insert_new(key, parent, kind, labels, String::new())
    }

    /// Creates committed snapshot `key` of `parent` straight from `layer`
    /// (a layer pulled lazily: nothing was ever active).
    pub fn create_committed(
        &self,
        key: &str,
        parent: &str,
        layer: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot, RecordError> {
        self.insert_new(
            key,
            parent,
            SnapshotKind::Committed,
            labels,
            layer.to_string(),
        )
    }

    fn insert_new(
        &self,
        key: &str,
        parent: &str,
        kind: SnapshotKind,
        labels: BTreeMap<String, String>,
        layer: String,
    ) -> Result<Snapshot, RecordError> {
        check_key(key)?;
        validate_labels(&labels)?;
        self.ensure_room()?;
        let id = self.db.generate_id()? + 1;
        let now = SystemTime::now();
        let snap = Snapshot {
            key: key.to_string(),
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            layer,
        };
        let _changes = self.record_writes.lock().unwrap_or_else(|p| p.into_inner());
        let r = (&self.snapshots, &self.children).transaction(|(s, c)| {
            if tx_get(s, key)?.is_some() {
                return abort(RecordError::AlreadyExists(key.to_string()));
            }
            if !parent.is_empty() {
                match tx_get(s, parent)? {
                    None => {
                        return abort(RecordError::NotFound(format!(
                            "{parent} (the parent of {key})"
                        )))
                    }
                    Some(p) if p.kind != SnapshotKind::Committed => {
                        // containerd's own stores answer InvalidArgument here.
                        return abort(RecordError::InvalidArgument(format!(
                            "parent {parent} of {key} is not committed"
                        )));
                    }
                    Some(_) => {}
                }
            }
            s.insert(key.as_bytes(), snap.record().encode_to_vec())?;
            tx_add_child(c, parent, key, 1)?;
            Ok(())
        });
        finish_tx(r)?;
        if let Err(e) = self.db.flush() {
            // Not durable (a full disk): taken back, so that the caller's
            // error leaves no snapshot behind and a retry can succeed.
            let undo = (&self.snapshots, &self.children).transaction(|(s, c)| {
                s.remove(key.as_bytes())?;
                tx_add_child(c, parent, key, -1)?;
                Ok(())
            });
            if let Err(u) = finish_tx::<_, RecordError>(undo) {
                tracing::error!(key, error = %u, "cannot take back a snapshot record that was not flushed");
            }
            return Err(e.into());
        }
        Ok(snap)
    }

    /// Commits active snapshot `key` as `name`, whose changes became
    /// `layer`; the record keeps its id.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        layer: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Snapshot, RecordError> {
        check_key(name)?;
        validate_labels(&labels)?;
        self.ensure_room()?;
        let _changes = self.record_writes.lock().unwrap_or_else(|p| p.into_inner());
        let r = (&self.snapshots, &self.children).transaction(|(s, c)| {
            let Some(active) = tx_get(s, key)? else {
                return abort(RecordError::NotFound(key.to_string()));
            };
            if active.kind != SnapshotKind::Active {
                return abort(RecordError::FailedPrecondition(format!(
                    "snapshot {key} is not active: only an active snapshot can be committed"
                )));
            }
            if tx_get(s, name)?.is_some() {
                return abort(RecordError::AlreadyExists(name.to_string()));
            }
            let now = SystemTime::now();
            let committed = Snapshot {
                key: name.to_string(),
                kind: SnapshotKind::Committed,
                labels: labels.clone(),
                // A committed snapshot is a new snapshot, as in containerd.
                created: now,
                updated: now,
                layer: layer.to_string(),
                ..active.clone()
            };
            s.remove(key.as_bytes())?;
            s.insert(name.as_bytes(), committed.record().encode_to_vec())?;
            tx_add_child(c, &active.parent, key, -1)?;
            tx_add_child(c, &active.parent, name, 1)?;
            Ok(committed)
        });
        let committed = finish_tx(r)?;
        self.db.flush()?;
        Ok(committed)
    }

    /// Removes snapshot `key`, which must have no children.
    pub fn remove(&self, key: &str) -> Result<Snapshot, RecordError> {
        let _changes = self.record_writes.lock().unwrap_or_else(|p| p.into_inner());
        let r = (&self.snapshots, &self.children).transaction(|(s, c)| {
            let Some(snap) = tx_get(s, key)? else {
                return abort(RecordError::NotFound(key.to_string()));
            };
            if tx_has_children(c, key)? {
                return abort(RecordError::FailedPrecondition(format!(
                    "snapshot {key} has children; remove them first"
                )));
            }
            s.remove(key.as_bytes())?;
            tx_add_child(c, &snap.parent, key, -1)?;
            Ok(snap)
        });
        let removed = finish_tx(r)?;
        self.db.flush()?;
        Ok(removed)
    }

    /// Updates labels as containerd's Update does: no field paths replaces
    /// all labels; `labels` replaces all labels; `labels.KEY` sets or (with
    /// no value in `labels`) removes one. Other fields cannot change.
    pub fn update(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Snapshot, RecordError> {
        self.ensure_room()?;
        for p in fieldpaths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(RecordError::InvalidArgument(format!(
                    "cannot update field {p} of snapshot {key}: only labels change"
                )));
            }
        }
        let _changes = self.record_writes.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.snapshots.transaction(|s| {
            let Some(mut snap) = tx_get(s, key)? else {
                return abort(RecordError::NotFound(key.to_string()));
            };
            if fieldpaths.is_empty() || fieldpaths.iter().any(|p| p == "labels") {
                snap.labels = labels.clone();
            } else {
                for p in fieldpaths {
                    let name = &p["labels.".len()..];
                    match labels.get(name) {
                        Some(v) => snap.labels.insert(name.to_string(), v.clone()),
                        None => snap.labels.remove(name),
                    };
                }
            }
            if let Err(e) = validate_labels(&snap.labels) {
                return abort(e);
            }
            snap.updated = SystemTime::now();
            s.insert(key.as_bytes(), snap.record().encode_to_vec())?;
            Ok(snap)
        });
        let updated = finish_tx(r)?;
        self.db.flush()?;
        Ok(updated)
    }

    /// Every snapshot, in key order.
    pub fn all(&self) -> Result<Vec<Snapshot>, RecordError> {
        self.snapshots
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let rec = SnapshotRecord::decode(v.as_ref()).map_err(|e| RecordError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                Snapshot::from_record(key, rec)
            })
            .collect()
    }

    /// The keys of a snapshot's children.
    pub fn children(&self, key: &str) -> Result<Vec<String>, RecordError> {
        let mut prefix = key.as_bytes().to_vec();
        prefix.push(0);
        Ok(suffixes(&self.children, &prefix)?
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }
}

#[cfg(test)]
mod tests;

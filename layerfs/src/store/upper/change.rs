//! A change to an upper layer: its writes, seen by its own thread before
//! they commit, then committed whole — one journal record, then applied
//! to the upper's trees while no read of them runs — or, dropped, not at
//! all.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::MutexGuard;
use std::thread::ThreadId;

use slayerfs_proto::store::{ChunkSlices, DentryRecord, UpperInode};
use slayerfs_proto::Message;

use super::{
    flush_through, key_of, remove_data_file, slice_record, Upper, DENTRIES, INODES, META, REPLIES,
    SLICES,
};
use crate::geometry::Ino;
use crate::slice::SliceView;
use crate::store::journal::{Effect, CHECKPOINT_BYTES};
use crate::store::StoreError;
use crate::store::ROOM_KEPT;

/// How many request ids back replies are kept: only requests in flight
/// when a process died are sent again, and far fewer are in flight.
const REPLY_WINDOW: u64 = 1 << 16;

/// Which request a change answers: a request sent again (after a
/// restart) that an earlier change already answered gets that change's
/// outcome instead of being done twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId {
    /// The request's id on its connection; 0 for none.
    pub id: u64,
    /// The kernel sent it again.
    pub resent: bool,
}

impl OpId {
    /// A change no request asked for (or one nobody will send again).
    pub const NONE: OpId = OpId {
        id: 0,
        resent: false,
    };
}

/// The uncommitted writes of a change.
pub(super) struct Pending {
    owner: ThreadId,
    /// `(tree, key)` → the new value, or None for removed.
    writes: BTreeMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    /// Data files to remove once committed.
    files: Vec<Ino>,
}

impl Upper {
    /// Starts a change (waiting for the one in progress, if any).
    pub fn change(&self) -> Change<'_> {
        let serial = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        *self.pending_lock() = Some(Pending {
            owner: std::thread::current().id(),
            writes: BTreeMap::new(),
            files: Vec::new(),
        });
        Change {
            up: self,
            _serial: serial,
        }
    }

    fn pending_lock(&self) -> MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value the change in progress on this thread gave `key`
    /// (Some(None): it removed the key), if it touched it.
    pub(super) fn pending_get(&self, t: u8, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let pending = self.pending_lock();
        let p = pending.as_ref()?;
        if p.owner != std::thread::current().id() {
            return None;
        }
        p.writes.get(&(t, key.to_vec())).cloned()
    }

    /// Lays the writes of this thread's change under `prefix` over `out`.
    pub(super) fn pending_overlay(
        &self,
        t: u8,
        prefix: &[u8],
        out: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    ) {
        let pending = self.pending_lock();
        let Some(p) = pending.as_ref() else {
            return;
        };
        if p.owner != std::thread::current().id() {
            return;
        }
        for ((_, k), v) in p
            .writes
            .range((t, prefix.to_vec())..)
            .take_while(|((tt, k), _)| *tt == t && k.starts_with(prefix))
        {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
    }
}

/// A change in progress; reads through it (it derefs to the [`Upper`])
/// see its own writes.
pub struct Change<'a> {
    up: &'a Upper,
    _serial: MutexGuard<'a, ()>,
}

impl Deref for Change<'_> {
    type Target = Upper;

    fn deref(&self) -> &Upper {
        self.up
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        // Not committed: forgotten.
        *self.up.pending_lock() = None;
    }
}

impl Change<'_> {
    fn write(&self, t: u8, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(p) = self.up.pending_lock().as_mut() {
            p.writes.insert((t, key), value);
        }
    }

    /// A fresh inode number, never handed out before by this upper.
    pub fn allocate_ino(&self) -> Result<Ino, StoreError> {
        let mut rec = self.up.record.lock().unwrap_or_else(|p| p.into_inner());
        let ino = Ino(rec.next_ino);
        rec.next_ino += 1;
        self.write(
            META,
            self.up.id.0.to_be_bytes().to_vec(),
            Some(rec.encode_to_vec()),
        );
        Ok(ino)
    }

    pub fn put_inode(&self, ino: Ino, rec: &UpperInode) -> Result<(), StoreError> {
        self.write(INODES, self.up.key(ino).to_vec(), Some(rec.encode_to_vec()));
        Ok(())
    }

    /// Forgets an inode: its record, slices and (once committed) data file.
    pub fn remove_inode(&self, ino: Ino) -> Result<(), StoreError> {
        self.write(INODES, self.up.key(ino).to_vec(), None);
        self.truncate_slices(ino, 0)?;
        if let Some(p) = self.up.pending_lock().as_mut() {
            p.files.push(ino);
        }
        Ok(())
    }

    pub fn put_dentry(&self, dir: Ino, name: &[u8], rec: DentryRecord) -> Result<(), StoreError> {
        self.write(
            DENTRIES,
            self.up.key_with(dir, name),
            Some(rec.encode_to_vec()),
        );
        Ok(())
    }

    pub fn remove_dentry(&self, dir: Ino, name: &[u8]) -> Result<(), StoreError> {
        self.write(DENTRIES, self.up.key_with(dir, name), None);
        Ok(())
    }

    /// Removes every upper name of a directory.
    pub fn clear_dentries(&self, dir: Ino) -> Result<(), StoreError> {
        for (k, _) in self.up.scan(DENTRIES, &self.up.key(dir))? {
            self.write(DENTRIES, k, None);
        }
        Ok(())
    }

    pub fn put_chunk_slices(
        &self,
        ino: Ino,
        chunk: u64,
        slices: &[SliceView],
    ) -> Result<(), StoreError> {
        let key = self.up.key_with(ino, &chunk.to_be_bytes());
        let value = (!slices.is_empty()).then(|| {
            ChunkSlices {
                slices: slices.iter().map(slice_record).collect(),
            }
            .encode_to_vec()
        });
        self.write(SLICES, key, value);
        Ok(())
    }

    /// Drops the slice lists of chunks `from` and above.
    pub fn truncate_slices(&self, ino: Ino, from: u64) -> Result<(), StoreError> {
        let first = self.up.key_with(ino, &from.to_be_bytes());
        for (k, _) in self.up.scan(SLICES, &self.up.key(ino))? {
            if k >= first {
                self.write(SLICES, k, None);
            }
        }
        Ok(())
    }

    /// Commits the change: journal, then database, then data files. With
    /// `answer`, the change also records that it answered request
    /// `answer.0` with outcome `answer.1` (an inode, or 0).
    pub fn commit(self, answer: Option<(OpId, u64)>) -> Result<(), StoreError> {
        let Some(mut p) = self.up.pending_lock().take() else {
            return Ok(());
        };
        if let Some((op, outcome)) = answer.filter(|(op, _)| op.id != 0) {
            p.writes.insert(
                (REPLIES, key_of(self.up.id, op.id).to_vec()),
                Some(outcome.to_be_bytes().to_vec()),
            );
            if op.id % 4096 == 0 && op.id > REPLY_WINDOW {
                // Now and then, replies too old to be asked for again go.
                let old = self
                    .up
                    .tree(REPLIES)
                    .range(key_of(self.up.id, 0)..key_of(self.up.id, op.id - REPLY_WINDOW));
                for k in old.keys() {
                    p.writes.insert((REPLIES, k?.to_vec()), None);
                }
            }
        }
        if p.writes.is_empty() && p.files.is_empty() {
            return Ok(());
        }
        let mut effects: Vec<Effect> = p
            .writes
            .iter()
            .map(|((t, k), v)| match v {
                Some(v) => Effect::Set {
                    tree: *t,
                    key: k.clone(),
                    value: v.clone(),
                },
                None => Effect::Remove {
                    tree: *t,
                    key: k.clone(),
                },
            })
            .collect();
        effects.extend(
            p.files
                .iter()
                .map(|ino| Effect::RemoveDataFile { ino: ino.0 }),
        );
        // Refused before sled's log could fail (see ROOM_KEPT).
        if let Ok(free) = self.up.available_bytes() {
            if free < ROOM_KEPT {
                return Err(StoreError::NoRoom {
                    free_kib: free >> 10,
                });
            }
        }
        let journal_len = self.up.journal.append(&effects)?;
        {
            // A failure part way is a fault of the database: the journal
            // record is whole, and the next open replays it.
            let _applying = self.up.applying.write().unwrap_or_else(|p| p.into_inner());
            for ((t, k), v) in &p.writes {
                let tree = self.up.tree(*t);
                match v {
                    Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
                    None => tree.remove(k.as_slice())?,
                };
            }
        }
        for ino in p.files {
            remove_data_file(&self.up.data_dir, ino);
        }
        if journal_len >= CHECKPOINT_BYTES {
            // This change still holds the lock: no record can land in the
            // file being closed.
            let last = self.up.journal.rotate()?;
            flush_through(&self.up.db, &self.up.journal, last)?;
        }
        Ok(())
    }
}

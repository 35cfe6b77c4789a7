//! Parallel block writing: hash, deduplicate, compress and upload blocks on
//! several cores while the producer (a tar reader) keeps streaming.
//!
//! Memory stays bounded: the queue holds a few blocks and at most
//! `IN_FLIGHT_PER_WORKER × workers` are in flight, whatever the size of
//! the input.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::codec::{Compressor, MAX_BLOCK_SIZE};
use crate::id::BlockId;
use crate::parts::{part_digests, PartSize};
use crate::store::{BlockStore, ObjectKey, StoreError};

/// How blocks are written.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Blocks hashed and compressed at the same time (CPU threads).
    pub workers: usize,
    pub zstd_level: i32,
    /// Blocks are stored as one zstd frame per part, so that a reader can
    /// fetch a part alone; the report lists each block's part digests.
    pub part_size: PartSize,
}

/// The position of a submitted block; resolved to its id by [`WriteReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockSeq(pub u32);

/// What a finished writer did.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    /// Block id of each submitted block, by [`BlockSeq`].
    pub ids: Vec<BlockId>,
    /// Part digests of each submitted block, by [`BlockSeq`] (see
    /// [`crate::parts`]).
    pub parts: Vec<Vec<u8>>,
    /// Blocks uploaded by this writer.
    pub written: u64,
    /// Blocks that were in the store already, or submitted twice.
    pub present: u64,
    /// Plain bytes submitted.
    pub plain_bytes: u64,
    /// Compressed bytes uploaded.
    pub stored_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("block {seq}: {message}")]
    Block { seq: u32, message: String },
    #[error("block writer stopped")]
    Closed,
}

/// Blocks in flight per CPU worker (the rest wait on storage).
const IN_FLIGHT_PER_WORKER: usize = 3;

enum Outcome {
    Written { stored: u64 },
    Present,
}

/// Recycled block buffers: the number of 4 MiB buffers alive is bounded by
/// the queue and the blocks in flight, whatever the allocator does with
/// memory freed on other threads.
#[derive(Clone, Default)]
struct BufferPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BufferPool {
    const KEEP: usize = 32;

    fn take(&self) -> Vec<u8> {
        let recycled = self.free.lock().ok().and_then(|mut f| f.pop());
        recycled.unwrap_or_else(|| Vec::with_capacity(MAX_BLOCK_SIZE))
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < MAX_BLOCK_SIZE {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < Self::KEEP {
                buf.clear();
                free.push(buf);
            }
        }
    }
}

/// Writes blocks to a store in parallel. Submit with [`BlockWriter::submit`]
/// (async) or [`BlockWriter::submit_blocking`] (from a blocking thread), then
/// [`BlockWriter::finish`] to wait for every upload and learn the ids.
pub struct BlockWriter {
    pool: BufferPool,
    tx: mpsc::Sender<(BlockSeq, Vec<u8>)>,
    next: u32,
    plain_bytes: u64,
    task: tokio::task::JoinHandle<Result<WriteReport, WriteError>>,
}

impl BlockWriter {
    /// Starts a writer on the current tokio runtime.
    pub fn start(store: Arc<dyn BlockStore>, opts: WriterOptions) -> Self {
        let workers = opts.workers.max(1);
        let (tx, rx) = mpsc::channel(workers);
        let pool = BufferPool::default();
        let task = tokio::spawn(dispatch(store, opts, workers, rx, pool.clone()));
        BlockWriter {
            pool,
            tx,
            next: 0,
            plain_bytes: 0,
            task,
        }
    }

    /// An empty buffer with room for a whole block, recycled from blocks
    /// already written when possible. Fill it and submit it.
    pub fn buffer(&self) -> Vec<u8> {
        self.pool.take()
    }

    /// Reserves the next position for a block submitted later with
    /// [`BlockWriter::submit_reserved_blocking`]; every reserved position must
    /// be submitted before [`BlockWriter::finish`].
    pub fn reserve(&mut self) -> BlockSeq {
        let seq = BlockSeq(self.next);
        self.next += 1;
        seq
    }

    fn check(&mut self, seq: BlockSeq, data: &[u8]) -> Result<(), WriteError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(WriteError::Block {
                seq: seq.0,
                message: format!("{} bytes exceed the block size", data.len()),
            });
        }
        self.plain_bytes += data.len() as u64;
        Ok(())
    }

    /// Queues a block at a reserved position, waiting while the queue is
    /// full. Must not be called from an async context.
    pub fn submit_reserved_blocking(
        &mut self,
        seq: BlockSeq,
        data: Vec<u8>,
    ) -> Result<(), WriteError> {
        self.check(seq, &data)?;
        self.tx
            .blocking_send((seq, data))
            .map_err(|_| WriteError::Closed)
    }

    /// Queues a block, waiting while the queue is full. Must not be called
    /// from an async context.
    pub fn submit_blocking(&mut self, data: Vec<u8>) -> Result<BlockSeq, WriteError> {
        let seq = self.reserve();
        self.submit_reserved_blocking(seq, data)?;
        Ok(seq)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Queues a block, waiting while the queue is full.
    pub async fn submit(&mut self, data: Vec<u8>) -> Result<BlockSeq, WriteError> {
        let seq = self.reserve();
        self.check(seq, &data)?;
        self.tx
            .send((seq, data))
            .await
            .map_err(|_| WriteError::Closed)?;
        Ok(seq)
    }

    /// Waits for every queued block to be stored. The first failure is the
    /// error, whichever block it hit.
    pub async fn finish(self) -> Result<WriteReport, WriteError> {
        drop(self.tx);
        let mut report = self.task.await.map_err(|e| WriteError::Block {
            seq: 0,
            message: format!("writer task failed: {e}"),
        })??;
        if report.ids.len() != self.next as usize {
            return Err(WriteError::Block {
                seq: report.ids.len() as u32,
                message: format!("{} blocks reserved, {} stored", self.next, report.ids.len()),
            });
        }
        report.plain_bytes = self.plain_bytes;
        Ok(report)
    }
}

async fn dispatch(
    store: Arc<dyn BlockStore>,
    opts: WriterOptions,
    workers: usize,
    mut rx: mpsc::Receiver<(BlockSeq, Vec<u8>)>,
    pool: BufferPool,
) -> Result<WriteReport, WriteError> {
    let cpu = Arc::new(Semaphore::new(workers));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut ids: Vec<Option<BlockId>> = Vec::new();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut report = WriteReport::default();
    let mut jobs = JoinSet::new();
    let mut record = |res: Result<Result<Written, WriteError>, tokio::task::JoinError>,
                      report: &mut WriteReport|
     -> Result<(), WriteError> {
        let Written {
            seq,
            id,
            parts: digests,
            outcome,
        } = res.map_err(|e| WriteError::Block {
            seq: 0,
            message: e.to_string(),
        })??;
        let slot = seq.0 as usize;
        if ids.len() <= slot {
            ids.resize(slot + 1, None);
            parts.resize(slot + 1, Vec::new());
        }
        ids[slot] = Some(id);
        parts[slot] = digests;
        match outcome {
            Outcome::Written { stored } => {
                report.written += 1;
                report.stored_bytes += stored;
            }
            Outcome::Present => report.present += 1,
        }
        Ok(())
    };
    // CPU work is limited by `cpu`; more blocks than that may be in flight
    // so that uploads and syncs overlap with hashing and compressing.
    loop {
        while jobs.len() >= workers * IN_FLIGHT_PER_WORKER {
            if let Some(res) = jobs.join_next().await {
                record(res, &mut report)?;
            }
        }
        let Some((seq, data)) = rx.recv().await else {
            break;
        };
        let job = Job {
            store: store.clone(),
            cpu: cpu.clone(),
            seen: seen.clone(),
            pool: pool.clone(),
            opts,
        };
        jobs.spawn(job.write(seq, data));
    }
    while let Some(res) = jobs.join_next().await {
        record(res, &mut report)?;
    }
    report.ids = ids
        .into_iter()
        .enumerate()
        .map(|(seq, id)| {
            id.ok_or(WriteError::Block {
                seq: seq as u32,
                message: "never completed".into(),
            })
        })
        .collect::<Result<_, _>>()?;
    report.parts = parts;
    Ok(report)
}

/// What writing one block needs.
struct Job {
    store: Arc<dyn BlockStore>,
    cpu: Arc<Semaphore>,
    seen: Arc<Mutex<HashSet<BlockId>>>,
    pool: BufferPool,
    opts: WriterOptions,
}

/// One block done.
struct Written {
    seq: BlockSeq,
    id: BlockId,
    parts: Vec<u8>,
    outcome: Outcome,
}

impl Job {
    async fn write(self, seq: BlockSeq, data: Vec<u8>) -> Result<Written, WriteError> {
        let fail = |message: String| WriteError::Block {
            seq: seq.0,
            message,
        };
        let permit = self.cpu.acquire().await.map_err(|e| fail(e.to_string()))?;
        let part_size = self.opts.part_size;
        let (id, parts, data) = tokio::task::spawn_blocking(move || {
            (BlockId::of(&data), part_digests(&data, part_size), data)
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
        drop(permit);
        let first = self
            .seen
            .lock()
            .map_err(|e| fail(e.to_string()))?
            .insert(id);
        let key = ObjectKey::Block(id);
        if !first || self.store.exists(&key).await? {
            self.pool.give(data);
            return Ok(Written {
                seq,
                id,
                parts,
                outcome: Outcome::Present,
            });
        }
        let permit = self.cpu.acquire().await.map_err(|e| fail(e.to_string()))?;
        let (level, part) = (self.opts.zstd_level, part_size.get() as usize);
        let (stored, data) =
            tokio::task::spawn_blocking(move || (compress(&data, level, part), data))
                .await
                .map_err(|e| fail(e.to_string()))?;
        drop(permit);
        self.pool.give(data);
        let stored = stored.map_err(|e| fail(e.to_string()))?;
        let len = stored.len() as u64;
        // Existence was checked above, before compressing; asking again
        // would be a second HEAD per new block.
        self.store.put_replacing(&key, stored).await?;
        Ok(Written {
            seq,
            id,
            parts,
            outcome: Outcome::Written { stored: len },
        })
    }
}

thread_local! {
    /// One zstd context per blocking thread, reused across blocks.
    static COMPRESSOR: std::cell::RefCell<Option<Compressor>> = const { std::cell::RefCell::new(None) };
}

/// The stored form of a block: a frame per part, then the seek table.
fn compress(plain: &[u8], level: i32, part: usize) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|c| c.level() != level) {
            *slot = Some(Compressor::new(level)?);
        }
        match slot.as_mut() {
            Some(c) => crate::seekable::encode(c, plain, part),
            None => Err(std::io::Error::other("no compressor")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{fetch_block, LocalStore};
    use crate::ObjectKey;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_verifies_and_deduplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(dir.path()).unwrap());
        let opts = WriterOptions {
            workers: 2,
            zstd_level: 3,
            part_size: PartSize::DEFAULT,
        };
        let blocks: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![i % 7; 100_000 + i as usize])
            .collect();
        let mut w = BlockWriter::start(store.clone(), opts);
        for b in &blocks {
            w.submit(b.clone()).await.unwrap();
        }
        let r = w.finish().await.unwrap();
        assert_eq!(r.ids.len(), 20);
        assert_eq!(r.written + r.present, 20);
        assert_eq!(r.written, 20, "every block differs in length");
        for (b, id) in blocks.iter().zip(&r.ids) {
            assert_eq!(&fetch_block(store.as_ref(), id).await.unwrap(), b);
        }
        // The same blocks again: nothing new is written.
        let mut w = BlockWriter::start(store.clone(), opts);
        for b in blocks.iter().chain(blocks.iter()) {
            w.submit(b.clone()).await.unwrap();
        }
        let r2 = w.finish().await.unwrap();
        assert_eq!((r2.written, r2.present), (0, 40));
        assert_eq!(&r2.ids[..20], &r.ids[..]);
    }

    #[tokio::test]
    async fn oversized_objects_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let id = BlockId::of(b"big");
        let key = ObjectKey::Block(id);
        let path = store.path_of(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0u8; key.max_stored_bytes() as usize + 1]).unwrap();
        let err = store.get(&key).await.unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[tokio::test]
    async fn a_store_failure_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store: Arc<dyn BlockStore> = Arc::new(LocalStore::open(&root).unwrap());
        // A file where the blocks directory should be makes every write fail.
        std::fs::write(root.join("blocks"), b"").unwrap();
        let mut w = BlockWriter::start(
            store,
            WriterOptions {
                workers: 1,
                zstd_level: 1,
                part_size: PartSize::DEFAULT,
            },
        );
        let _ = w.submit(vec![1; 10]).await;
        let err = w.finish().await.unwrap_err().to_string();
        assert!(err.contains("blocks/"), "{err}");
    }
}

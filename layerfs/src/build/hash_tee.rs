//! Reading a stream on its own thread while a second thread hashes it, so
//! that neither the digest nor (for compressed layers) decompression sits on
//! the tar parser's critical path.
//!
//! The stream is always read to its end and hashed whole, even when the
//! consumer stops early, so the digest covers every byte.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

const CHUNK: usize = 1 << 20;
const DEPTH: usize = 4;

type Chunk = Arc<Vec<u8>>;

/// The consumer's end: a `Read` over the chunks the pump thread produced.
pub struct ChunkReader {
    rx: Receiver<io::Result<Chunk>>,
    current: Option<Chunk>,
    pos: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(c) = &self.current {
                if self.pos < c.len() {
                    let n = buf.len().min(c.len() - self.pos);
                    buf[..n].copy_from_slice(&c[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = Some(chunk);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The pump finished: end of stream.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

/// The digest of a pumped stream, once it has been read to its end.
pub struct StreamHash {
    pump: JoinHandle<io::Result<()>>,
    hasher: JoinHandle<([u8; 32], u64)>,
}

impl StreamHash {
    /// Waits for the end of the stream: its sha256 and length, or the read
    /// error that ended it.
    pub fn finish(self) -> io::Result<([u8; 32], u64)> {
        let pumped = self
            .pump
            .join()
            .map_err(|_| io::Error::other("stream reader thread panicked"))?;
        let hashed = self
            .hasher
            .join()
            .map_err(|_| io::Error::other("hashing thread panicked"))?;
        pumped.map(|()| hashed)
    }
}

fn read_chunk(inner: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK);
    inner.take(CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

fn pump(
    mut inner: impl Read,
    to_consumer: SyncSender<io::Result<Chunk>>,
    to_hasher: SyncSender<Chunk>,
) -> io::Result<()> {
    let mut consumer = Some(to_consumer);
    loop {
        let chunk = match read_chunk(&mut inner) {
            Ok(c) if c.is_empty() => return Ok(()),
            Ok(c) => Arc::new(c),
            Err(e) => {
                // The consumer gets the error itself (its type may matter to
                // it); the thread's result carries a copy of the message.
                let copy = io::Error::new(e.kind(), e.to_string());
                if let Some(tx) = &consumer {
                    let _ = tx.send(Err(e));
                }
                return Err(copy);
            }
        };
        if to_hasher.send(chunk.clone()).is_err() {
            return Err(io::Error::other("hashing thread stopped"));
        }
        // A consumer that stopped early no longer gets data, but the stream
        // is still read and hashed to its end.
        if consumer
            .as_ref()
            .is_some_and(|tx| tx.send(Ok(chunk)).is_err())
        {
            consumer = None;
        }
    }
}

/// Starts reading `inner` on a thread (`name`) and hashing it on another.
pub fn spawn_hashed<R: Read + Send + 'static>(
    inner: R,
    name: &str,
) -> io::Result<(ChunkReader, StreamHash)> {
    let (tx, rx) = sync_channel(DEPTH);
    let (htx, hrx) = sync_channel::<Chunk>(DEPTH);
    let hasher = std::thread::Builder::new()
        .name(format!("{name}-sha256"))
        .spawn(move || {
            let mut h = Sha256::new();
            let mut len = 0u64;
            for c in hrx {
                h.update(c.as_slice());
                len += c.len() as u64;
            }
            (h.finalize().into(), len)
        })?;
    let pump = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || pump(inner, tx, htx))?;
    Ok((
        ChunkReader {
            rx,
            current: None,
            pos: 0,
            done: false,
        },
        StreamHash { pump, hasher },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_digest_survive_the_pipe_and_early_stops() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut r, h) = spawn_hashed(std::io::Cursor::new(data.clone()), "t").unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let (digest, len) = h.finish().unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(digest[..], Sha256::digest(&data)[..]);
        // A consumer that stops after a few bytes still gets the full digest.
        let (mut r, h) = spawn_hashed(std::io::Cursor::new(data.clone()), "t").unwrap();
        let mut few = [0u8; 10];
        r.read_exact(&mut few).unwrap();
        drop(r);
        assert_eq!(h.finish().unwrap().0[..], Sha256::digest(&data)[..]);
    }
}

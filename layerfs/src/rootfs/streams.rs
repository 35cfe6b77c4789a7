//! Which files are being read sequentially: per inode, where its last
//! read ended, where its run began and how many reads in a row followed
//! on. A sequential reader gets whole blocks and a read-ahead window of
//! twice what its run has read so far (so it grows while the reads stay
//! sequential, and a reader that stops after a few pages, as `head` or a
//! loader reading a header does, fetches nothing past them); any other
//! read gets only what it asked for, and resets the window.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::geometry::{Ino, BLOCK_SIZE};

/// How far before where the last read ended a read does not break a run
/// (nor lengthens it): the kernel sends a reader's read-ahead as several
/// requests at once, which FUSE threads may take out of order.
const BEHIND: u64 = 2 << 20;
/// How far past it a read still follows on (a request overtaken); kept
/// small, since a random reader lands this close by chance.
const AHEAD: u64 = 256 << 10;
/// Inodes tracked at most; past it the oldest knowledge is dropped (a
/// reader then starts again with a small window).
const TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The furthest any read of this run reached.
    next: u64,
    /// Where the run began.
    start: u64,
    /// Reads in a row that followed on (the first read of a file at its
    /// start counts as one).
    run: u32,
    /// The run began at the start of the file.
    from_start: bool,
}

/// What a read is, for the fetches it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// Part of a sequential run: the second read in a row that followed
    /// on, or any read of a run that began at the start of the file.
    pub sequential: bool,
    /// Bytes past this read to fetch ahead, at most the configured blocks.
    pub ahead_bytes: u64,
}

pub(crate) struct Streams {
    max_ahead: u64,
    map: Mutex<HashMap<Ino, Stream>>,
}

impl Streams {
    /// Read-ahead grows up to `max_ahead` blocks.
    pub fn new(max_ahead: u32) -> Self {
        Streams {
            max_ahead: u64::from(max_ahead) * BLOCK_SIZE as u64,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Records a read of bytes `offset..end` of `ino` and says what it is.
    pub fn observe(&self, ino: Ino, offset: u64, end: u64) -> Access {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TRACKED && !map.contains_key(&ino) {
            map.clear();
        }
        let fresh = Stream {
            next: end,
            start: offset,
            run: u32::from(offset == 0),
            from_start: offset == 0,
        };
        let stream = match map.entry(ino) {
            Entry::Vacant(v) => v.insert(fresh),
            Entry::Occupied(o) => {
                let s = o.into_mut();
                if offset >= s.next && offset <= s.next.saturating_add(AHEAD) {
                    s.run = s.run.saturating_add(1);
                    s.next = end;
                } else if offset < s.next && offset.saturating_add(BEHIND) >= s.next {
                    // Overtaken, or a re-read: the run goes on, no longer.
                    s.next = s.next.max(end);
                } else {
                    *s = fresh;
                }
                s
            }
        };
        let sequential = stream.run >= 2 || (stream.run == 1 && stream.from_start);
        let ahead = match sequential {
            true => (stream.next - stream.start).saturating_mul(2),
            false => 0,
        };
        Access {
            sequential,
            ahead_bytes: ahead.min(self.max_ahead),
        }
    }

    /// Forgets `ino` (its file was closed for the last time).
    pub fn forget(&self, ino: Ino) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;

    #[test]
    fn windows_grow_while_reads_follow_on_and_stop_when_they_do_not() {
        let s = Streams::new(8);
        let ino = Ino(5);
        let mut at = 0;
        let mut windows = Vec::new();
        for _ in 0..6 {
            let a = s.observe(ino, at, at + 4 * M);
            assert!(a.sequential);
            windows.push(a.ahead_bytes / M);
            at += 4 * M;
        }
        // Twice what the run has read, up to eight blocks.
        assert_eq!(windows, [8, 16, 24, 32, 32, 32]);
        // Out of order within the slack still follows on.
        assert!(s.observe(ino, at + 128 * K, at + 256 * K).sequential);
        assert!(s.observe(ino, at, at + 128 * K).sequential);
        at += 256 * K;
        // Random reads behind one another never make a run.
        let far = 100 << 20;
        assert!(!s.observe(ino, far, far + 4 * K).sequential);
        assert!(
            !s.observe(ino, far - (1 << 20), far - (1 << 20) + 4 * K)
                .sequential
        );
        assert!(
            !s.observe(ino, far - (2 << 20), far - (2 << 20) + 4 * K)
                .sequential
        );
        assert!(s.observe(ino, at, at + 4 * K).ahead_bytes == 0);
        // A jump: no read-ahead, and a run starts again: the first read
        // that follows on is not yet sequential, the second is.
        let jump = 300 << 20;
        let random = Access {
            sequential: false,
            ahead_bytes: 0,
        };
        assert_eq!(s.observe(ino, jump, jump + 4 * K), random);
        assert_eq!(s.observe(ino, jump + 4 * K, jump + 8 * K), random);
        let a = s.observe(ino, jump + 8 * K, jump + 12 * K);
        assert_eq!((a.sequential, a.ahead_bytes), (true, 24 * K));
        // Too far past the end of the last read is a jump.
        assert!(
            !s.observe(ino, jump + (1 << 20), jump + (1 << 20) + 4 * K)
                .sequential
        );
        // A first read in the middle of a file is random; at 0 it is not.
        assert!(!s.observe(Ino(6), 10 << 20, (10 << 20) + 4 * K).sequential);
        assert!(s.observe(Ino(7), 0, 4 * K).sequential);
        // A reader that stops after a few pages gets no block ahead.
        assert!(s.observe(Ino(8), 0, 128 * K).ahead_bytes < BLOCK_SIZE as u64);
        s.forget(Ino(7));
        assert!(!s.observe(Ino(7), 8 << 20, (8 << 20) + 4 * K).sequential);
        // No read-ahead at all when configured so.
        assert_eq!(Streams::new(0).observe(ino, 0, K).ahead_bytes, 0);
    }
}

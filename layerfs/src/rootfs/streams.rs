//! Which files are being read sequentially: per inode, where its last
//! read ended and how many reads in a row followed on from there. A
//! sequential reader gets whole blocks and a read-ahead window that
//! doubles while it stays sequential; any other read gets only what it
//! asked for, and resets the window.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::geometry::Ino;

/// How far from where the last read ended a read still counts as
/// following it: the kernel sends a reader's read-ahead as several
/// requests at once, which FUSE threads may answer out of order.
const SLACK: u64 = 2 << 20;
/// Inodes tracked at most; past it the oldest knowledge is dropped (a
/// reader then starts again with a small window).
const TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The furthest any read of this run reached.
    next: u64,
    /// Reads in a row that followed on.
    run: u32,
}

/// What a read is, for the fetches it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// Part of a sequential run (or the first read at the start of a file).
    pub sequential: bool,
    /// Blocks to fetch ahead of this read.
    pub ahead_blocks: u32,
}

pub(crate) struct Streams {
    max_ahead: u32,
    map: Mutex<HashMap<Ino, Stream>>,
}

impl Streams {
    /// Read-ahead grows up to `max_ahead` blocks.
    pub fn new(max_ahead: u32) -> Self {
        Streams {
            max_ahead,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Records a read of bytes `offset..end` of `ino` and says what it is.
    pub fn observe(&self, ino: Ino, offset: u64, end: u64) -> Access {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TRACKED && !map.contains_key(&ino) {
            map.clear();
        }
        let stream = map.entry(ino).or_insert(Stream {
            next: u64::MAX,
            run: 0,
        });
        let follows = if stream.next == u64::MAX {
            offset == 0
        } else {
            offset.abs_diff(stream.next) <= SLACK
        };
        if follows {
            stream.run = stream.run.saturating_add(1);
            stream.next = match stream.next {
                u64::MAX => end,
                next => next.max(end),
            };
        } else {
            *stream = Stream { next: end, run: 0 };
        }
        let ahead = match stream.run {
            0 => 0,
            run => 1u32.checked_shl(run - 1).unwrap_or(u32::MAX),
        };
        Access {
            sequential: follows,
            ahead_blocks: ahead.min(self.max_ahead),
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

    #[test]
    fn windows_grow_while_reads_follow_on_and_stop_when_they_do_not() {
        let s = Streams::new(8);
        let ino = Ino(5);
        let mut at = 0;
        let mut windows = Vec::new();
        for _ in 0..6 {
            let a = s.observe(ino, at, at + 128 * K);
            assert!(a.sequential);
            windows.push(a.ahead_blocks);
            at += 128 * K;
        }
        assert_eq!(windows, [1, 2, 4, 8, 8, 8]);
        // Out of order within the slack still follows on.
        assert!(s.observe(ino, at + 256 * K, at + 384 * K).sequential);
        assert!(s.observe(ino, at, at + 128 * K).sequential);
        // A jump: no read-ahead, and the window starts again.
        let a = s.observe(ino, 300 << 20, (300 << 20) + 4 * K);
        assert_eq!(
            a,
            Access {
                sequential: false,
                ahead_blocks: 0
            }
        );
        let a = s.observe(ino, (300 << 20) + 4 * K, (300 << 20) + 8 * K);
        assert_eq!(a.ahead_blocks, 1);
        // A first read in the middle of a file is random; at 0 it is not.
        assert!(!s.observe(Ino(6), 10 << 20, (10 << 20) + 4 * K).sequential);
        assert!(s.observe(Ino(7), 0, 4 * K).sequential);
        s.forget(Ino(7));
        assert!(!s.observe(Ino(7), 8 << 20, (8 << 20) + 4 * K).sequential);
        // No read-ahead at all when configured so.
        assert_eq!(Streams::new(0).observe(ino, 0, K).ahead_blocks, 0);
    }
}

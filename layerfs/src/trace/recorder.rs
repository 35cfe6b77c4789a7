//! Recording what a mount reads during its first seconds, by merged inode
//! number (cheap on the read path: one lock, no lookups); naming the
//! inodes is done once the recording ends.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::format::MAX_RANGES;
use super::ranges;
use crate::geometry::Ino;

/// How much a recording takes.
#[derive(Debug, Clone, Copy)]
pub struct RecorderLimits {
    /// Reads after this long from the start are not recorded.
    pub window: Duration,
    /// The most files recorded; reads of others are not.
    pub max_files: usize,
    /// The most ranges kept per file (closer ones are joined past it).
    pub max_ranges: usize,
}

#[derive(Default)]
struct Reads {
    at: HashMap<Ino, usize>,
    files: Vec<(Ino, Vec<Range<u64>>)>,
}

/// One recording.
pub struct Recorder {
    until: Instant,
    limits: RecorderLimits,
    reads: Mutex<Reads>,
    over: AtomicBool,
}

impl Recorder {
    pub fn new(limits: RecorderLimits) -> Self {
        Recorder {
            until: Instant::now() + limits.window,
            limits,
            reads: Mutex::default(),
            over: AtomicBool::new(false),
        }
    }

    /// When the window closes.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// Whether nothing more is recorded.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed) || Instant::now() >= self.until
    }

    /// A read of `range` of lower inode `ino`.
    pub fn note(&self, ino: Ino, range: Range<u64>) {
        if self.is_over() || range.start >= range.end {
            return;
        }
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        let Reads { at, files } = &mut *reads;
        let i = match at.get(&ino) {
            Some(&i) => i,
            None => {
                if files.len() >= self.limits.max_files {
                    self.over.store(true, Ordering::Relaxed);
                    return;
                }
                at.insert(ino, files.len());
                files.push((ino, Vec::new()));
                files.len() - 1
            }
        };
        let cap = self.limits.max_ranges.clamp(1, MAX_RANGES);
        ranges::add(&mut files[i].1, range, cap);
    }

    /// Ends the recording: the files read, in the order first read, with
    /// their ranges.
    pub fn finish(&self) -> Vec<(Ino, Vec<Range<u64>>)> {
        self.over.store(true, Ordering::Relaxed);
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut reads.files)
    }
}

#[cfg(test)]
// A one-range Vec is what a trace of a single read is.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn limits(max_files: usize) -> RecorderLimits {
        RecorderLimits {
            window: Duration::from_secs(60),
            max_files,
            max_ranges: 4,
        }
    }

    #[test]
    fn records_files_in_first_read_order_within_its_limits() {
        let r = Recorder::new(limits(2));
        r.note(Ino(7), 0..100);
        r.note(Ino(3), 50..60);
        r.note(Ino(7), 100..200);
        // A third file is past the limit: the recording is over.
        r.note(Ino(9), 0..1);
        r.note(Ino(3), 0..10);
        assert!(r.is_over());
        assert_eq!(
            r.finish(),
            vec![(Ino(7), vec![0..200]), (Ino(3), vec![50..60])]
        );
        // Nothing is recorded after the end.
        r.note(Ino(1), 0..1);
        assert!(r.finish().is_empty());
    }

    #[test]
    fn nothing_after_the_window() {
        let r = Recorder::new(RecorderLimits {
            window: Duration::ZERO,
            ..limits(10)
        });
        r.note(Ino(2), 0..1);
        assert!(r.finish().is_empty());
    }
}

//! A mapped table brought back into memory in one sweep once the kernel has
//! dropped much of it: read back a fault at a time, a cold walk of a tree
//! waits on a small disk read for every 128 KiB of records it touches.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lookups between two looks at how much of the map is in memory.
const EVERY: u32 = 1024;
/// The least time between two looks.
const INTERVAL: Duration = Duration::from_secs(1);
/// Below this share of pages in memory the whole map is asked for.
const LOW: f64 = 0.9;

#[derive(Debug, Default)]
pub(crate) struct Refill {
    touches: AtomicU32,
    last: Mutex<Option<Instant>>,
}

impl Refill {
    /// Notes a lookup in `map`; now and then, if much of it is out of
    /// memory, asks the kernel to read all of it back (asynchronously, in
    /// large reads).
    pub fn touch(&self, map: &memmap2::Mmap) {
        if !self
            .touches
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(EVERY)
        {
            return;
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        if resident(map) < LOW {
            // Advice only: a failure leaves the faults as they were.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
    }
}

/// The share of `map`'s pages in memory (1.0 if the kernel will not say).
pub(crate) fn resident(map: &memmap2::Mmap) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let Ok(page) = usize::try_from(page) else {
        return 1.0;
    };
    if map.is_empty() || page == 0 {
        return 1.0;
    }
    let pages = map.len().div_ceil(page);
    let mut v = vec![0u8; pages];
    // SAFETY: the range is the whole mapping, which starts on a page
    // boundary (mmap placed it); `v` holds one byte per page of it.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), v.as_mut_ptr()) };
    if rc != 0 {
        return 1.0;
    }
    v.iter().filter(|b| **b & 1 == 1).count() as f64 / pages as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_dropped_map_is_read_back_on_the_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        std::fs::write(&path, vec![7u8; 4 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: plain advice on a file of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        // SAFETY: the file is not written while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        assert!(
            resident(&map) < 0.5,
            "the pages were not dropped: {}",
            resident(&map)
        );
        let refill = Refill::default();
        refill.touch(&map);
        let until = Instant::now() + Duration::from_secs(5);
        while resident(&map) < 0.99 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(resident(&map) >= 0.99, "read back: {}", resident(&map));
        // The next look waits its interval.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        for _ in 0..EVERY {
            refill.touch(&map);
        }
        assert!(refill
            .last
            .lock()
            .unwrap()
            .is_some_and(|t| t.elapsed() < INTERVAL));
    }
}

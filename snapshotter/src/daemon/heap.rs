//! Gives the system back the memory large transient work freed.
//!
//! Loading a layer's index or building a chain's merged view allocates
//! tens of MiB that are freed at once, interleaved with sled's long-lived
//! allocations; glibc keeps such freed pages in its heap, so a node that
//! pulled ten large images held about twice the memory it used.

/// Returns free whole pages of every malloc arena to the system.
pub(crate) fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

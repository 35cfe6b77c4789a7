//! Work no one waits for (garbage collection), on threads of a lower
//! scheduling priority, so that what a node is waiting for (a Prepare, a
//! container's read) goes first while the CPUs are busy. On an idle
//! machine it runs as fast as any other thread.

/// The nice value of background threads (0 is everyone else's).
const NICE: libc::c_int = 5;

/// The job panicked or its thread could not be made.
#[derive(Debug, thiserror::Error)]
#[error("background work failed: {0}")]
pub(crate) struct BackgroundError(String);

fn lower_this_threads_priority() {
    // SAFETY: on Linux, PRIO_PROCESS with id 0 reads and sets the calling
    // thread's nice value only. Never raised (a process already nicer
    // stays so); a failure leaves it at the normal priority.
    unsafe {
        if libc::getpriority(libc::PRIO_PROCESS as _, 0) < NICE {
            libc::setpriority(libc::PRIO_PROCESS as _, 0, NICE);
        }
    }
}

/// Starts a job on a background thread of its own; it runs from now on,
/// whether or not the answer is awaited yet.
pub(crate) fn run_alone<R, F>(
    name: &str,
    f: F,
) -> impl std::future::Future<Output = Result<R, BackgroundError>>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_threads_priority();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .map_err(|p| BackgroundError(slayerfs_chunkstore::panic_text(p.as_ref())));
            let _ = tx.send(r);
        })
        .map_err(|e| BackgroundError(format!("starting a thread: {e}")));
    async move {
        started?;
        rx.await
            .map_err(|_| BackgroundError("the background thread stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> libc::c_int {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) }
    }

    #[tokio::test]
    async fn jobs_run_niced_at_once_and_a_panic_is_an_error() {
        let normal = nice_of_this_thread();
        assert_eq!(
            run_alone("t", nice_of_this_thread).await.unwrap(),
            normal.max(NICE)
        );
        let e = run_alone("t", || -> u8 { panic!("boom") })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        // It runs before its answer is awaited.
        let (tx, rx) = std::sync::mpsc::channel();
        let alone = run_alone("t", move || tx.send(1).unwrap());
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(),
            1
        );
        alone.await.unwrap();
    }
}

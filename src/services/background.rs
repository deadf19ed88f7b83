//! Work that must not slow the requests: a future run on a thread of its own, with its
//! own single-threaded runtime (and blocking pool), at the lowest CPU priority.
//!
//! On Linux these threads take the `SCHED_IDLE` policy: the kernel runs them only on CPU
//! the other threads leave idle, and a request's thread that wakes up takes the CPU from
//! them at once. Push deliveries run this way: on a saturated server the sends keep their
//! pace and the pushes wait (they are queued on disk), and on one with CPU to spare they
//! go out at once. Where that policy is refused, the threads take the highest niceness
//! (19) instead; other systems keep the normal priority. Such threads should make no
//! RocksDB writes (see `push::delivery`'s `Writes`): one of them leading a write group and
//! then waiting for the CPU would hold up the writers behind it.

use std::future::Future;

/// Lowers the calling thread's CPU priority (Linux: the policy and niceness are per
/// thread). A refusal is logged and ignored: the work then runs at normal priority.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: both calls only read their arguments; 0 names the calling thread.
        let lowered = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                || libc::setpriority(libc::PRIO_PROCESS, 0, 19) == 0
        };
        if !lowered {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
}

/// Runs `make()`'s future to its end on a new thread named `name`, with a runtime of its
/// own whose threads (the one driving it and its blocking pool) run at lower priority.
/// Answers a handle on the async side that ends when the future has ended (or could not
/// be started: the reason is logged).
pub fn spawn<F, Fut>(name: &str, make: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let thread_name = name.to_owned();
    let started = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            lower_this_thread();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("{thread_name}-blocking"))
                .on_thread_start(lower_this_thread)
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(make()),
                Err(e) => tracing::error!(thread = %thread_name, error = %e, "cannot start a background runtime"),
            }
            let _ = done.send(());
        });
    if let Err(e) = started {
        tracing::error!(thread = %name, error = %e, "cannot start a background thread");
    }
    tokio::spawn(async move {
        let _ = ended.await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the calling thread runs at the lowest priority (Linux), else `true`.
    fn lowered() -> bool {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: both calls only read their arguments; 0 names the calling thread.
            unsafe {
                libc::sched_getscheduler(0) == libc::SCHED_IDLE
                    || libc::getpriority(libc::PRIO_PROCESS, 0) == 19
            }
        }
        #[cfg(not(target_os = "linux"))]
        true
    }

    #[tokio::test]
    async fn the_future_runs_on_a_lowered_thread_and_its_handle_ends_with_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = spawn("test-background", move || async move {
            let name = std::thread::current().name().map(str::to_owned);
            // The blocking pool is lowered too.
            let blocking = tokio::task::spawn_blocking(lowered).await.unwrap();
            tx.send((name, lowered(), blocking)).unwrap();
        });
        handle.await.unwrap();
        let (name, lowered, blocking) = rx.recv().unwrap();
        assert_eq!(name.as_deref(), Some("test-background"));
        assert!(lowered, "the runtime's thread runs at normal priority");
        assert!(blocking, "its blocking pool runs at normal priority");
    }
}

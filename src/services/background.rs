//! Work that must not slow the requests: a future run on a thread of its own, with its
//! own single-threaded runtime (and blocking pool), at the lowest CPU priority.
//!
//! On Linux these threads take the highest niceness, 19: while the CPU is busy each of
//! them gets about 1.5 % of what a normal thread gets, and all the CPU the others leave
//! idle. Push deliveries run this way: on a saturated server the sends keep most of their
//! pace and the pushes wait (they are queued on disk), and on one with CPU to spare they go
//! out at once (a worker may further hold itself to a share of the CPU while the machine
//! is busy: [`super::cpu_share`]). `SCHED_IDLE`, which runs a thread only on idle CPU,
//! kept the sends a little faster but stopped the pushes outright while any other process
//! kept the CPU busy (the push tests timed out beside three `yes` loops), so it is not
//! used. Such threads should
//! make no RocksDB writes (see `push::delivery`'s `Writes`): one of them leading a write
//! group and then waiting for the CPU would hold up the writers behind it. Threads they
//! create inherit their niceness, so they must not grow another runtime's blocking pool.

use std::future::Future;

/// The niceness of background threads (0 normal, 19 lowest).
pub const NICENESS: i32 = 19;

/// Lowers the calling thread's CPU priority to [`NICENESS`] (Linux: niceness is per
/// thread). A refusal is logged and ignored: the work then runs at normal priority.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its arguments; 0 names the calling thread.
        let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) == 0 };
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
            // SAFETY: getpriority only reads its arguments; 0 names the calling thread.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) == NICENESS }
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

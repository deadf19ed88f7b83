//! Giving memory back when the server goes idle.
//!
//! Under load the process holds memory for speed: RocksDB's memtables (up to
//! `storage.write_buffer_size`) and block cache (up to `storage.cache_size`), and the
//! allocator keeps what request handling freed, to hand out again. None of it shrinks by
//! itself, so after a burst a quiet server kept ten times its idle size. Here a worker
//! notices when writes stop: after [`IDLE_BEFORE_RELEASE`] (10 s) without one it flushes the
//! memtables, empties the block cache and the services' caches, frees the pooled
//! password-hashing memory and asks the allocator to return its free pages to the system,
//! once per quiet spell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::services::accounts::secrets;
use crate::storage::Db;

/// Quiet time before memory is given back.
pub const IDLE_BEFORE_RELEASE: Duration = Duration::from_secs(10);
/// How often the worker looks.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Allocator settings for a long-running server, to call before any thread starts.
/// glibc serves blocks of 128 KiB and more with their own mappings, returned to the system
/// when freed, but after the first such free it raises that threshold up to 32 MiB: from
/// then on RocksDB's 1 MiB memtable blocks and the 19 MiB password-hashing blocks come
/// from the heaps and stay there, fragmented, long after they are freed (measured: 96 MiB
/// held a minute after a send load, 34 MiB with the threshold fixed; docs/benchmarks.md).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Returns the allocator's free memory to the system (glibc keeps it otherwise).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A cache to empty when the server goes idle.
pub type Release = Box<dyn Fn() + Send + Sync>;

/// Runs until `stop` turns true: gives memory back after each busy spell, emptying
/// `caches` too.
pub async fn release_when_idle(db: Arc<Db>, caches: Vec<Release>, mut stop: watch::Receiver<bool>) {
    let caches = Arc::new(caches);
    let mut seen = db.write_count();
    let mut quiet_since = Instant::now();
    let mut released = true;
    let mut trim_again = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if std::mem::take(&mut trim_again) {
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
        let now = db.write_count();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
            released = false;
            continue;
        }
        if released || quiet_since.elapsed() < IDLE_BEFORE_RELEASE {
            continue;
        }
        released = true;
        // RocksDB frees the flushed memtables on its own threads a little after the
        // flush returns: trim once more on the next look.
        trim_again = true;
        let db = Arc::clone(&db);
        let caches = Arc::clone(&caches);
        let readers = Arc::clone(&db);
        let outcome = tokio::task::spawn_blocking(move || {
            let flushed = db.release_memory();
            for release in caches.iter() {
                release();
            }
            secrets::release_pooled_argon_memory();
            trim_heap();
            flushed
        })
        .await;
        match outcome {
            Ok(Ok(())) => tracing::debug!(
                table_readers = readers.table_readers_bytes(),
                "idle: memory given back"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "idle: could not flush the memtables"),
            Err(e) => tracing::warn!(error = %e, "idle: memory release task failed"),
        }
    }
}

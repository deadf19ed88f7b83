//! Whether the database takes writes, and getting it to take them again.
//!
//! RocksDB stops every write after a background error (a file it could not create or
//! open: no descriptors left, a full disk, an I/O error) and, for errors it does not class
//! as retryable, never starts again by itself: reads keep working while every write fails,
//! until the process restarts. Worse, with paranoid checks on it classes any I/O error of a
//! flush, compaction or MANIFEST write as fatal, which `DB::Resume()` refuses. So a
//! listener (src/storage/resume.cc) classes "too many open files" as the hard, resumable
//! error it is, each failed write marks the database not writable here, and a recovery
//! thread calls `DB::Resume()` every [`RETRY_INTERVAL`] until it succeeds (the cause is
//! gone: descriptors were released, space was freed). Other fatal errors (corruption, a
//! failing disk) stay fatal: the health endpoint and the log keep saying so. Writes in the
//! meantime (RocksDB refuses them at once) fail with an error that says so
//! ([`StorageError::unwritable`]), which the HTTP edge answers 503; nothing acknowledged is lost, since an acknowledgement waits for
//! its write. The state is shown on the health endpoint and logged once per episode.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Db, StorageError};

/// How often the recovery thread asks RocksDB to resume while writes are stopped.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often a recovery that keeps failing is logged again.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// What the health endpoint tells about storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteState {
    /// Writes go through.
    Writable,
    /// Writes stopped at `since` because of `error`; recovery is being attempted.
    Stopped {
        /// The failure that stopped them.
        error: String,
        /// How long ago, in seconds.
        seconds: u64,
    },
}

#[derive(Default)]
struct State {
    /// The failure of the current episode and when it began; `None` while writable.
    failure: Option<(String, Instant)>,
    /// Set when the database closes: the recovery thread ends.
    closing: bool,
}

/// The write state shared by the database and its recovery thread.
#[derive(Default)]
pub struct WriteHealth {
    state: Mutex<State>,
    wake: Condvar,
}

impl WriteHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a failed write: the first of an episode is logged and wakes the recovery
    /// thread. Answers the error to give the caller.
    pub fn write_failed(&self, error: StorageError) -> StorageError {
        let mut state = self.lock();
        if state.failure.is_none() {
            tracing::error!(error = %error.message, "storage stopped taking writes; writes answer 503 until it recovers");
            state.failure = Some((error.message.clone(), Instant::now()));
            self.wake.notify_all();
        }
        StorageError::unwritable(error.message)
    }

    /// The current state.
    pub fn state(&self) -> WriteState {
        match &self.lock().failure {
            None => WriteState::Writable,
            Some((error, since)) => WriteState::Stopped {
                error: error.clone(),
                seconds: since.elapsed().as_secs(),
            },
        }
    }

    /// Ends the recovery thread (the database is closing).
    pub fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
    }

    /// Starts the recovery thread of `db`; it holds the database only while resuming.
    pub fn start_recovery(db: &Arc<Db>) {
        let health = Arc::clone(&db.health);
        let db = Arc::downgrade(db);
        let spawned = std::thread::Builder::new()
            .name("storage-recovery".into())
            .spawn(move || recover_forever(&health, &db));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the storage recovery thread");
        }
    }
}

/// Waits for a stopped episode, then resumes until it ends; returns when the database
/// closes.
fn recover_forever(health: &WriteHealth, db: &Weak<Db>) {
    let mut last_logged: Option<Instant> = None;
    loop {
        {
            let mut state = health.lock();
            while state.failure.is_none() && !state.closing {
                state = health
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.closing {
                return;
            }
        }
        let Some(db) = db.upgrade() else { return };
        let resumed = db.resume();
        drop(db);
        let mut state = health.lock();
        match resumed {
            Ok(()) => {
                if let Some((error, since)) = state.failure.take() {
                    tracing::warn!(
                        after_ms = since.elapsed().as_millis() as u64,
                        stopped_by = %error,
                        "storage takes writes again"
                    );
                }
                last_logged = None;
            }
            Err(e) => {
                if last_logged.is_none_or(|at| at.elapsed() >= REPEAT_LOG_INTERVAL) {
                    tracing::error!(error = %e.message, "storage still does not take writes; retrying");
                    last_logged = Some(Instant::now());
                }
                let (next, _) = health
                    .wake
                    .wait_timeout(state, RETRY_INTERVAL)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if next.closing {
                    return;
                }
            }
        }
    }
}

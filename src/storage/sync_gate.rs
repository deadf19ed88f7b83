//! One fsync for many waiters: the writers that ask for their writes to be made durable
//! while an fsync is under way wait for it to end, and then one of them syncs for all who
//! asked meanwhile (group commit across writers).
//!
//! A waiter's writes are in the WAL before it asks, so an fsync that starts after its
//! request covers them. When an fsync fails, nobody it would have covered is told it
//! succeeded: the next waiter tries again for itself and the others.

use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Default)]
struct Rounds {
    /// Requests so far (each waiter's ticket is the count when it asked).
    asked: u64,
    /// Every request up to this one is durable.
    done: u64,
    /// An fsync is under way.
    syncing: bool,
}

/// The gate one database's WAL syncs go through.
#[derive(Default)]
pub struct SyncGate {
    rounds: Mutex<Rounds>,
    ended: Condvar,
}

impl SyncGate {
    /// Makes every write done before the call durable with `sync`, sharing it with
    /// concurrent callers: returns once an fsync that started after the call succeeded,
    /// or with the error of the one this caller ran.
    pub fn sync<E>(&self, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        rounds.asked += 1;
        let ticket = rounds.asked;
        loop {
            if rounds.done >= ticket {
                return Ok(());
            }
            if !rounds.syncing {
                rounds.syncing = true;
                let covers = rounds.asked;
                drop(rounds);
                // Ends the round however `sync` ends (a panic included), so that waiters
                // never wait for a round nobody runs.
                let mut round = Round {
                    gate: self,
                    covers,
                    succeeded: false,
                };
                let result = sync();
                round.succeeded = result.is_ok();
                drop(round);
                return result;
            }
            rounds = self
                .ended
                .wait(rounds)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The fsync round a caller runs; dropping it ends the round.
struct Round<'a> {
    gate: &'a SyncGate,
    covers: u64,
    succeeded: bool,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        let mut rounds = self
            .gate
            .rounds
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        rounds.syncing = false;
        if self.succeeded {
            rounds.done = rounds.done.max(self.covers);
        }
        self.gate.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn concurrent_callers_share_fsyncs() {
        let gate = Arc::new(SyncGate::default());
        let fsyncs = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (gate, fsyncs, start) = (gate.clone(), fsyncs.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    gate.sync(|| {
                        fsyncs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        Ok::<(), ()>(())
                    })
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Ok(()));
        }
        let n = fsyncs.load(Ordering::SeqCst);
        assert!((1..16).contains(&n), "{n} fsyncs for 16 callers");
    }

    #[test]
    fn a_failed_fsync_is_not_success_for_anyone_and_the_next_caller_retries() {
        let gate = SyncGate::default();
        assert_eq!(gate.sync(|| Err::<(), &str>("disk gone")), Err("disk gone"));
        let mut ran = false;
        assert_eq!(
            gate.sync(|| {
                ran = true;
                Ok::<(), &str>(())
            }),
            Ok(())
        );
        assert!(ran, "the failed round covered nobody");
    }
}

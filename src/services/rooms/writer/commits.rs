//! Group commit across rooms: the room writers hand what they drained from their queues to
//! a few committer threads, each of which applies the drains of several rooms (each on its
//! room's head, in its room's order), fsyncs once for all of them, then answers them.
//!
//! A transaction of 50 PDUs for 50 rooms used to cost 50 blocking threads, each waking,
//! writing and waiting for an fsync of its own (shared through the sync gate, but each
//! thread still parked and woke for it); now it costs a few rounds on two or three threads.
//! Rooms still proceed in parallel: as many rounds as the machine has cores (at least 2) run at once, and a
//! drain that arrives while every running round has been busy for [`STUCK`] (a state
//! resolution, a big room's head being loaded) gets a committer of its own, so one slow
//! room does not hold the others.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::services::error::{ServiceError, ServiceResult};

use super::head::RoomHead;
use super::queue::process_job;
use super::{Job, JobAnswer, WriterContext, Written};

/// Committer rounds that run at once when none is slow (the machine's cores, at least 2:
/// while one round waits for its fsync another applies).
fn base_committers() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .max(2)
}

/// Committers at most, slow ones included.
const MAX_COMMITTERS: usize = 64;

/// A round busy this long counts as slow: a drain arriving while every round is slow
/// starts another committer.
const STUCK: Duration = Duration::from_millis(5);

/// Drains one round takes at most (then fsyncs, answers, and takes again).
const DRAINS_PER_ROUND: usize = 64;

/// What one room's writer drained from its queue, with the room's head; the head comes
/// back through `back` once the jobs are answered (`None`: load it again from storage).
pub(super) struct Drain {
    pub(super) room_id: String,
    pub(super) head: Option<RoomHead>,
    pub(super) jobs: Vec<Job>,
    pub(super) back: oneshot::Sender<Option<RoomHead>>,
}

/// The committers: drains waiting for a round, and the rounds running.
pub(super) struct Committers {
    ctx: Arc<WriterContext>,
    state: Mutex<State>,
    base: usize,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Drain>,
    /// Running committers by id, with when their current round began.
    rounds: HashMap<u64, Instant>,
    next_id: u64,
}

impl Committers {
    pub(super) fn new(ctx: Arc<WriterContext>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            state: Mutex::default(),
            base: base_committers(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `drain` for the next round, starting a committer when fewer than
    /// the base number run or every running one is slow. Must be called inside the
    /// runtime (committers are its blocking threads).
    pub(super) fn submit(self: &Arc<Self>, drain: Drain) {
        let mut state = self.lock();
        state.waiting.push_back(drain);
        if starts_another(&state.rounds, self.base, Instant::now()) {
            state.next_id += 1;
            let id = state.next_id;
            state.rounds.insert(id, Instant::now());
            drop(state);
            let committers = Arc::clone(self);
            tokio::task::spawn_blocking(move || committers.run(id));
        }
    }

    /// One committer: rounds until nothing waits (checked under the lock that
    /// [`Committers::submit`] queues under, so no drain is left behind).
    fn run(&self, id: u64) {
        loop {
            let drains: Vec<Drain> = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.rounds.remove(&id);
                    return;
                }
                state.rounds.insert(id, Instant::now());
                let take = state.waiting.len().min(DRAINS_PER_ROUND);
                state.waiting.drain(..take).collect()
            };
            round(&self.ctx, drains);
        }
    }
}

/// Whether a drain queued `now` starts another committer, with `rounds` running (by
/// committer, when their current round began): fewer than `base` run, or each running
/// round has been busy for [`STUCK`] (and fewer than [`MAX_COMMITTERS`] run).
fn starts_another(rounds: &HashMap<u64, Instant>, base: usize, now: Instant) -> bool {
    let all_slow = rounds
        .values()
        .all(|began| now.saturating_duration_since(*began) >= STUCK);
    rounds.len() < base || (rounds.len() < MAX_COMMITTERS && all_slow)
}

/// A drain applied, before the fsync: its head and each job's answer.
struct Applied {
    head: Option<RoomHead>,
    answers: Vec<(
        oneshot::Sender<ServiceResult<JobAnswer>>,
        ServiceResult<JobAnswer>,
    )>,
    back: oneshot::Sender<Option<RoomHead>>,
}

/// Applies `drains` in order, fsyncs once, then moves the stream, wakes the sender and
/// answers (nothing is acknowledged before it is durable).
fn round(ctx: &WriterContext, drains: Vec<Drain>) {
    let mut written = Written::default();
    let mut applied = Vec::with_capacity(drains.len());
    for drain in drains {
        let Drain {
            room_id,
            head,
            jobs,
            back,
        } = drain;
        // A panic in one room's jobs loses that room's answers (their callers see the
        // writer drop them) and its head, not the other rooms' of the round.
        let mut replies = Vec::with_capacity(jobs.len());
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut head = head;
            let mut answers = Vec::with_capacity(jobs.len());
            for job in jobs {
                answers.push(process_job(
                    ctx,
                    &room_id,
                    &mut head,
                    job.start,
                    job.drafts,
                    &mut written,
                ));
                replies.push(job.reply);
            }
            (head, answers)
        }));
        match outcome {
            Ok((head, answers)) => applied.push(Applied {
                head,
                answers: replies.into_iter().zip(answers).collect(),
                back,
            }),
            Err(_) => {
                tracing::error!(room = %room_id, "room writer failed; its head is loaded again");
                let _ = back.send(None);
            }
        }
    }
    // Group commit: one fsync for every room above, before any answer and before the
    // stream tells syncing clients.
    let synced = match ctx.store.db.sync_wal() {
        Ok(()) => true,
        Err(e) => {
            let error = ServiceError::from(e);
            for drain in applied.iter_mut() {
                drain.head = None;
                for (_, result) in drain.answers.iter_mut() {
                    *result = Err(error.clone());
                }
            }
            false
        }
    };
    // Even after a failed fsync the batches are visible to readers, so the stream must
    // move past them with their changes, not skip them.
    for (ticket, change) in written.changes {
        ticket.commit(vec![change]);
    }
    // Only durable events leave for other servers (after a failed fsync they wait in the
    // outbox for the sender's next start or wake-up).
    if synced {
        for destination in &written.destinations {
            ctx.outbox.wake(destination);
        }
    }
    for drain in applied {
        for (reply, result) in drain.answers {
            let _ = reply.send(result);
        }
        let _ = drain.back.send(drain.head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_committer_starts_below_the_base_or_when_every_round_is_slow() {
        let now = Instant::now();
        let fresh = now;
        let slow = now - STUCK;
        let rounds = |began: &[Instant]| -> HashMap<u64, Instant> {
            began
                .iter()
                .copied()
                .enumerate()
                .map(|(n, b)| (n as u64, b))
                .collect()
        };
        assert!(starts_another(&rounds(&[]), 2, now), "none runs");
        assert!(starts_another(&rounds(&[fresh]), 2, now), "below the base");
        assert!(
            !starts_another(&rounds(&[fresh, fresh]), 2, now),
            "the base runs and is quick: the drain waits for a round"
        );
        assert!(
            !starts_another(&rounds(&[slow, fresh]), 2, now),
            "one round is quick: it takes the drain next"
        );
        assert!(
            starts_another(&rounds(&[slow, slow]), 2, now),
            "every round is slow: one more, so a slow room does not hold the others"
        );
        let at_most = vec![slow; MAX_COMMITTERS];
        assert!(
            !starts_another(&rounds(&at_most), 2, now),
            "never more than the cap"
        );
    }
}

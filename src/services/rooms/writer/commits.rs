//! Group commit across rooms: the room writers hand what they drained from their queues to
//! a few committer threads, each of which applies the drains of several rooms (each on its
//! room's head, in its room's order), fsyncs once for all of them, then hands each room's
//! head and answers back to its writer.
//!
//! A transaction of 50 PDUs for 50 rooms used to cost 50 blocking threads, each waking,
//! writing and waiting for an fsync of its own (shared through the sync gate, but each
//! thread still parked and woke for it); now it costs a few rounds on two or three threads.
//! Rooms still proceed in parallel: as many committers as the machine has cores (at least
//! 2) run at once. A committer takes drains one at a time, and ends its round (fsyncs and
//! answers) once it has applied drains for [`STUCK`], so a drain it has not taken yet
//! stays for another committer. A drain waiting while every committer has been applying
//! one drain for [`STUCK`] (a state resolution, a big room's head loading) gets a committer
//! of its own (when it is queued, or from a watch that looks every [`STUCK`] while drains
//! wait), so one slow room holds up only the rooms whose drains its round had already
//! applied.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::services::error::{ServiceError, ServiceResult};

use super::head::RoomHead;
use super::jobs::process_job;
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

/// A committer applying one drain this long counts as slow; a round applying drains this
/// long ends (fsyncs and answers) before it takes more.
const STUCK: Duration = Duration::from_millis(5);

/// Drains one round applies at most (then fsyncs, answers, and takes again).
const DRAINS_PER_ROUND: usize = 64;

/// What one room's writer drained from its queue, with the room's head; the head and the
/// jobs' answers go back through `back` after the fsync (a head of `None`: load it again
/// from storage). The writer task sends the answers: woken from a committer thread, each
/// waiting request would cost the runtime a cross-thread wake-up, woken from the writer
/// task they are queued on its worker.
pub(super) struct Drain {
    pub(super) room_id: String,
    pub(super) head: Option<RoomHead>,
    pub(super) jobs: Vec<Job>,
    pub(super) back: oneshot::Sender<Applied>,
}

/// The committers: drains waiting for a round, and the committers running.
pub(super) struct Committers {
    ctx: Arc<WriterContext>,
    state: Mutex<State>,
    base: usize,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Drain>,
    /// Running committers by id, with when they began applying the drain they are on
    /// (`None` between drains, and while fsyncing: a slow disk is not a slow room).
    running: HashMap<u64, Option<Instant>>,
    next_id: u64,
    /// A watch runs (see [`Committers::watch`]).
    watched: bool,
}

impl Committers {
    pub(super) fn new(ctx: Arc<WriterContext>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            state: Mutex::default(),
            base: base_committers().min(MAX_COMMITTERS),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `drain`, starting a committer when fewer than the base number run or every
    /// running one is slow, and otherwise a watch if none runs. Called inside the runtime
    /// (committers are its blocking threads, the watch one of its tasks).
    pub(super) fn submit(self: &Arc<Self>, drain: Drain) {
        let mut state = self.lock();
        state.waiting.push_back(drain);
        if !self.start_if_needed(&mut state) && !state.watched {
            state.watched = true;
            tokio::spawn(Arc::clone(self).watch());
        }
    }

    /// Starts a committer if [`starts_another`] says so; answers whether it did.
    fn start_if_needed(self: &Arc<Self>, state: &mut State) -> bool {
        if !starts_another(&state.running, self.base, Instant::now()) {
            return false;
        }
        state.next_id += 1;
        let id = state.next_id;
        state.running.insert(id, None);
        let committers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let committer = Committer { committers, id };
            committer.run();
        });
        true
    }

    /// While drains wait, looks every [`STUCK`] whether every committer has become slow
    /// since (a drain queued before that started none), and starts one then.
    async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(STUCK).await;
            let mut state = self.lock();
            if state.waiting.is_empty() {
                state.watched = false;
                return;
            }
            self.start_if_needed(&mut state);
        }
    }
}

/// One running committer; leaving the running set when it ends, however it ends.
struct Committer {
    committers: Arc<Committers>,
    id: u64,
}

impl Drop for Committer {
    fn drop(&mut self) {
        let mut state = self.committers.lock();
        state.running.remove(&self.id);
        // A committer that panicked outside a room's jobs may leave drains behind.
        if !state.waiting.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            self.committers.start_if_needed(&mut state);
        }
    }
}

impl Committer {
    /// Rounds until nothing waits (checked under the lock that [`Committers::submit`]
    /// queues under, so no drain is left behind).
    fn run(&self) {
        loop {
            let began = Instant::now();
            let mut written = Written::default();
            let mut applied = Vec::new();
            let mut took = 0;
            while took < DRAINS_PER_ROUND && began.elapsed() < STUCK {
                let drain = {
                    let mut state = self.committers.lock();
                    let Some(drain) = state.waiting.pop_front() else {
                        break;
                    };
                    state.running.insert(self.id, Some(Instant::now()));
                    drain
                };
                took += 1;
                applied.extend(apply(&self.committers.ctx, drain, &mut written));
                self.committers.lock().running.insert(self.id, None);
            }
            if took == 0 {
                // Nothing was waiting. A drain queued between this look and the guard's
                // leaving the running set is seen by the guard, which starts a committer.
                return;
            }
            finish(&self.committers.ctx, applied, written);
        }
    }
}

/// Whether a drain queued `now` starts another committer, with `running` (by committer,
/// since when it applies the drain it is on): fewer than `base` run, or each is slow (has
/// applied one drain for [`STUCK`]) and fewer than [`MAX_COMMITTERS`] run.
fn starts_another(running: &HashMap<u64, Option<Instant>>, base: usize, now: Instant) -> bool {
    let all_slow = running
        .values()
        .all(|began| began.is_some_and(|b| now.saturating_duration_since(b) >= STUCK));
    running.len() < base || (running.len() < MAX_COMMITTERS && all_slow)
}

/// A drain applied: its head and each job's reply with its answer.
pub(super) struct Applied {
    pub(super) head: Option<RoomHead>,
    pub(super) answers: Vec<(
        oneshot::Sender<ServiceResult<JobAnswer>>,
        ServiceResult<JobAnswer>,
    )>,
}

/// Applies one room's drain on its head; answers its head and answers with the way back
/// to its writer (`None` when its jobs panicked: the writer has been told already).
fn apply(
    ctx: &WriterContext,
    drain: Drain,
    written: &mut Written,
) -> Option<(Applied, oneshot::Sender<Applied>)> {
    let Drain {
        room_id,
        head,
        jobs,
        back,
    } = drain;
    // A panic in one room's jobs loses that room's answers (their callers see the writer
    // drop them) and its head, not the other rooms' of the round.
    let mut replies = Vec::with_capacity(jobs.len());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut head = head;
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            answers.push(process_job(
                ctx, &room_id, &mut head, job.start, job.drafts, written,
            ));
            replies.push(job.reply);
        }
        (head, answers)
    }));
    match outcome {
        Ok((head, answers)) => Some((
            Applied {
                head,
                answers: replies.into_iter().zip(answers).collect(),
            },
            back,
        )),
        Err(_) => {
            tracing::error!(room = %room_id, "room writer failed; its head is loaded again");
            let _ = back.send(Applied {
                head: None,
                answers: Vec::new(),
            });
            None
        }
    }
}

/// Ends a round: fsyncs once for every drain applied, then moves the stream, wakes the
/// sender and hands heads and answers back (nothing is acknowledged before it is
/// durable).
fn finish(
    ctx: &WriterContext,
    mut applied: Vec<(Applied, oneshot::Sender<Applied>)>,
    written: Written,
) {
    // Group commit: one fsync for every room of the round, before any answer and before
    // the stream tells syncing clients.
    let synced = match ctx.store.db.sync_wal() {
        Ok(()) => true,
        Err(e) => {
            let error = ServiceError::from(e);
            for (drain, _) in applied.iter_mut() {
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
    for (drain, back) in applied {
        let _ = back.send(drain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_committer_starts_below_the_base_or_when_every_one_is_slow() {
        let now = Instant::now();
        let fresh = Some(now);
        let slow = Some(now - STUCK);
        let running = |on: &[Option<Instant>]| -> HashMap<u64, Option<Instant>> {
            on.iter()
                .copied()
                .enumerate()
                .map(|(n, b)| (n as u64, b))
                .collect()
        };
        assert!(starts_another(&running(&[]), 2, now), "none runs");
        assert!(starts_another(&running(&[fresh]), 2, now), "below the base");
        assert!(
            !starts_another(&running(&[fresh, fresh]), 2, now),
            "the base runs and is quick: the drain waits for one of them"
        );
        assert!(
            !starts_another(&running(&[slow, fresh]), 2, now),
            "one is quick: it takes the drain next"
        );
        assert!(
            !starts_another(&running(&[slow, None]), 2, now),
            "one is between drains or fsyncing (a slow disk is not a slow room)"
        );
        assert!(
            starts_another(&running(&[slow, slow]), 2, now),
            "every one is slow: one more, so a slow room does not hold the others"
        );
        let at_most = vec![slow; MAX_COMMITTERS];
        assert!(
            !starts_another(&running(&at_most), 2, now),
            "never more than the cap"
        );
    }
}

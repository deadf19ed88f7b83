//! The writers' queues: one task per room, started on first use and stopped once idle,
//! takes up to [`MAX_JOBS_PER_COMMIT`] jobs from its queue and hands them with the room's
//! head to the committers (`commits.rs`), which apply them, fsync once for this room and
//! others, then answer them all (nothing is acknowledged before it is durable).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::core::pdu::BuiltPdu;
use crate::services::error::{ServiceError, ServiceResult};
use tokio::sync::{mpsc, oneshot};

use super::commits::{Applied, Committers, Drain};
use super::head::RoomHead;
use super::{
    Completion, EventDraft, FullState, Job, JobAnswer, JobStart, OutOfBandMember, PduOutcome,
    RemoteEvent, RemoteJoin, WriterContext,
};

/// Jobs a writer takes from its queue at once (one drain, applied in one committer round).
pub(super) const MAX_JOBS_PER_COMMIT: usize = 128;

/// A writer idle this long drops the parsed state events it keeps (the biggest part of a
/// head: a parsed PDU costs a few KiB), keeping the state map.
pub(super) const IDLE_DROP_PARSED: Duration = Duration::from_secs(2);

/// A writer idle this long stops, and its room's head leaves memory (the next event
/// starts a new writer, which loads the head again): idle rooms cost no memory.
pub(super) const IDLE_STOP: Duration = Duration::from_secs(10);

/// Jobs a room's queue holds; a full queue makes senders wait (they retry every
/// [`FULL_QUEUE_RETRY`]).
pub(super) const QUEUE_DEPTH: usize = 1024;

pub(super) const FULL_QUEUE_RETRY: Duration = Duration::from_millis(1);

/// The per-room writers: one task each, started on first use and stopped once idle.
///
/// Jobs enter a writer's queue only while the map's lock is held, and a writer leaves the
/// map under the same lock once its queue is empty, so a job never lands in the queue of a
/// writer that is stopping, and a room never has two writers.
pub struct Writers {
    committers: Arc<Committers>,
    queues: Arc<std::sync::Mutex<Queues>>,
}

/// The running writers, by room.
#[derive(Default)]
pub(super) struct Queues {
    pub(super) by_room: HashMap<String, WriterHandle>,
    /// Tells a writer from its successor in the map.
    pub(super) next_id: u64,
}

pub(super) struct WriterHandle {
    pub(super) id: u64,
    pub(super) queue: mpsc::Sender<Job>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

pub(super) fn lock_queues(queues: &std::sync::Mutex<Queues>) -> std::sync::MutexGuard<'_, Queues> {
    queues
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Writers {
    /// No writer runs until a room gets an event.
    pub fn new(ctx: WriterContext) -> Self {
        Self {
            committers: Committers::new(Arc::new(ctx)),
            queues: Arc::default(),
        }
    }

    /// Hands `job` to the room's writer and waits for the ids of the events it wrote
    /// (answered after the fsync).
    pub async fn submit(&self, room_id: &str, job: Job) -> ServiceResult<Vec<String>> {
        match self.submit_job(room_id, job).await? {
            JobAnswer::Events(ids) => Ok(ids),
            _ => Err(ServiceError::internal("a writer answered the wrong job")),
        }
    }

    /// Hands a remote event to the room's writer at once (before the answer is awaited,
    /// so the caller can go on preparing the next while the writer works) and answers a
    /// future of its outcome (after the fsync, so an accepted event is durable).
    pub fn receive(
        &self,
        room_id: &str,
        event: RemoteEvent,
    ) -> impl std::future::Future<Output = ServiceResult<PduOutcome>> + Send + 'static {
        let job = Self::job(JobStart::Receive(Box::new(event)), Vec::new());
        let (reply, answer) = oneshot::channel();
        let job = Job { reply, ..job };
        let queued = self.try_enqueue(room_id, job);
        let queues = (Arc::clone(&self.committers), Arc::clone(&self.queues));
        let room_id = room_id.to_owned();
        async move {
            if let Err(job) = queued {
                // The queue was full: wait for room in it like any other job.
                let writers = Writers {
                    committers: queues.0,
                    queues: queues.1,
                };
                writers.enqueue(&room_id, job).await;
            }
            match answer
                .await
                .map_err(|_| ServiceError::internal("room writer dropped a job"))??
            {
                JobAnswer::Received(outcome) => Ok(outcome),
                _ => Err(ServiceError::internal("a writer answered the wrong job")),
            }
        }
    }

    /// Takes in a room joined through a resident server; answers what became of the join.
    pub async fn join_remote(&self, room_id: &str, join: RemoteJoin) -> ServiceResult<PduOutcome> {
        let job = Self::job(JobStart::JoinRemote(Box::new(join)), Vec::new());
        match self.submit_job(room_id, job).await? {
            JobAnswer::Received(outcome) => Ok(outcome),
            _ => Err(ServiceError::internal("a writer answered the wrong job")),
        }
    }

    /// Completes the partial state of a room we joined with `omit_members`.
    pub async fn complete_state(
        &self,
        room_id: &str,
        full: FullState,
    ) -> ServiceResult<Completion> {
        let job = Self::job(JobStart::CompleteState(Box::new(full)), Vec::new());
        match self.submit_job(room_id, job).await? {
            JobAnswer::Completed(done) => Ok(done),
            _ => Err(ServiceError::internal("a writer answered the wrong job")),
        }
    }

    /// Keeps our user's member event of a room we are not in (see [`out_of_band`]).
    pub async fn out_of_band(&self, room_id: &str, member: OutOfBandMember) -> ServiceResult<()> {
        let job = Self::job(JobStart::OutOfBand(Box::new(member)), Vec::new());
        self.submit_job(room_id, job).await.map(|_| ())
    }

    /// Builds, signs and checks `draft` on the room's current state without storing it.
    pub async fn build(&self, room_id: &str, draft: EventDraft) -> ServiceResult<BuiltPdu> {
        let job = Self::job(JobStart::Build, vec![draft]);
        match self.submit_job(room_id, job).await? {
            JobAnswer::Built(built) => Ok(*built),
            _ => Err(ServiceError::internal("a writer answered the wrong job")),
        }
    }

    pub(super) async fn submit_job(&self, room_id: &str, job: Job) -> ServiceResult<JobAnswer> {
        let (reply, answer) = oneshot::channel();
        let job = Job { reply, ..job };
        self.enqueue(room_id, job).await;
        answer
            .await
            .map_err(|_| ServiceError::internal("room writer dropped a job"))?
    }

    /// Puts `job` in the room's queue, waiting while it is full.
    pub(super) async fn enqueue(&self, room_id: &str, mut job: Job) {
        loop {
            match self.try_enqueue(room_id, job) {
                Ok(()) => return,
                Err(back) => job = back,
            }
            tokio::time::sleep(FULL_QUEUE_RETRY).await;
        }
    }

    /// Puts `job` in the room's queue, starting its writer if none runs; gives the job
    /// back when the queue is full.
    pub(super) fn try_enqueue(&self, room_id: &str, mut job: Job) -> Result<(), Job> {
        let mut queues = lock_queues(&self.queues);
        let queues = &mut *queues;
        loop {
            let handle = match queues.by_room.get(room_id) {
                Some(handle) => handle,
                None => {
                    queues.next_id += 1;
                    let id = queues.next_id;
                    let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
                    let task = tokio::spawn(run_writer(
                        Arc::clone(&self.committers),
                        Arc::clone(&self.queues),
                        (room_id.to_owned(), id),
                        rx,
                    ));
                    queues
                        .by_room
                        .entry(room_id.to_owned())
                        .or_insert(WriterHandle { id, queue, task })
                }
            };
            match handle.queue.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => return Err(back),
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    // Writers leave the map before their queue closes: this one died.
                    // Its successor starts from the stored head.
                    tracing::error!(room = %room_id, "room writer had stopped; starting a new one");
                    queues.by_room.remove(room_id);
                    job = back;
                }
            }
        }
    }

    /// Stops every writer once its queue is empty (at shutdown, so that nothing holds the
    /// database afterwards).
    pub async fn shutdown(&self) {
        let handles: Vec<WriterHandle> = lock_queues(&self.queues)
            .by_room
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in handles {
            drop(handle.queue);
            let _ = handle.task.await;
        }
    }

    /// A job whose reply the caller ignores (replaced by [`Writers::submit`]'s own).
    pub fn job(start: JobStart, drafts: Vec<EventDraft>) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            start,
            drafts,
            reply,
        }
    }
}

/// The next job of a writer's queue, or `None` once the writer should stop: its queue
/// closed (shutdown), or it was idle for [`IDLE_STOP`] and has left the map (under the
/// lock, with its queue empty, so no job can be waiting in it).
pub(super) async fn next_job(
    queues: &std::sync::Mutex<Queues>,
    (room_id, id): (&str, u64),
    queue: &mut mpsc::Receiver<Job>,
    head: &mut Option<RoomHead>,
) -> Option<Job> {
    if let Ok(job) = tokio::time::timeout(IDLE_DROP_PARSED, queue.recv()).await {
        return job;
    }
    if let Some(head) = head {
        head.drop_parsed();
    }
    if let Ok(job) = tokio::time::timeout(IDLE_STOP - IDLE_DROP_PARSED, queue.recv()).await {
        return job;
    }
    let mut queues = lock_queues(queues);
    if let Ok(job) = queue.try_recv() {
        return Some(job);
    }
    if queues.by_room.get(room_id).is_some_and(|h| h.id == id) {
        queues.by_room.remove(room_id);
    }
    None
}

pub(super) async fn run_writer(
    committers: Arc<Committers>,
    queues: Arc<std::sync::Mutex<Queues>>,
    (room_id, id): (String, u64),
    mut queue: mpsc::Receiver<Job>,
) {
    let mut head: Option<RoomHead> = None;
    loop {
        let first = next_job(&queues, (&room_id, id), &mut queue, &mut head).await;
        let Some(first) = first else { return };
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (back, returned) = oneshot::channel();
        committers.submit(Drain {
            room_id: room_id.clone(),
            head: head.take(),
            jobs,
            back,
        });
        // The head and the answers come back after the fsync; without the head (a
        // failure) the next drain loads it again.
        match returned.await {
            Ok(Applied {
                head: back,
                answers,
            }) => {
                head = back;
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
            }
            Err(_) => {
                tracing::error!(room = %room_id, "room writer's round was lost");
                head = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues_with(room: &str, id: u64) -> (Arc<std::sync::Mutex<Queues>>, mpsc::Receiver<Job>) {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let queues = Arc::new(std::sync::Mutex::new(Queues::default()));
        lock_queues(&queues).by_room.insert(
            room.to_owned(),
            WriterHandle {
                id,
                queue,
                task: tokio::spawn(async {}),
            },
        );
        (queues, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_leaves_the_map_and_stops() {
        let (queues, mut rx) = queues_with("!r", 7);
        let mut head = None;
        let started = tokio::time::Instant::now();
        let job = next_job(&queues, ("!r", 7), &mut rx, &mut head).await;
        assert!(job.is_none(), "nothing came: the writer stops");
        assert!(started.elapsed() >= IDLE_STOP);
        assert!(
            lock_queues(&queues).by_room.is_empty(),
            "and leaves the map"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_comes_keeps_the_writer_and_a_successor_is_not_removed() {
        let (queues, mut rx) = queues_with("!r", 7);
        let sender = lock_queues(&queues).by_room["!r"].queue.clone();
        let mut head = None;
        sender
            .try_send(Writers::job(JobStart::Append, Vec::new()))
            .unwrap();
        assert!(next_job(&queues, ("!r", 7), &mut rx, &mut head)
            .await
            .is_some());
        // A writer that was replaced in the map (another id) never removes its successor.
        let job = next_job(&queues, ("!r", 6), &mut rx, &mut head).await;
        assert!(job.is_none());
        assert_eq!(lock_queues(&queues).by_room["!r"].id, 7);
    }
}

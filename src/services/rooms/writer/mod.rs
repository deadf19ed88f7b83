//! The write path: one writer task per room appends events to its graph.
//!
//! Spec: server-server API, "PDUs" (prev_events, auth_events, depth), "Auth events
//! selection"; room versions' "Authorisation rules".
//!
//! Every event a room gets passes through that room's writer, so sends into one room are
//! serialized while different rooms proceed in parallel. A writer keeps the room's head
//! (record, current state, the state events it read lately) in memory. For each event it
//! picks `prev_events` (the forward extremities), `auth_events` (per the selection
//! algorithm, from the current state) and `depth`, builds and signs the PDU, checks the auth
//! rules against the state before it, and writes one batch: PDU, metadata, event id
//! interning, timeline and stream entries, state snapshot, room head, membership, txn id,
//! relation and redaction records. Batches go to the WAL without fsync; after the jobs it
//! drained from its queue the writer fsyncs once and only then answers them all (group
//! commit: nothing is acknowledged before it is durable).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

mod backfilled;
mod out_of_band;
mod remote_event;
mod remote_join;

pub use out_of_band::OutOfBandMember;
pub use remote_event::{PduOutcome, RemoteEvent};
pub use remote_join::RemoteJoin;

use super::aggregates::{Aggregates, Child};
use super::event_store::{membership_key, timeline_key, EventStore, StoredEvent};
use super::graph;
use super::guests;
use super::records::{EventMeta, MembershipRecord, RelationRecord, RoomRecord};
use super::state_store::{ShortEventId, StateMap};
use crate::core::auth_rules::{self, AuthContext, AuthState};
use crate::core::event_hashes;
use crate::core::pdu::{self, BuiltPdu, PduError, PduTemplate};
use crate::core::power_levels::PowerLevels;
use crate::core::redaction::redact;
use crate::core::{RoomVersion, SigningKeyPair};
use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::services::now_ms;
use crate::services::outbox::Outbox;
use crate::services::records::{decode, encode};
use crate::services::stream::{PosTicket, StreamChange};
use crate::storage::{keys, Batch, Table};

/// Jobs a writer takes from its queue at once (and then fsyncs once for).
const MAX_JOBS_PER_COMMIT: usize = 128;
/// A writer idle this long drops the parsed state events it keeps (the biggest part of a
/// head: a parsed PDU costs a few KiB), keeping the state map.
const IDLE_DROP_PARSED: Duration = Duration::from_secs(2);
/// A writer idle this long stops, and its room's head leaves memory (the next event
/// starts a new writer, which loads the head again): idle rooms cost no memory.
const IDLE_STOP: Duration = Duration::from_secs(10);
/// Jobs a room's queue holds; a full queue makes senders wait (they retry every
/// [`FULL_QUEUE_RETRY`]).
const QUEUE_DEPTH: usize = 1024;
const FULL_QUEUE_RETRY: Duration = Duration::from_millis(1);
/// State events a writer keeps parsed; the cache is cleared when it grows past this.
const MAX_CACHED_EVENTS: usize = 512;

/// An event a local user wants to send, before the writer builds it.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// The sender (a local user).
    pub sender: String,
    /// Event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    /// The content object.
    pub content: Value,
    /// For redactions: the event redacted.
    pub redacts: Option<String>,
    /// `(txn key, device id, txn id)` for idempotent client sends.
    pub txn: Option<TxnRef>,
}

/// A client transaction: the dedupe key and what `unsigned.transaction_id` shows.
#[derive(Debug, Clone)]
pub struct TxnRef {
    /// `user 0xFF device 0xFF room 0xFF endpoint 0xFF txn`.
    pub key: Vec<u8>,
    /// The sending device.
    pub device_id: String,
    /// The client's transaction id.
    pub txn_id: String,
}

impl EventDraft {
    /// A draft without transaction or redaction.
    pub fn new(sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Self {
        Self {
            sender: sender.to_owned(),
            kind: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            content,
            redacts: None,
            txn: None,
        }
    }
}

/// What a job does before its drafts.
pub enum JobStart {
    /// Append to an existing room.
    Append,
    /// Create the room with this (already built) create event (boxed: a queue's slots
    /// are as big as its largest job).
    Create(Box<BuiltPdu>, RoomVersion),
    /// Mark the room forgotten for this user (who must have left it).
    Forget(String),
    /// Judge and store an event another server made (checks 4 to 6 of the receipt
    /// checks; see [`remote_event`]).
    Receive(Box<RemoteEvent>),
    /// Take in the room our user joined through a resident server (see [`remote_join`]).
    JoinRemote(Box<RemoteJoin>),
    /// Keep our user's member event of a room we are not in (see [`out_of_band`]).
    OutOfBand(Box<OutOfBandMember>),
    /// Build, sign and check the (one) draft on the current state without storing it:
    /// an invite of another server's user, which that server signs before we keep it.
    Build,
}

/// What a job answers.
#[derive(Debug)]
pub enum JobAnswer {
    /// The ids of the events written (the create event's first, when creating).
    Events(Vec<String>),
    /// What became of a remote event.
    Received(PduOutcome),
    /// The event built (not stored).
    Built(Box<BuiltPdu>),
}

/// A unit of work for a writer: drafts applied in order; the first failure stops the job.
pub struct Job {
    /// Create or append.
    pub start: JobStart,
    /// Events to append, in order.
    pub drafts: Vec<EventDraft>,
    /// Answers the event ids or the remote event's outcome, after the fsync.
    pub reply: oneshot::Sender<MatrixResult<JobAnswer>>,
}

/// What the writers share.
pub struct WriterContext {
    /// The tables.
    pub store: Arc<EventStore>,
    /// Our server name (for the PDU's signature).
    pub server_name: String,
    /// Our signing key.
    pub signing_key: Arc<SigningKeyPair>,
    /// Told of every new event inside its write batch (notification counts, the search
    /// index).
    pub hooks: Vec<Arc<dyn NewEventHook>>,
    /// Where events for other servers are queued (in the event's batch) and the sender
    /// woken (after the fsync).
    pub outbox: Arc<Outbox>,
}

/// A local member of a room, for the [`NewEventHook`].
#[derive(Debug, Clone)]
pub struct LocalMember {
    /// The user.
    pub user_id: String,
    /// Their display name in the room.
    pub display_name: Option<String>,
}

/// What the [`NewEventHook`] learns of a new event.
pub struct NewEvent<'a> {
    /// The room's id.
    pub room_id: &'a str,
    /// The room's short id.
    pub room: u64,
    /// The event's stream position.
    pub pos: u64,
    /// The PDU.
    pub pdu: &'a Value,
    /// The event's short id.
    pub short: ShortEventId,
    /// The room's local joined members before the event.
    pub local_members: &'a [LocalMember],
    /// The room's joined member count.
    pub joined_count: u64,
    /// The power levels before the event.
    pub power_levels: &'a PowerLevels,
    /// The `notifications` object of the power levels content.
    pub notification_levels: Option<&'a serde_json::Map<String, Value>>,
    /// For a redaction that applies: the redacted event as it was before.
    pub redacted: Option<&'a StoredEvent>,
    /// The event is of the room's past, fetched from another server (backfill): nobody
    /// is notified of it.
    pub historical: bool,
}

/// Called by the room writers for every event, with the event's batch, so that what it
/// writes commits (and reaches syncing clients) together with the event.
pub trait NewEventHook: Send + Sync {
    /// Adds the hook's writes for `event` to `batch`.
    fn new_event(&self, event: &NewEvent<'_>, batch: &mut Batch<'_>) -> MatrixResult<()>;
}

/// The per-room writers: one task each, started on first use and stopped once idle.
///
/// Jobs enter a writer's queue only while the map's lock is held, and a writer leaves the
/// map under the same lock once its queue is empty, so a job never lands in the queue of a
/// writer that is stopping, and a room never has two writers.
pub struct Writers {
    ctx: Arc<WriterContext>,
    queues: Arc<std::sync::Mutex<Queues>>,
}

/// The running writers, by room.
#[derive(Default)]
struct Queues {
    by_room: HashMap<String, WriterHandle>,
    /// Tells a writer from its successor in the map.
    next_id: u64,
}

struct WriterHandle {
    id: u64,
    queue: mpsc::Sender<Job>,
    task: tokio::task::JoinHandle<()>,
}

fn lock_queues(queues: &std::sync::Mutex<Queues>) -> std::sync::MutexGuard<'_, Queues> {
    queues
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Writers {
    /// No writer runs until a room gets an event.
    pub fn new(ctx: WriterContext) -> Self {
        Self {
            ctx: Arc::new(ctx),
            queues: Arc::default(),
        }
    }

    /// Hands `job` to the room's writer and waits for the ids of the events it wrote
    /// (answered after the fsync).
    pub async fn submit(&self, room_id: &str, job: Job) -> MatrixResult<Vec<String>> {
        match self.submit_job(room_id, job).await? {
            JobAnswer::Events(ids) => Ok(ids),
            _ => Err(MatrixError::internal("a writer answered the wrong job")),
        }
    }

    /// Hands a remote event to the room's writer at once (before the answer is awaited,
    /// so the caller can go on preparing the next while the writer works) and answers a
    /// future of its outcome (after the fsync, so an accepted event is durable).
    pub fn receive(
        &self,
        room_id: &str,
        event: RemoteEvent,
    ) -> impl std::future::Future<Output = MatrixResult<PduOutcome>> + Send + 'static {
        let job = Self::job(JobStart::Receive(Box::new(event)), Vec::new());
        let (reply, answer) = oneshot::channel();
        let job = Job { reply, ..job };
        let queued = self.try_enqueue(room_id, job);
        let queues = (Arc::clone(&self.ctx), Arc::clone(&self.queues));
        let room_id = room_id.to_owned();
        async move {
            if let Err(job) = queued {
                // The queue was full: wait for room in it like any other job.
                let writers = Writers {
                    ctx: queues.0,
                    queues: queues.1,
                };
                writers.enqueue(&room_id, job).await;
            }
            match answer
                .await
                .map_err(|_| MatrixError::internal("room writer dropped a job"))??
            {
                JobAnswer::Received(outcome) => Ok(outcome),
                _ => Err(MatrixError::internal("a writer answered the wrong job")),
            }
        }
    }

    /// Takes in a room joined through a resident server; answers what became of the join.
    pub async fn join_remote(&self, room_id: &str, join: RemoteJoin) -> MatrixResult<PduOutcome> {
        let job = Self::job(JobStart::JoinRemote(Box::new(join)), Vec::new());
        match self.submit_job(room_id, job).await? {
            JobAnswer::Received(outcome) => Ok(outcome),
            _ => Err(MatrixError::internal("a writer answered the wrong job")),
        }
    }

    /// Keeps our user's member event of a room we are not in (see [`out_of_band`]).
    pub async fn out_of_band(&self, room_id: &str, member: OutOfBandMember) -> MatrixResult<()> {
        let job = Self::job(JobStart::OutOfBand(Box::new(member)), Vec::new());
        self.submit_job(room_id, job).await.map(|_| ())
    }

    /// Builds, signs and checks `draft` on the room's current state without storing it.
    pub async fn build(&self, room_id: &str, draft: EventDraft) -> MatrixResult<BuiltPdu> {
        let job = Self::job(JobStart::Build, vec![draft]);
        match self.submit_job(room_id, job).await? {
            JobAnswer::Built(built) => Ok(*built),
            _ => Err(MatrixError::internal("a writer answered the wrong job")),
        }
    }

    async fn submit_job(&self, room_id: &str, job: Job) -> MatrixResult<JobAnswer> {
        let (reply, answer) = oneshot::channel();
        let job = Job { reply, ..job };
        self.enqueue(room_id, job).await;
        answer
            .await
            .map_err(|_| MatrixError::internal("room writer dropped a job"))?
    }

    /// Puts `job` in the room's queue, waiting while it is full.
    async fn enqueue(&self, room_id: &str, mut job: Job) {
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
    fn try_enqueue(&self, room_id: &str, mut job: Job) -> Result<(), Job> {
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
                        Arc::clone(&self.ctx),
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
async fn next_job(
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

async fn run_writer(
    ctx: Arc<WriterContext>,
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
        let ctx2 = Arc::clone(&ctx);
        let room = room_id.clone();
        let worked = tokio::task::spawn_blocking(move || {
            let mut head = head;
            let mut answers = Vec::with_capacity(jobs.len());
            let mut written = Written::default();
            for job in jobs {
                let result =
                    process_job(&ctx2, &room, &mut head, job.start, job.drafts, &mut written);
                answers.push((job.reply, result));
            }
            // Group commit: one fsync for everything above, before any answer and before
            // the stream tells syncing clients.
            let synced = match ctx2.store.db.sync_wal() {
                Ok(()) => true,
                Err(e) => {
                    head = None;
                    let error = MatrixError::from(e);
                    for (_, result) in answers.iter_mut() {
                        *result = Err(error.clone());
                    }
                    false
                }
            };
            // Even after a failed fsync the batches are visible to readers, so the stream
            // must move past them with their changes, not skip them.
            for (ticket, change) in written.changes {
                ticket.commit(vec![change]);
            }
            // Only durable events leave for other servers (after a failed fsync they wait
            // in the outbox for the sender's next start or wake-up).
            if synced {
                for destination in &written.destinations {
                    ctx2.outbox.wake(destination);
                }
            }
            (head, answers)
        })
        .await;
        match worked {
            Ok((new_head, answers)) => {
                head = new_head;
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // The jobs' replies were dropped with the panicked task; their callers see
                // an internal error. Start again from the stored head.
                tracing::error!(room = %room_id, "room writer task failed: {e}");
                head = None;
            }
        }
    }
}

fn process_job(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    start: JobStart,
    drafts: Vec<EventDraft>,
    written: &mut Written,
) -> MatrixResult<JobAnswer> {
    let mut ids = Vec::with_capacity(drafts.len() + 1);
    match start {
        JobStart::Create(create, version) => {
            ids.push(create_room(ctx, room_id, head, *create, version, written)?);
        }
        JobStart::Append => {}
        JobStart::Forget(user) => forget(&ctx.store, room_id, &user)?,
        JobStart::JoinRemote(join) => {
            return match remote_join::join(ctx, room_id, head, *join, written) {
                Ok(outcome) => Ok(JobAnswer::Received(outcome)),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::OutOfBand(member) => {
            return match out_of_band::write(ctx, room_id, head, *member, written) {
                Ok(()) => Ok(JobAnswer::Events(Vec::new())),
                Err(e) => {
                    *head = None;
                    Err(e)
                }
            };
        }
        JobStart::Build => {
            let current = match head {
                Some(current) => current,
                None => head.insert(RoomHead::load(&ctx.store, room_id)?),
            };
            let draft = drafts
                .into_iter()
                .next()
                .ok_or_else(|| MatrixError::internal("nothing to build"))?;
            let (built, _, _) = build(ctx, current, draft)?;
            return Ok(JobAnswer::Built(Box::new(built)));
        }
        JobStart::Receive(event) => {
            if head.is_none() {
                *head = Some(RoomHead::load(&ctx.store, room_id)?);
            }
            let current = head.as_mut().expect("loaded above");
            return match remote_event::receive(ctx, current, *event, written) {
                Ok(outcome) => Ok(JobAnswer::Received(outcome)),
                Err(e) => {
                    // A storage failure may leave the cached head ahead of the tables.
                    *head = None;
                    Err(e)
                }
            };
        }
    }
    for draft in drafts {
        if head.is_none() {
            *head = Some(RoomHead::load(&ctx.store, room_id)?);
        }
        let current = head.as_mut().expect("loaded above");
        let ends_guest_access = draft.kind == "m.room.guest_access"
            && draft.state_key.as_deref() == Some("")
            && !guests::guests_can_join(Some(&draft.content));
        match append(ctx, current, draft, written) {
            Ok(id) => {
                ids.push(id);
                if ends_guest_access {
                    remove_guests(ctx, current, written)?;
                }
            }
            Err(e) => {
                if e.status >= 500 {
                    // A storage failure may leave the cached head ahead of the tables.
                    *head = None;
                }
                return Err(e);
            }
        }
    }
    Ok(JobAnswer::Events(ids))
}

/// Spec: "Guest Access", "Server behaviour": once guest access ends, every local guest
/// who is joined or invited leaves, by its own `leave` event, right after the change (in
/// the same job, so no event comes between). A leave the rules refuse is logged and
/// skipped; a storage failure stops the job like any other.
fn remove_guests(
    ctx: &WriterContext,
    head: &mut RoomHead,
    written: &mut Written,
) -> MatrixResult<()> {
    for guest in head.local_guests(&ctx.store, &ctx.server_name)? {
        let leave = EventDraft::new(
            &guest,
            "m.room.member",
            Some(&guest),
            json!({ "membership": "leave" }),
        );
        match append(ctx, head, leave, written) {
            Ok(_) => {
                tracing::info!(room = %head.record.room_id, user = %guest, "guest left: guest access ended")
            }
            Err(e) if e.status >= 500 => return Err(e),
            Err(e) => {
                tracing::warn!(room = %head.record.room_id, user = %guest, "guest could not be made to leave: {}", e.message);
            }
        }
    }
    Ok(())
}

/// Sets the `forgotten` flag of a user's membership record, in the room's writer so that
/// it cannot race a membership change.
fn forget(store: &EventStore, room_id: &str, user: &str) -> MatrixResult<()> {
    let key = membership_key(user, room_id);
    let mut record: MembershipRecord = store
        .db
        .get(Table::UseridRoomidMembership, &key)?
        .map(|b| decode(Table::UseridRoomidMembership, &b))
        .transpose()?
        .ok_or_else(|| MatrixError::not_found("You have never been in this room"))?;
    if !matches!(record.membership.as_str(), "leave" | "ban") {
        return Err(MatrixError::new(
            400,
            ErrorCode::Unknown,
            "You must leave the room before forgetting it",
        ));
    }
    record.forgotten = true;
    let mut batch = store.db.batch();
    batch.put(Table::UseridRoomidMembership, &key, encode(&record));
    store.db.write_relaxed(batch)?;
    Ok(())
}

/// A room's head as its writer keeps it.
struct RoomHead {
    short: u64,
    record: RoomRecord,
    version: RoomVersion,
    state: StateMap,
    cache: HashMap<ShortEventId, Arc<StoredEvent>>,
    /// Local joined members, loaded when first needed.
    local_members: Option<Vec<LocalMember>>,
    /// The parsed power levels, with the short ids of the create and power levels
    /// events they come from (parsed again only when those change).
    power_levels: Option<((ShortEventId, ShortEventId), Arc<PowerLevels>)>,
    /// The forward extremities with their short ids and depths, loaded when first needed.
    extremities: Option<Vec<graph::Extremity>>,
    /// The other servers' joined members, read from the current state when first needed
    /// and kept current after each member event.
    remote_servers: Option<RemoteJoined>,
}

/// Other servers' joined members of a room, and the servers they make up.
#[derive(Default)]
struct RemoteJoined {
    users: std::collections::HashSet<String>,
    per_server: HashMap<String, usize>,
    servers: BTreeSet<String>,
}

impl RemoteJoined {
    /// `user` (of another server) is now joined, or not.
    fn set(&mut self, user: &str, joined: bool) {
        let Some((_, server)) = user.split_once(':') else {
            return;
        };
        if joined {
            if self.users.insert(user.to_owned()) {
                let count = self.per_server.entry(server.to_owned()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    self.servers.insert(server.to_owned());
                }
            }
        } else if self.users.remove(user) {
            if let Some(count) = self.per_server.get_mut(server) {
                *count -= 1;
                if *count == 0 {
                    self.per_server.remove(server);
                    self.servers.remove(server);
                }
            }
        }
    }
}

impl RoomHead {
    fn load(store: &EventStore, room_id: &str) -> MatrixResult<Self> {
        let room = store
            .room(room_id)?
            .ok_or_else(|| MatrixError::not_found("Unknown room"))?;
        let state = store.state.load(room.record.state)?;
        Ok(Self {
            short: room.short,
            record: room.record,
            version: room.version,
            state,
            cache: HashMap::new(),
            local_members: None,
            power_levels: None,
            extremities: None,
            remote_servers: None,
        })
    }

    /// Gives a room we hold no state of another version (see the writer's
    /// `out_of_band` and `remote_join`).
    fn adopt_version(&mut self, store: &EventStore, version: RoomVersion) -> MatrixResult<()> {
        if self.record.state != 0 {
            return Err(MatrixError::internal("a room with state keeps its version"));
        }
        self.record.version = version.as_str().to_owned();
        self.version = version;
        let mut batch = store.db.batch();
        batch.put(
            Table::ShortroomidRoom,
            self.short.to_be_bytes(),
            encode(&self.record),
        );
        store.db.write_relaxed(batch)?;
        Ok(())
    }

    /// The forward extremities with their short ids and depths.
    fn extremities(&mut self, store: &EventStore) -> MatrixResult<&[graph::Extremity]> {
        if self.extremities.is_none() {
            let loaded =
                graph::load_extremities(store, &self.record.extremities, self.record.depth)?;
            self.extremities = Some(loaded);
        }
        Ok(self.extremities.as_deref().unwrap_or_default())
    }

    /// Forgets the parsed events and what was derived from them (a writer gone idle);
    /// they are read again when needed.
    fn drop_parsed(&mut self) {
        self.cache = HashMap::new();
        self.local_members = None;
        self.power_levels = None;
    }

    /// The current power levels, parsed once per change of the power levels event.
    fn power_levels(&mut self, store: &EventStore) -> MatrixResult<Arc<PowerLevels>> {
        let create = self.state_event(store, "m.room.create", "")?;
        let levels = self.state_event(store, "m.room.power_levels", "")?;
        let key = (
            create.as_ref().map_or(0, |e| e.short),
            levels.as_ref().map_or(0, |e| e.short),
        );
        if let Some((cached_key, parsed)) = &self.power_levels {
            if *cached_key == key {
                return Ok(Arc::clone(parsed));
            }
        }
        let parsed = Arc::new(PowerLevels::new(
            self.version,
            create.as_ref().map(|e| e.pdu()),
            levels.as_ref().map(|e| e.pdu()),
        ));
        self.power_levels = Some((key, Arc::clone(&parsed)));
        Ok(parsed)
    }

    /// The room's local joined members, read from the current state once per head.
    fn local_members(
        &mut self,
        store: &EventStore,
        server_name: &str,
    ) -> MatrixResult<&[LocalMember]> {
        if self.local_members.is_none() {
            let suffix = format!(":{server_name}");
            let mut shorts = Vec::new();
            for (key, event) in &self.state {
                let (kind, state_key) = store.state.state_key_of(*key)?;
                if kind == "m.room.member" && state_key.ends_with(&suffix) {
                    shorts.push(*event);
                }
            }
            let members = store
                .events(&shorts)?
                .iter()
                .filter_map(|e| local_member(e.pdu()))
                .collect();
            self.local_members = Some(members);
        }
        Ok(self.local_members.as_deref().unwrap_or_default())
    }

    /// Local guests who are joined or invited (see [`guests::must_leave_without_access`]).
    fn local_guests(&self, store: &EventStore, server_name: &str) -> MatrixResult<Vec<String>> {
        let suffix = format!(":{server_name}");
        let mut shorts = Vec::new();
        for (key, event) in &self.state {
            let (kind, state_key) = store.state.state_key_of(*key)?;
            if kind == "m.room.member" && state_key.ends_with(&suffix) {
                shorts.push(*event);
            }
        }
        Ok(store
            .events(&shorts)?
            .iter()
            .filter(|e| guests::must_leave_without_access(e.content()))
            .filter_map(|e| e.state_key().map(str::to_owned))
            .collect())
    }

    /// The other servers with joined members in the current state: read from the member
    /// events once, then kept current by [`RoomHead::member_changed`] (a member event costs
    /// a set update, not a read of the room's members).
    fn remote_servers(
        &mut self,
        store: &EventStore,
        server_name: &str,
    ) -> MatrixResult<&BTreeSet<String>> {
        if self.remote_servers.is_none() {
            let mut shorts = Vec::new();
            for (key, event) in &self.state {
                let (kind, state_key) = store.state.state_key_of(*key)?;
                let remote = state_key
                    .split_once(':')
                    .is_some_and(|(_, server)| server != server_name);
                if kind == "m.room.member" && remote {
                    shorts.push(*event);
                }
            }
            let mut joined = RemoteJoined::default();
            for event in store.events(&shorts)? {
                if membership_of(event.pdu()) == "join" {
                    if let Some(user) = event.state_key() {
                        joined.set(user, true);
                    }
                }
            }
            self.remote_servers = Some(joined);
        }
        Ok(&self
            .remote_servers
            .get_or_insert_with(Default::default)
            .servers)
    }

    /// Keeps the local members and the other servers current after `user`'s member event
    /// became `pdu` (`None`: their member event left the state, as in a state reset).
    fn member_changed(&mut self, user: &str, pdu: Option<&Value>, server_name: &str) {
        let local = user
            .split_once(':')
            .is_some_and(|(_, server)| server == server_name);
        if !local {
            if let Some(remote) = self.remote_servers.as_mut() {
                remote.set(user, pdu.is_some_and(|p| membership_of(p) == "join"));
            }
            return;
        }
        let Some(members) = self.local_members.as_mut() else {
            return;
        };
        members.retain(|m| m.user_id != user);
        if let Some(member) = pdu.and_then(local_member) {
            members.push(member);
        }
    }

    /// An event by short id, parsed once and cached (state events of the room's recent
    /// states are what remote events name as auth events).
    fn event(&mut self, store: &EventStore, short: ShortEventId) -> MatrixResult<Arc<StoredEvent>> {
        if let Some(event) = self.cache.get(&short) {
            return Ok(Arc::clone(event));
        }
        if self.cache.len() >= MAX_CACHED_EVENTS {
            self.cache.clear();
        }
        let event = Arc::new(store.event(short)?);
        self.cache.insert(short, Arc::clone(&event));
        Ok(event)
    }

    /// The current state event `(type, state_key)`, parsed once and cached.
    fn state_event(
        &mut self,
        store: &EventStore,
        event_type: &str,
        state_key: &str,
    ) -> MatrixResult<Option<Arc<StoredEvent>>> {
        let Some(key) = store.state.find_state_key(event_type, state_key)? else {
            return Ok(None);
        };
        let Some(&short) = self.state.get(&key) else {
            return Ok(None);
        };
        self.event(store, short).map(Some)
    }
}

fn pdu_error(e: PduError) -> MatrixError {
    match e {
        PduError::TooLarge(_) => MatrixError::new(413, ErrorCode::TooLarge, e.to_string()),
        PduError::BadContent(_) | PduError::BadShape(_) => MatrixError::bad_json(e.to_string()),
    }
}

fn forbidden(e: auth_rules::AuthError) -> MatrixError {
    MatrixError::forbidden(e.0)
}

/// What a drain wrote: positions, committed to the stream after the fsync, and the
/// servers that have new events queued, woken after it.
#[derive(Default)]
struct Written {
    changes: Vec<(PosTicket, StreamChange)>,
    destinations: BTreeSet<String>,
}

/// Writes a new room's create event.
fn create_room(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    create: BuiltPdu,
    version: RoomVersion,
    written: &mut Written,
) -> MatrixResult<String> {
    let store = &ctx.store;
    if store.room_short(room_id)?.is_some() {
        return Err(MatrixError::new(
            400,
            ErrorCode::RoomInUse,
            "Room already exists",
        ));
    }
    // We built and signed the create event ourselves.
    let server = ctx.server_name.as_str();
    let signed_by = |name: &str| name == server;
    let auth_ctx = AuthContext {
        version,
        signed_by: &signed_by,
    };
    let no_state: HashMap<(String, String), Value> = HashMap::new();
    auth_rules::check(&auth_ctx, &create.pdu, &no_state).map_err(forbidden)?;
    let short_room = store.allocate_room();
    let mut fresh = RoomHead {
        short: short_room,
        record: RoomRecord {
            room_id: room_id.to_owned(),
            version: version.as_str().to_owned(),
            state: 0,
            extremities: Vec::new(),
            depth: 0,
            last_pos: 0,
            joined: 0,
            invited: 0,
            visibility_restricted: false,
        },
        version,
        state: StateMap::default(),
        cache: HashMap::new(),
        local_members: None,
        power_levels: None,
        extremities: Some(Vec::new()),
        remote_servers: Some(RemoteJoined::default()),
    };
    let mut batch = store.db.batch();
    batch.put(Table::RoomidShortroomid, room_id, short_room.to_be_bytes());
    let id = write_event(
        ctx,
        &mut fresh,
        create,
        None,
        batch,
        written,
        Edges::default(),
    )?;
    *head = Some(fresh);
    Ok(id)
}

/// Builds, authorizes and writes one event on the room's head.
fn append(
    ctx: &WriterContext,
    head: &mut RoomHead,
    draft: EventDraft,
    written: &mut Written,
) -> MatrixResult<String> {
    let store = &ctx.store;
    if let Some(txn) = &draft.txn {
        if let Some(existing) = store.db.get(Table::TxnidEventid, &txn.key)? {
            return String::from_utf8(existing)
                .map_err(|_| MatrixError::internal("corrupt transaction record"));
        }
    }
    let (built, txn, edges) = build(ctx, head, draft)?;
    write_event(ctx, head, built, txn, store.db.batch(), written, edges)
}

/// Builds and signs one event on the room's head and checks it against the auth rules
/// (the state before it is the current state).
fn build(
    ctx: &WriterContext,
    head: &mut RoomHead,
    mut draft: EventDraft,
) -> MatrixResult<(BuiltPdu, Option<TxnRef>, Edges)> {
    let store = &ctx.store;
    if draft.kind == "m.room.redaction" {
        check_redaction(ctx, head, &draft)?;
        if head.version.redacts_in_content() {
            if let (Some(target), Some(content)) = (&draft.redacts, draft.content.as_object_mut()) {
                content.insert("redacts".into(), json!(target));
            }
        }
    }

    if draft.kind == "m.room.member"
        && guests::is_guest_join(&draft.sender, draft.state_key.as_deref(), &draft.content)
    {
        let access = head.state_event(store, "m.room.guest_access", "")?;
        if !guests::guests_can_join(access.as_ref().map(|e| e.content())) {
            return Err(MatrixError::forbidden(
                "Guests may not join this room (its guest access is not can_join)",
            ));
        }
    }

    // Auth events: the selection algorithm over the current state.
    let partial = json!({
        "type": draft.kind,
        "sender": draft.sender,
        "state_key": draft.state_key,
        "content": draft.content,
    });
    let mut auth_state = CachedAuthState::default();
    let mut auth_events = Vec::new();
    let mut edges = Edges::default();
    for (kind, key) in auth_rules::auth_event_keys(head.version, &partial) {
        if let Some(event) = head.state_event(store, &kind, &key)? {
            auth_events.push(event.event_id.clone());
            edges.auth.push(event.short);
            auth_state.0.insert((kind, key), event);
        }
    }
    if let Some(create) = head.state_event(store, "m.room.create", "")? {
        auth_state
            .0
            .entry(("m.room.create".into(), String::new()))
            .or_insert(create);
    }

    let (prev, depth) = graph::local_prev_events(head.extremities(store)?);
    let prev_events: Vec<String> = prev.iter().map(|e| e.id.clone()).collect();
    edges.prev = prev.iter().map(|e| e.short).collect();
    let txn = draft.txn.take();
    // Rooms v1 and v2 list each prev and auth event with its reference hash.
    let mut hashes: HashMap<String, [u8; 32]> = HashMap::new();
    if head.version.event_references_carry_hashes() {
        let prev_events = store.events(&edges.prev)?;
        let referenced = auth_state.0.values().map(|e| &**e).chain(&prev_events);
        for event in referenced {
            let hash = event_hashes::reference_hash(event.pdu(), head.version)
                .map_err(MatrixError::internal)?;
            hashes.insert(event.event_id.clone(), hash);
        }
    }
    let built = pdu::build_referencing(
        head.version,
        PduTemplate {
            room_id: Some(head.record.room_id.clone()),
            sender: draft.sender,
            kind: draft.kind,
            state_key: draft.state_key,
            content: draft.content,
            prev_events,
            auth_events,
            depth,
            origin_server_ts: now_ms(),
            redacts: draft.redacts,
        },
        &|id| hashes.get(id).copied(),
        &ctx.server_name,
        &ctx.signing_key,
    )
    .map_err(pdu_error)?;

    let server = ctx.server_name.clone();
    let signed_by = move |name: &str| name == server;
    let auth_ctx = AuthContext {
        version: head.version,
        signed_by: &signed_by,
    };
    auth_rules::check(&auth_ctx, &built.pdu, &auth_state).map_err(forbidden)?;
    Ok((built, txn, edges))
}

/// The short ids of a new event's prev and auth events, known to the code that built it.
#[derive(Default)]
struct Edges {
    prev: Vec<ShortEventId>,
    auth: Vec<ShortEventId>,
}

/// The state the auth rules read, borrowed from the writer's cache of parsed state events
/// (no copy of a big power levels event per message).
#[derive(Default)]
struct CachedAuthState(HashMap<(String, String), Arc<StoredEvent>>);

impl AuthState for CachedAuthState {
    fn get(&self, event_type: &str, state_key: &str) -> Option<&Value> {
        self.0
            .get(&(event_type.to_owned(), state_key.to_owned()))
            .map(|e| e.pdu())
    }

    /// Stored events are held under their ids.
    fn create_event_id(&self) -> Option<&str> {
        self.0
            .get(&("m.room.create".to_owned(), String::new()))
            .map(|e| e.event_id.as_str())
    }
}

/// Client-server rules on redactions beyond the auth rules: the target must be in this
/// room, and redacting someone else's event takes the `redact` power level.
fn check_redaction(
    ctx: &WriterContext,
    head: &mut RoomHead,
    draft: &EventDraft,
) -> MatrixResult<()> {
    let store = &ctx.store;
    let target_id = draft
        .redacts
        .as_deref()
        .ok_or_else(|| MatrixError::bad_json("a redaction needs the event it redacts"))?;
    let target = store
        .event_by_id(target_id)?
        .filter(|t| t.meta.room == head.short)
        .ok_or_else(|| MatrixError::not_found("Event not found in this room"))?;
    if target.sender() == draft.sender {
        return Ok(());
    }
    let levels = head.power_levels(store)?;
    if levels.user(&draft.sender) < i128::from(levels.redact) {
        return Err(MatrixError::forbidden(
            "You don't have permission to redact other users' events",
        ));
    }
    Ok(())
}

/// A joined member of a member event, with the display name it sets.
fn local_member(pdu: &Value) -> Option<LocalMember> {
    let content = pdu.get("content")?;
    if content.get("membership").and_then(Value::as_str) != Some("join") {
        return None;
    }
    Some(LocalMember {
        user_id: pdu.get("state_key")?.as_str()?.to_owned(),
        display_name: content
            .get("displayname")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Runs the new-event hooks inside the event's batch.
fn run_hooks(
    ctx: &WriterContext,
    head: &mut RoomHead,
    (pdu, short, pos): (&Value, ShortEventId, u64),
    redacted: Option<&StoredEvent>,
    historical: bool,
    batch: &mut Batch<'_>,
) -> MatrixResult<()> {
    if ctx.hooks.is_empty() {
        return Ok(());
    }
    let store = &ctx.store;
    let power_levels = head.power_levels(store)?;
    let levels_event = head.state_event(store, "m.room.power_levels", "")?;
    let notification_levels = levels_event
        .as_ref()
        .and_then(|e| e.pdu().get("content"))
        .and_then(|c| c.get("notifications"))
        .and_then(Value::as_object);
    let room = head.short;
    let joined_count = head.record.joined;
    let room_id = head.record.room_id.clone();
    let local_members = head.local_members(store, &ctx.server_name)?;
    let event = NewEvent {
        room_id: &room_id,
        room,
        pos,
        pdu,
        short,
        local_members,
        joined_count,
        power_levels: &power_levels,
        notification_levels,
        redacted,
        historical,
    };
    for hook in &ctx.hooks {
        hook.new_event(&event, batch)?;
    }
    Ok(())
}

fn relation_of(pdu: &Value) -> Option<(&str, &str)> {
    let relates = pdu.get("content")?.get("m.relates_to")?;
    Some((
        relates.get("rel_type")?.as_str()?,
        relates.get("event_id")?.as_str()?,
    ))
}

/// Writes `built` (already authorized) as the room's newest event, in one batch.
fn write_event(
    ctx: &WriterContext,
    head: &mut RoomHead,
    built: BuiltPdu,
    txn: Option<TxnRef>,
    mut batch: Batch<'_>,
    written: &mut Written,
    edges: Edges,
) -> MatrixResult<String> {
    let store = &ctx.store;
    let pdu = &built.pdu;
    let event_id = built.event_id.clone();
    let kind = pdu.get("type").and_then(Value::as_str).unwrap_or("");
    let state_key = pdu.get("state_key").and_then(Value::as_str);
    let short = store.state.intern_new_event(&event_id, &mut batch);
    let graph_record = graph::GraphRecord {
        depth: pdu.get("depth").and_then(Value::as_u64).unwrap_or(0),
        prev: edges.prev,
        auth: edges.auth,
        status: graph::EventStatus::Accepted,
    };
    graph::write(
        &mut batch,
        short,
        &graph_record,
        super::auth_index::state_key_of(store, pdu)?,
    );
    let ticket = store.stream.allocate()?;
    let pos = ticket.pos();
    let state_before = head.record.state;
    let mut state_after = state_before;
    let mut replaces = 0;
    let mut state_change = None;
    if let Some(state_key) = state_key {
        let key = store.state.state_key(kind, state_key)?;
        replaces = head.state.get(&key).copied().unwrap_or(0);
        let parent = (state_before != 0).then_some(state_before);
        state_after = store
            .state
            .save(parent, &[(key, Some(short))], &mut batch)?;
        state_change = Some(key);
    }
    let meta = EventMeta {
        room: head.short,
        pos,
        state_before,
        state_after,
        replaces,
        redacted_by: 0,
    };
    put_event(&mut batch, short, pdu, &meta);
    put_timeline_place(&mut batch, head.short, pos, short, pdu);

    let mut record = head.record.clone();
    note_history_visibility(&mut record, pdu);
    let mut member = None;
    if kind == "m.room.member" {
        if let Some(user) = state_key {
            let membership = membership_of(pdu);
            put_membership(
                store,
                &mut batch,
                &mut record,
                (user, membership, &event_id),
                pos,
            )?;
            member = Some((user.to_owned(), membership.to_owned()));
        }
    }

    if let Some(txn) = &txn {
        batch.put(Table::TxnidEventid, &txn.key, &event_id);
        batch.put(
            Table::ShorteventidTxnid,
            short.to_be_bytes(),
            keys::join(&[txn.device_id.as_bytes(), txn.txn_id.as_bytes()]),
        );
    }

    if let Some((rel_type, parent_id)) = relation_of(pdu) {
        let child = Child {
            short,
            event_id: &event_id,
            pdu,
        };
        index_relation(store, head, &mut batch, rel_type, parent_id, &child, pos)?;
    }

    let mut redacted = None;
    if let Some(target) = pdu::redaction_target(pdu) {
        redacted = apply_redaction(store, head, &mut batch, target, short)?;
    }

    // A local event is new to everyone: nothing names it yet.
    let prev_events: Vec<String> = pdu::event_ids(pdu, "prev_events")
        .map(str::to_owned)
        .collect();
    record.extremities =
        graph::next_extremities(&record.extremities, &prev_events, &event_id, false);
    record.depth = record.depth.max(graph_record.depth);
    record.state = state_after;
    record.last_pos = pos;
    batch.put(
        Table::ShortroomidRoom,
        head.short.to_be_bytes(),
        encode(&record),
    );
    run_hooks(
        ctx,
        head,
        (pdu, short, pos),
        redacted.as_ref(),
        false,
        &mut batch,
    )?;
    // Our event goes to every other server in the room, and to a member event's
    // target's server (an invite, a kick).
    let mut destinations = head.remote_servers(store, &ctx.server_name)?.clone();
    if let Some((user, _)) = &member {
        if let Some((_, server)) = user.split_once(':') {
            if server != ctx.server_name {
                destinations.insert(server.to_owned());
            }
        }
    }
    queue_for(&mut batch, &destinations, pos, &event_id);
    store.db.write_relaxed(batch)?;
    if let Some((user, _)) = &member {
        head.member_changed(user, Some(pdu), &ctx.server_name);
    }
    written.changes.push((
        ticket,
        StreamChange::RoomEvent {
            room: head.short,
            member,
        },
    ));
    written.destinations.extend(destinations);

    if let Some(cached) = head.extremities.as_mut() {
        cached.retain(|e| record.extremities.contains(&e.id));
        cached.push(graph::Extremity {
            id: event_id.clone(),
            short,
            depth: graph_record.depth,
        });
    }
    head.record = record;
    if let Some(key) = state_change {
        if let Some(old) = head.state.insert(key, short) {
            head.cache.remove(&old);
        }
        head.cache.insert(
            short,
            Arc::new(StoredEvent::from_pdu(
                short,
                event_id.clone(),
                built.pdu,
                meta,
            )),
        );
    }
    Ok(event_id)
}

/// Queues the event `event_id` (at stream position `pos`) for each of `destinations`.
fn queue_for(batch: &mut Batch<'_>, destinations: &BTreeSet<String>, pos: u64, event_id: &str) {
    for destination in destinations {
        let (table, key, value) = Outbox::queue_pdu(destination, pos, event_id);
        if let Some(value) = value {
            batch.put(table, key, value);
        }
    }
}

/// The PDU and its metadata rows of event `short`.
fn put_event(batch: &mut Batch<'_>, short: ShortEventId, pdu: &Value, meta: &EventMeta) {
    batch.put(Table::ShorteventidPdu, short.to_be_bytes(), encode(pdu));
    batch.put(Table::ShorteventidMeta, short.to_be_bytes(), meta.encode());
}

/// The rows that give an event its place in the room's timeline and the stream, and in
/// the timestamp index.
fn put_timeline_place(
    batch: &mut Batch<'_>,
    room: u64,
    pos: u64,
    short: ShortEventId,
    pdu: &Value,
) {
    batch.put(
        Table::ShortroomidPosShorteventid,
        timeline_key(room, pos),
        short.to_be_bytes(),
    );
    batch.put(Table::PosShortroomid, pos.to_be_bytes(), room.to_be_bytes());
    let ts = pdu
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    batch.put(
        Table::ShortroomidTsShorteventid,
        thread_key(room, ts, short),
        b"",
    );
}

/// Marks the room as having had restricted history visibility, for a history visibility
/// event that restricts it.
fn note_history_visibility(record: &mut RoomRecord, pdu: &Value) {
    let kind = pdu.get("type").and_then(Value::as_str);
    let state_key = pdu.get("state_key").and_then(Value::as_str);
    if kind == Some("m.room.history_visibility") && state_key == Some("") {
        record.visibility_restricted |= matches!(
            pdu.get("content")
                .and_then(|c| c.get("history_visibility"))
                .and_then(Value::as_str),
            Some("invited" | "joined")
        );
    }
}

/// The membership a member event sets (`leave` when it says nothing valid).
fn membership_of(pdu: &Value) -> &str {
    pdu.get("content")
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str)
        .unwrap_or("leave")
}

/// A user's membership record after `(user, membership, event id)` became the room's
/// current member event at `pos`, and the room's member counts.
fn put_membership(
    store: &EventStore,
    batch: &mut Batch<'_>,
    record: &mut RoomRecord,
    (user, membership, event_id): (&str, &str, &str),
    pos: u64,
) -> MatrixResult<()> {
    let key = membership_key(user, &record.room_id);
    let previous: Option<MembershipRecord> = store
        .db
        .get(Table::UseridRoomidMembership, &key)?
        .map(|b| decode(Table::UseridRoomidMembership, &b))
        .transpose()?;
    // An out-of-band membership was never counted: the room's counts start from leave.
    let before = previous
        .as_ref()
        .filter(|p| !p.out_of_band)
        .map_or("leave", |p| p.membership.as_str());
    record.count_change(before, membership);
    let last_join_pos = if membership == "join" {
        pos
    } else {
        previous.as_ref().map_or(0, |p| p.last_join_pos)
    };
    let joined_at = match (before, membership) {
        ("join", "join") => previous.as_ref().map_or(pos, |p| p.joined_at),
        (_, "join") => pos,
        _ => 0,
    };
    let entry = MembershipRecord {
        membership: membership.to_owned(),
        event_id: event_id.to_owned(),
        pos,
        last_join_pos,
        forgotten: false,
        joined_at,
        out_of_band: false,
    };
    batch.put(Table::UseridRoomidMembership, &key, encode(&entry));
    Ok(())
}

/// Relation index entries: `parent ++ pos ++ child`, and a thread root's latest activity.
#[allow(clippy::too_many_arguments)]
fn index_relation(
    store: &EventStore,
    head: &RoomHead,
    batch: &mut Batch<'_>,
    rel_type: &str,
    parent_id: &str,
    child_event: &Child<'_>,
    pos: u64,
) -> MatrixResult<()> {
    let Some(parent) = store.state.find_event(parent_id)? else {
        // Not held yet (a message from before we joined, or history not yet backfilled):
        // indexed when it gets its place.
        let mut prefix = parent_id.as_bytes().to_vec();
        prefix.push(0xFF);
        let waiting = store
            .db
            .scan_prefix(Table::EventidPendingrelation, &prefix)
            .take(MAX_PENDING_PER_PARENT)
            .count();
        // Bounded per parent: an event id can be known before its event exists (a hash),
        // so a member could line up any number of relations for one future event.
        if parent_id.len() <= MAX_EVENT_ID && waiting < MAX_PENDING_PER_PARENT {
            batch.put(
                Table::EventidPendingrelation,
                pending_key(parent_id, child_event.short),
                b"",
            );
        }
        return Ok(());
    };
    let parent_event = store.event(parent)?;
    if parent_event.meta.room != head.short {
        return Ok(());
    }
    let child = child_event.short;
    let kind = child_event
        .pdu
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("");
    // A thread's latest event is the one with the highest position: a reply placed as
    // history (backfill) below it leaves it, and the thread's place in `/threads`, alone.
    let previous_latest = if rel_type == "m.thread" {
        store
            .db
            .get(Table::ThreadrootLatestpos, parent.to_be_bytes())?
            .and_then(|b| keys::read_u64(&b))
    } else {
        None
    };
    let older = previous_latest.is_some_and(|latest| latest > pos);
    let mut aggregates = load_aggregates(store, parent)?;
    let kept_latest = aggregates.thread.as_ref().map(|t| t.latest);
    aggregates.add(&parent_event, rel_type, child_event);
    if let (true, Some(thread), Some(latest)) = (older, aggregates.thread.as_mut(), kept_latest) {
        thread.latest = latest;
    }
    if !aggregates.is_empty() {
        batch.put(
            Table::ShorteventidAggregates,
            parent.to_be_bytes(),
            encode(&aggregates),
        );
    }
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&parent.to_be_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key.extend_from_slice(&child.to_be_bytes());
    batch.put(
        Table::RelatesPosChild,
        key,
        encode(&RelationRecord {
            rel_type: rel_type.to_owned(),
            event_type: kind.to_owned(),
        }),
    );
    if rel_type == "m.thread" && !older {
        if let Some(previous) = previous_latest {
            batch.delete(
                Table::ShortroomidThreadpos,
                thread_key(head.short, previous, parent),
            );
        }
        batch.put(
            Table::ShortroomidThreadpos,
            thread_key(head.short, pos, parent),
            b"",
        );
        batch.put(
            Table::ThreadrootLatestpos,
            parent.to_be_bytes(),
            pos.to_be_bytes(),
        );
    }
    Ok(())
}

/// Relations kept waiting for one parent at most.
const MAX_PENDING_PER_PARENT: usize = 1000;

/// Event ids longer than this are not kept as pending parents (the spec caps ids at 255).
const MAX_EVENT_ID: usize = 255;

fn pending_key(parent_id: &str, child: ShortEventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(parent_id.len() + 9);
    key.extend_from_slice(parent_id.as_bytes());
    key.push(0xFF);
    key.extend_from_slice(&child.to_be_bytes());
    key
}

/// Indexes the relations that were waiting for `parent` (an event getting its timeline
/// place in `batch`, written there too): their index entries, the parent's aggregates
/// and a thread's latest activity, the children taken in position order.
fn adopt_pending_children(
    store: &EventStore,
    head: &RoomHead,
    batch: &mut Batch<'_>,
    parent: (ShortEventId, &str, &Value),
) -> MatrixResult<()> {
    let (parent_short, parent_id, parent_pdu) = parent;
    let mut prefix = parent_id.as_bytes().to_vec();
    prefix.push(0xFF);
    let mut children = Vec::new();
    for entry in store.db.scan_prefix(Table::EventidPendingrelation, &prefix) {
        let (key, _) = entry?;
        batch.delete(Table::EventidPendingrelation, &key);
        let Some(short) = key.get(prefix.len()..).and_then(keys::read_u64) else {
            continue;
        };
        let child = store.event(short)?;
        if child.meta.room == head.short && child.has_timeline_place() {
            children.push(child);
        }
    }
    if children.is_empty() {
        return Ok(());
    }
    children.sort_by_key(|c| c.meta.pos);
    let meta = EventMeta {
        room: head.short,
        pos: 0,
        state_before: 0,
        state_after: 0,
        replaces: 0,
        redacted_by: 0,
    };
    let parent_event =
        StoredEvent::from_pdu(parent_short, parent_id.to_owned(), parent_pdu.clone(), meta);
    let mut aggregates = load_aggregates(store, parent_short)?;
    let mut thread_pos = None;
    for child in &children {
        let Some((rel_type, to)) = relation_of(child.pdu()) else {
            continue;
        };
        if to != parent_id {
            continue;
        }
        let as_child = Child {
            short: child.short,
            event_id: &child.event_id,
            pdu: child.pdu(),
        };
        aggregates.add(&parent_event, rel_type, &as_child);
        let mut key = Vec::with_capacity(24);
        key.extend_from_slice(&parent_short.to_be_bytes());
        key.extend_from_slice(&child.meta.pos.to_be_bytes());
        key.extend_from_slice(&child.short.to_be_bytes());
        batch.put(
            Table::RelatesPosChild,
            key,
            encode(&RelationRecord {
                rel_type: rel_type.to_owned(),
                event_type: child.kind().to_owned(),
            }),
        );
        if rel_type == "m.thread" {
            thread_pos = Some(child.meta.pos);
        }
    }
    if !aggregates.is_empty() {
        batch.put(
            Table::ShorteventidAggregates,
            parent_short.to_be_bytes(),
            encode(&aggregates),
        );
    }
    if let Some(pos) = thread_pos {
        // Replies indexed directly (while the parent was held as an outlier) may already
        // have given the thread a latest position: the higher one stays.
        let previous = store
            .db
            .get(Table::ThreadrootLatestpos, parent_short.to_be_bytes())?
            .and_then(|b| keys::read_u64(&b));
        if previous.is_none_or(|p| p < pos) {
            if let Some(previous) = previous {
                batch.delete(
                    Table::ShortroomidThreadpos,
                    thread_key(head.short, previous, parent_short),
                );
            }
            batch.put(
                Table::ShortroomidThreadpos,
                thread_key(head.short, pos, parent_short),
                b"",
            );
            batch.put(
                Table::ThreadrootLatestpos,
                parent_short.to_be_bytes(),
                pos.to_be_bytes(),
            );
        }
    }
    Ok(())
}

fn load_aggregates(store: &EventStore, parent: ShortEventId) -> MatrixResult<Aggregates> {
    Ok(store
        .db
        .get(Table::ShorteventidAggregates, parent.to_be_bytes())?
        .map(|b| decode(Table::ShorteventidAggregates, &b))
        .transpose()?
        .unwrap_or_default())
}

/// Recomputes a parent's aggregates from its children, leaving out `without` (a child
/// being redacted in the same batch).
fn rebuild_aggregates(
    store: &EventStore,
    batch: &mut Batch<'_>,
    parent: ShortEventId,
    without: ShortEventId,
) -> MatrixResult<()> {
    let parent_event = store.event(parent)?;
    let aggregates = super::relations::aggregates_of_children(store, &parent_event, |child| {
        Ok(child.short != without)
    })?;
    if aggregates.is_empty() {
        batch.delete(Table::ShorteventidAggregates, parent.to_be_bytes());
    } else {
        batch.put(
            Table::ShorteventidAggregates,
            parent.to_be_bytes(),
            encode(&aggregates),
        );
    }
    Ok(())
}

/// `room ++ u64 ++ short event`: the key shape of the thread and timestamp indexes.
pub(super) fn thread_key(room: u64, pos: u64, root: ShortEventId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&room.to_be_bytes());
    key[8..16].copy_from_slice(&pos.to_be_bytes());
    key[16..].copy_from_slice(&root.to_be_bytes());
    key
}

/// Rewrites the redacted event's PDU in its redacted form and records who redacted it;
/// its relation entry goes too (a redacted edit or reaction no longer counts). Answers the
/// event as it was, when the redaction applied.
fn apply_redaction(
    store: &EventStore,
    head: &mut RoomHead,
    batch: &mut Batch<'_>,
    target_id: &str,
    redaction: ShortEventId,
) -> MatrixResult<Option<StoredEvent>> {
    let Some(target) = store.event_by_id(target_id)? else {
        return Ok(None);
    };
    if target.meta.room != head.short || target.meta.redacted_by != 0 {
        return Ok(None);
    }
    if let Some((_, parent_id)) = relation_of(target.pdu()) {
        if let Some(parent) = store.state.find_event(parent_id)? {
            let mut key = Vec::with_capacity(24);
            key.extend_from_slice(&parent.to_be_bytes());
            key.extend_from_slice(&target.meta.pos.to_be_bytes());
            key.extend_from_slice(&target.short.to_be_bytes());
            batch.delete(Table::RelatesPosChild, key);
            rebuild_aggregates(store, batch, parent, target.short)?;
        }
    }
    let redacted = redact(target.pdu(), head.version);
    batch.put(
        Table::ShorteventidPdu,
        target.short.to_be_bytes(),
        encode(&redacted),
    );
    let meta = EventMeta {
        redacted_by: redaction,
        ..target.meta
    };
    batch.put(
        Table::ShorteventidMeta,
        target.short.to_be_bytes(),
        meta.encode(),
    );
    // A redacted state event stays in the state, redacted: drop the parsed copy.
    head.cache.remove(&target.short);
    Ok(Some(target))
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

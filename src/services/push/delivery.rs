//! Sending notifications to push gateways.
//!
//! Spec: push gateway API, `POST /_matrix/push/v1/notify`, and client-server API "Push
//! Notifications" ("Homeserver behaviour"). An event that notifies users with pushers
//! leaves one entry in the push queue in its own write batch (see [`super::queue`]), so
//! nothing acknowledged is lost to a crash and the send path never waits for a gateway. A
//! worker reads the queue once, in stream order, and hands each entry to the pushers of
//! the users it lists; each pusher delivers its own in order, one request per entry (one
//! device), with the user's unread count across the rooms they are in (read once for each
//! batch of up to [`PER_PUSHER`] entries, whose bodies are built together), and records
//! how far it got in its cursor. Pushers are served concurrently (at most [`MAX_IN_FLIGHT`]
//! at once), so a slow or dead gateway holds up only its own pushers. A pusher whose
//! gateway fails keeps its place and is retried with a doubling back-off (1 s to 5 min);
//! entries queued more than a day ago are skipped unsent; the pushkeys a gateway answers
//! as `rejected` lose their pusher. Entries every pusher has passed are deleted (one
//! range at most once a second). The worker runs on a background thread at the lowest
//! CPU priority ([`crate::services::background`]), and while the rest of the machine keeps
//! its CPUs busy it takes only a small share of one ([`crate::services::cpu_share`]: the
//! pushes wait, queued), so that sends keep their pace on a busy server; its writes are
//! made on the server's own threads ([`Writes`]).
//! A user whose read receipt moved (a receipt or `/read_markers` of theirs) is owed a
//! badge-only push on each pusher with nothing else to send: the new count, no event
//! (as Synapse does, so that a phone's badge falls when its owner reads elsewhere). It is
//! sent only when the count differs from the last one the pusher was sent, and, unlike
//! an event's push, carries `unread` even when it is zero (the push gateway API says
//! zero counts "should be omitted"; a push whose only content is the count that cleared
//! would then say nothing, and Sygnal would leave the badge as it was). Badge pushes
//! are not queued on disk: one lost to a restart is made up by the next push.
//! Gateway URLs are user input: the HTTP client resolves them through the same address guard as
//! federation (`federation.ip_range_allowlist` opens private ranges) and follows no
//! redirect.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::pushers::{Pusher, PusherIndex};
use super::queue::{self, QueuedEvent};
use super::Push;
use crate::services::cpu_share::{thread_cpu_ns, CpuShare};
use crate::services::ephemeral::receipts::ReadPositions;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::stream::{StreamChange, StreamSubscriber};
use crate::storage::Table;

/// Entries one pusher's delivery takes at a time.
const PER_PUSHER: usize = 50;
/// Entries held in memory per pusher; a pusher further behind reads its own from the
/// queue again once it has caught up with these.
const HELD_PER_PUSHER: usize = 1_000;
/// Queue entries read per pass.
const READ_PER_PASS: usize = 10_000;
/// Passed entries are deleted at most this often: each deletion is one range tombstone
/// (cheap to write, but every read of the queue steps over those not yet compacted).
const DELETE_EVERY: Duration = Duration::from_secs(1);
/// Pushers delivered to at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a gateway gets to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry of a failing pusher, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Entries queued longer ago than this are skipped unsent.
const MAX_AGE_MS: u64 = 24 * 3_600_000;
/// The largest gateway answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The worker looks at the queue at least this often (a missed wake-up costs no more).
const IDLE_LOOK: Duration = Duration::from_secs(30);
/// How long deliveries under way may take to end at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the worker lets new entries gather after a wake-up, so that a busy room's
/// events are taken in a few passes rather than one pass per event.
const GATHER: Duration = Duration::from_millis(10);

/// What the worker needs to know of rooms and receipts (implemented over the services).
pub trait PushLookups: Send + Sync {
    /// An event's id and PDU by short id.
    fn event(&self, short: u64) -> ServiceResult<(String, Value)>;
    /// The room `room` if `user_id` is joined to it or invited (an invite notifies the
    /// invitee: `.m.rule.invite_for_me`), else `None`.
    fn member_room(&self, room: u64, user_id: &str) -> ServiceResult<Option<MemberRoom>>;
    /// How far the user has read in a room.
    fn read_positions(&self, room: u64, user_id: &str) -> ServiceResult<ReadPositions>;
    /// The room's name (`m.room.name`) and the sender's display name there, if any.
    fn names(&self, room_id: &str, sender: &str) -> (Option<String>, Option<String>);
}

/// A room a user is joined to or invited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRoom {
    /// The room's id.
    pub room_id: String,
    /// While the user is invited (not joined): the stream position of their current
    /// invite, where its notification entry is (an older invite's, or what notified them
    /// before they left, is not theirs to be pushed or counted now).
    pub invited_at: Option<u64>,
}

/// Which addresses gateways may be reached at.
pub type AddressGuard = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// One push a pusher owes: a queue entry's event.
#[derive(Debug, Clone, Copy)]
struct Item {
    pos: u64,
    room: u64,
    event: u64,
    queued: u64,
}

impl Item {
    /// The push of the queue entry at `pos`.
    fn of(pos: u64, entry: &QueuedEvent) -> Self {
        Self {
            pos,
            room: entry.room,
            event: entry.event,
            queued: entry.queued,
        }
    }
}

/// A pusher's failures: when it may be tried again and the next wait.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    next: Duration,
}

/// What the worker knows of one pusher.
struct PusherState {
    pusher: Pusher,
    /// The position delivered up to (as stored).
    cursor: u64,
    /// Entries for it read from the queue, oldest first.
    held: VecDeque<Item>,
    /// Entries for it between the last held one and the reader were not held (too many,
    /// or it came with a cursor behind the reader): read again from the queue when the
    /// held ones are done.
    behind: bool,
    backoff: Option<Backoff>,
    /// The delivery task serving it, if one runs.
    task: Option<tokio::task::Id>,
    /// Its cursor moved since it was last stored.
    unsaved: bool,
    /// Its user's read receipt moved: a badge-only push is owed once nothing else is.
    badge_due: bool,
    /// The last badge it was sent (`None`: none yet since the worker started).
    last_badge: Option<u64>,
}

impl PusherState {
    /// Puts the pusher in back-off: 1 s after its first failure, doubled after each next
    /// one up to [`MAX_BACKOFF`]; answers the wait.
    fn back_off(&mut self) -> Duration {
        let next = self
            .backoff
            .map_or(FIRST_BACKOFF, |b| (b.next * 2).min(MAX_BACKOFF));
        self.backoff = Some(Backoff {
            until: Instant::now() + next,
            next,
        });
        next
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.backoff.is_some_and(|b| b.until > now)
    }

    /// Holds the entry at `pos` if it is for this pusher and there is room.
    fn offer(&mut self, item: Item) {
        if item.pos <= self.cursor || self.behind {
            return;
        }
        if self.held.back().is_some_and(|last| last.pos >= item.pos) {
            return;
        }
        if self.held.len() < HELD_PER_PUSHER {
            self.held.push_back(item);
        } else {
            self.behind = true;
        }
    }
}

/// What the worker keeps between passes.
#[derive(Default)]
struct Progress {
    /// By pusher key.
    pushers: HashMap<Vec<u8>, PusherState>,
    /// The queue has been read up to here (every entry at or before it was offered).
    reader: u64,
    /// Entries at or before it are deleted.
    deleted_upto: u64,
    started: bool,
    /// When entries were last deleted.
    last_delete: Option<Instant>,
    /// The pusher each delivery task serves.
    tasks: HashMap<tokio::task::Id, Vec<u8>>,
    /// The pusher index as last followed, when nothing of it was left for a later pass:
    /// while the index is the same, there is nothing to follow. Every change of the
    /// index makes a new one (`Arc::make_mut`, and this reference keeps it shared).
    followed: Option<Arc<PusherIndex>>,
}

impl Progress {
    /// The cursors moved since they were last stored, into `writes`.
    fn take_unsaved(&mut self, writes: &mut Writes) {
        for state in self.pushers.values_mut() {
            if std::mem::take(&mut state.unsaved) {
                writes.cursors.push((state.pusher.clone(), state.cursor));
            }
        }
    }
}

/// The queue writes of one pass: cursors that moved and the entries every pusher has
/// passed. The worker's threads run at lower priority, so they make no RocksDB writes of
/// their own: a write joins the other writers' group, and one of these threads leading a
/// group and then waiting for the CPU would hold up the sends behind it. These are made
/// on the server's own blocking threads ([`Worker::write`]).
#[derive(Default)]
struct Writes {
    /// The pusher as the worker knows it, and its cursor.
    cursors: Vec<(Pusher, u64)>,
    /// Entries after the first position and up to the second are deleted.
    delete: Option<(u64, u64)>,
}

impl Writes {
    fn is_empty(&self) -> bool {
        self.cursors.is_empty() && self.delete.is_none()
    }

    /// One batch, not synced: after a crash an entry sent just before goes again (pushes
    /// are at least once), and the send path's syncs do not wait behind these.
    fn apply(&self, db: &crate::storage::Db) -> ServiceResult<()> {
        let mut batch = db.batch();
        for (pusher, cursor) in &self.cursors {
            queue::put_cursor(&mut batch, &pusher.key(), *cursor);
        }
        if let Some((after, upto)) = self.delete {
            queue::delete_entries(&mut batch, after, upto);
        }
        if !batch.is_empty() {
            db.write_relaxed(batch)?;
        }
        Ok(())
    }
}

/// The worker's wake-up: the send path notes the greatest stream position whose event
/// queued pushes, and the worker is woken by every commit until the stream has passed
/// it (the entries are readable then). Held by the stream's subscriber list, so it holds
/// nothing that holds the stream.
#[derive(Debug, Default)]
pub struct Delivery {
    wake: Notify,
    pushes_upto: AtomicU64,
    woken_upto: AtomicU64,
    /// Users with pushers whose read receipt moved since the last pass.
    read_moved: Mutex<std::collections::HashSet<String>>,
}

/// Users whose badge pushes wait for a pass at most (past it, the rest are dropped: their
/// next event's push carries the count).
const MAX_BADGES_WAITING: usize = 100_000;

impl Delivery {
    /// Notes that the event at `pos` queued pushes.
    pub fn queued_at(&self, pos: u64) {
        self.pushes_upto.fetch_max(pos, Ordering::AcqRel);
    }

    fn take_read_moved(&self) -> std::collections::HashSet<String> {
        std::mem::take(
            &mut *self
                .read_moved
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Push {
    /// `user_id`'s read receipt moved (written already): their pushers owe a badge-only
    /// push, if the count changed.
    pub fn read_moved(&self, user_id: &str) {
        if !self.pusher_index().has_any(user_id) {
            return;
        }
        {
            let mut waiting = self
                .delivery
                .read_moved
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if waiting.len() >= MAX_BADGES_WAITING {
                return;
            }
            waiting.insert(user_id.to_owned());
        }
        self.delivery.wake.notify_one();
    }
}

impl StreamSubscriber for Delivery {
    fn committed(&self, changes: &[(u64, StreamChange)]) {
        let Some(&(last, _)) = changes.last() else {
            return;
        };
        let upto = self.pushes_upto.load(Ordering::Acquire);
        if upto > self.woken_upto.load(Ordering::Acquire) {
            self.woken_upto.fetch_max(upto.min(last), Ordering::AcqRel);
            self.wake.notify_one();
        }
    }
}

/// An HTTPS client for gateways: no proxy, no redirects, the federation address guard;
/// certificates checked against the system's roots plus `trusted_ca` (a PEM file, the
/// federation's `trusted_ca`: private deployments and tests).
pub fn gateway_client(
    resolver: impl reqwest::dns::Resolve + 'static,
    trusted_ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver))
        .no_proxy()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("ourwhats/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = trusted_ca {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read federation.trusted_ca {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("federation.trusted_ca {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the push gateway client: {e}"))
}

/// How one delivery went.
enum Sent {
    /// Accepted; these pushkeys were rejected.
    Done(Vec<String>),
    /// Not delivered: try again later.
    Failed(String),
    /// Refused for good (a 4xx answer but 408 and 429): the same body would be refused
    /// again, and retrying it would hold up the pushes after it.
    Refused(String),
}

/// What one pusher's delivery did.
struct Outcome {
    pusher: Pusher,
    /// Entries sent or skipped, from the first of those given.
    done: usize,
    /// The position of the last of them.
    done_upto: Option<u64>,
    failure: Option<String>,
    rejected: bool,
    /// The badge its pushes carried (or, for a badge-only push, the count found).
    badge: Option<u64>,
    /// A badge-only push (its failure leaves the badge owed).
    badge_only: bool,
}

impl Outcome {
    /// Nothing done yet for `pusher` (by a badge-only push, or by event pushes).
    fn new(pusher: Pusher, badge_only: bool) -> Self {
        Self {
            pusher,
            done: 0,
            done_upto: None,
            failure: None,
            rejected: false,
            badge: None,
            badge_only,
        }
    }
}

/// A task of the worker's that ended without an answer (it panicked or was cancelled).
fn task_failed<T>(e: tokio::task::JoinError) -> ServiceResult<T> {
    Err(ServiceError::internal(e.to_string()))
}

/// What the worker's tasks share.
struct Worker {
    push: Arc<Push>,
    lookups: Arc<dyn PushLookups>,
    http: reqwest::Client,
    guard: AddressGuard,
    /// The server's runtime, whose blocking threads make the worker's writes.
    server: tokio::runtime::Handle,
    /// By short event id.
    facts: Mutex<HashMap<u64, Arc<EventFacts>>>,
    /// The CPU the worker's threads use, held to a small share while the machine is busy.
    cpu: CpuShare,
}

impl Worker {
    /// Makes `writes` on the server's threads (see [`Writes`]). Started from a task of
    /// the server's runtime, so that any blocking thread it adds is one of its own, at
    /// normal priority, not one this thread would make in its own image. Under the pusher
    /// lock, and only for the pushers still there as the worker knew them: one removed
    /// and set again since has a new cursor, which an old one must not replace.
    async fn write(&self, mut writes: Writes) -> ServiceResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let push = Arc::clone(&self.push);
        self.server
            .spawn(async move {
                let _changes = push.pusher_lock.lock().await;
                {
                    let index = push.pusher_index();
                    writes.cursors.retain(|(pusher, _)| {
                        index
                            .find(&pusher.user_id, &pusher.key())
                            .is_some_and(|p| p == pusher)
                    });
                }
                let db = Arc::clone(&push.db);
                tokio::task::spawn_blocking(move || writes.apply(&db))
                    .await
                    .unwrap_or_else(task_failed)
            })
            .await
            .unwrap_or_else(task_failed)
    }
}

impl Push {
    /// Runs the delivery worker until `stopped` turns true, on a background thread at
    /// lower CPU priority; answers a handle the server joins at shutdown.
    pub fn start_delivery(
        self: &Arc<Self>,
        lookups: Arc<dyn PushLookups>,
        http: reqwest::Client,
        guard: AddressGuard,
        mut stopped: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        self.stream
            .subscribe(Arc::clone(&self.delivery) as Arc<dyn StreamSubscriber>);
        let worker = Arc::new(Worker {
            push: Arc::clone(self),
            lookups,
            http,
            guard,
            server: tokio::runtime::Handle::current(),
            facts: Mutex::default(),
            cpu: CpuShare::default(),
        });
        // Deliveries share the CPU with the requests but must not slow them: on a thread
        // of their own at lower priority (see [`crate::services::background`]).
        crate::services::background::spawn("push-delivery", move || async move {
            let mut progress = Progress::default();
            let mut tasks: JoinSet<Outcome> = JoinSet::new();
            // This thread runs the deliveries' requests: its CPU is charged too.
            let mut thread_cpu = thread_cpu_ns();
            loop {
                // While the machine is busy, no more than the worker's share of the CPU. A
                // stop (or its sender gone) ends the wait, and the worker.
                let mut stopping = false;
                loop {
                    thread_cpu = worker.cpu.charge_thread(thread_cpu);
                    let pause = worker.cpu.pause();
                    if pause.is_zero() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped.wait_for(|s| *s) => {
                            stopping = true;
                            break;
                        }
                    }
                }
                if stopping {
                    worker.stop(&mut tasks, &mut progress).await;
                    return;
                }
                // The pass reads the queue: off the async threads.
                let pass = Arc::clone(&worker);
                let (mut moved_progress, mut moved_tasks) = (progress, tasks);
                let joined = tokio::task::spawn_blocking(move || {
                    let passed = pass
                        .cpu
                        .charge(|| pass.pass(&mut moved_progress, &mut moved_tasks));
                    (moved_progress, moved_tasks, passed)
                })
                .await;
                let passed;
                (progress, tasks, passed) = match joined {
                    Ok(done) => done,
                    Err(e) => {
                        // Its state is lost with it: start over from the stored cursors.
                        tracing::error!(error = %e, "the push queue pass failed");
                        (Progress::default(), JoinSet::new(), Ok(Writes::default()))
                    }
                };
                match passed {
                    Ok(writes) => {
                        if let Err(e) = worker.write(writes).await {
                            tracing::warn!(error = %e.message, "writing push cursors failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e.message, "reading the push queue failed"),
                }
                // The next back-off to end, of a pusher not being delivered to (one whose
                // back-off ended is retried by the pass above, or is in flight).
                let now = Instant::now();
                let retry = progress
                    .pushers
                    .values()
                    .filter(|s| s.task.is_none())
                    .filter_map(|s| s.backoff.filter(|b| b.until > now))
                    .map(|b| b.until - now)
                    .min()
                    .unwrap_or(IDLE_LOOK)
                    .clamp(Duration::from_millis(20), IDLE_LOOK);
                let mut woken = false;
                let finished = tokio::select! {
                    Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => match done {
                        Ok((id, outcome)) => {
                            progress.tasks.remove(&id);
                            Some((id, outcome))
                        }
                        Err(e) => {
                            // A task that died: its pusher is tried again after a
                            // back-off, like a failing gateway.
                            tracing::warn!(error = %e, "a push delivery task failed");
                            let state = progress
                                .tasks
                                .remove(&e.id())
                                .and_then(|key| progress.pushers.get_mut(&key));
                            if let Some(state) = state.filter(|s| s.task == Some(e.id())) {
                                state.task = None;
                                state.back_off();
                            }
                            None
                        }
                    },
                    _ = worker.push.delivery.wake.notified() => {
                        woken = true;
                        None
                    }
                    _ = tokio::time::sleep(retry) => None,
                    _ = stopped.wait_for(|s| *s) => {
                        stopping = true;
                        None
                    }
                };
                if stopping {
                    worker.stop(&mut tasks, &mut progress).await;
                    return;
                }
                if woken {
                    tokio::time::sleep(GATHER).await;
                }
                if let Some((task, outcome)) = finished {
                    if let Err(e) = worker.finish(task, outcome, &mut progress).await {
                        tracing::warn!(error = %e.message, "recording push deliveries failed");
                    }
                }
            }
        })
    }
}

impl Worker {
    /// Ends the worker: what is under way gets its grace, and the cursors are written.
    async fn stop(&self, tasks: &mut JoinSet<Outcome>, progress: &mut Progress) {
        self.finish_in_flight(tasks, progress).await;
        let mut writes = Writes::default();
        progress.take_unsaved(&mut writes);
        if let Err(e) = self.write(writes).await {
            tracing::warn!(error = %e.message, "writing push cursors failed");
        }
    }

    /// At shutdown: deliveries under way get [`STOP_GRACE`] to end and be recorded, so
    /// that a restart does not push them again (one that had reached its gateway when the
    /// stop came was sent again after a restart). What is still under way then is cut
    /// off, and its entries go again after the restart (pushes are at least once).
    async fn finish_in_flight(&self, tasks: &mut JoinSet<Outcome>, progress: &mut Progress) {
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while let Ok(Some(done)) =
            tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await
        {
            let Ok((task, outcome)) = done else { continue };
            progress.tasks.remove(&task);
            if let Err(e) = self.finish(task, outcome, progress).await {
                tracing::warn!(error = %e.message, "recording push deliveries failed");
            }
        }
        tasks.abort_all();
    }

    /// Records one pusher's delivery by `task`: its cursor (stored by the next pass),
    /// back-off, a rejected pushkey.
    async fn finish(
        &self,
        task: tokio::task::Id,
        outcome: Outcome,
        progress: &mut Progress,
    ) -> ServiceResult<()> {
        let pusher_key = outcome.pusher.key();
        let Some(state) = progress
            .pushers
            .get_mut(&pusher_key)
            .filter(|s| s.task == Some(task))
        else {
            // Removed meanwhile (and perhaps set again since, with a state of its own).
            return Ok(());
        };
        state.task = None;
        if outcome.badge.is_some() {
            state.last_badge = outcome.badge;
        }
        if outcome.badge_only && outcome.failure.is_some() {
            state.badge_due = true;
        }
        // Event pushes that carried no count (all read: a zero is left out) leave the
        // device with the count it was last sent: a badge-only push follows when that
        // was not zero.
        if !outcome.badge_only
            && outcome.done > 0
            && outcome.badge.is_none()
            && outcome.failure.is_none()
            && state.last_badge.is_some_and(|last| last > 0)
        {
            state.badge_due = true;
        }
        state.held.drain(..outcome.done.min(state.held.len()));
        if let Some(upto) = outcome.done_upto.filter(|upto| *upto > state.cursor) {
            state.cursor = upto;
            state.unsaved = true;
        }
        match outcome.failure {
            None => state.backoff = None,
            Some(why) => {
                let next = state.back_off();
                tracing::info!(user = %outcome.pusher.user_id, app_id = %outcome.pusher.app_id, error = %why, retry_in = ?next, "push gateway failed");
            }
        }
        if !outcome.rejected {
            return Ok(());
        }
        // On the server's threads, like the worker's other writes.
        let (push, pusher) = (Arc::clone(&self.push), outcome.pusher);
        let removed = self
            .server
            .spawn(async move { push.remove_rejected(&pusher).await })
            .await
            .unwrap_or_else(task_failed)?;
        if removed {
            progress.pushers.remove(&pusher_key);
        }
        Ok(())
    }
}

impl Push {
    /// Removes a pusher whose pushkey its gateway rejected, if it is still the pusher that
    /// was used (not set again since); answers whether it was removed.
    async fn remove_rejected(&self, pusher: &Pusher) -> ServiceResult<bool> {
        let key = pusher.key();
        let _guard = self.pusher_lock.lock().await;
        let same = self
            .pusher_index()
            .find(&pusher.user_id, &key)
            .is_some_and(|p| p == pusher);
        if !same {
            return Ok(false);
        }
        tracing::info!(user = %pusher.user_id, app_id = %pusher.app_id, "push gateway rejected the pushkey: pusher removed");
        let mut batch = self.db.batch();
        batch.delete(Table::UseridAppidPushkeyPusher, &key);
        queue::delete_cursor(&mut batch, &key);
        self.db.commit(batch).await?;
        self.forget_pushers(&pusher.user_id, std::slice::from_ref(&key));
        Ok(true)
    }
}

impl Worker {
    /// One pass over the queue: follows the pushers that exist, reads the new entries
    /// once and offers each to the pushers of the users it lists, starts a delivery for
    /// every pusher with entries that is neither in flight nor backing off (up to
    /// [`MAX_IN_FLIGHT`] at once), and deletes the entries every pusher has passed.
    fn pass(
        self: &Arc<Self>,
        progress: &mut Progress,
        tasks: &mut JoinSet<Outcome>,
    ) -> ServiceResult<Writes> {
        let db = &self.push.db;
        // A pusher's cursor and its place in the index are changed under this lock, so
        // following them under it never sees one without the other. Held for that only:
        // this thread may wait long for the CPU, and pusher changes wait for the lock.
        let published = {
            let _changes = self.push.pusher_lock.blocking_lock();
            let published = self.push.stream.watermark();
            self.follow_pushers(progress, published)?;
            published
        };

        // New entries, read once, offered to the pushers of the users they list (by tag:
        // a user whose tag only collides gets nothing from it, see [`queue`]). The map
        // owns its copies, so that the offers reach the pushers' states after the reads.
        let mut by_tag: HashMap<u32, Vec<(String, Vec<u8>)>> = HashMap::new();
        for (key, state) in &progress.pushers {
            let user = &state.pusher.user_id;
            by_tag
                .entry(queue::user_tag(user))
                .or_default()
                .push((user.clone(), key.clone()));
        }
        let mut offers: Vec<(&[u8], Item)> = Vec::new();
        let mut noted: Vec<(&str, u64, u64)> = Vec::new();
        let from = queue::entry_key(progress.reader.saturating_add(1));
        let to = queue::entry_key(published.saturating_add(1));
        let mut reader = published;
        for (n, entry) in db
            .scan_range(Table::PosPushqueue, &from, &to, false)
            .enumerate()
        {
            let (key, value) = entry?;
            let Some(pos) = queue::entry_pos(&key) else {
                continue;
            };
            if n >= READ_PER_PASS {
                reader = pos - 1;
                break;
            }
            let Some(queued) = QueuedEvent::decode(&value) else {
                tracing::warn!(pos, "an unreadable push queue entry was skipped");
                continue;
            };
            let item = Item::of(pos, &queued);
            for (user, pusher_key) in queued
                .tags
                .iter()
                .filter_map(|tag| by_tag.get(tag))
                .flatten()
            {
                // A user with several pushers is noted once per pusher: the same room.
                noted.push((user, queued.room, pos));
                offers.push((pusher_key, item));
            }
        }
        self.push.badge.added(noted);
        for (pusher_key, item) in offers {
            if let Some(state) = progress.pushers.get_mut(pusher_key) {
                state.offer(item);
            }
        }
        let read_moved = self.push.delivery.take_read_moved();
        if !read_moved.is_empty() {
            for state in progress.pushers.values_mut() {
                if read_moved.contains(&state.pusher.user_id) {
                    state.badge_due = true;
                }
            }
        }
        progress.reader = progress.reader.max(reader);

        // Deliveries.
        let now = Instant::now();
        let mut in_flight = progress.tasks.len();
        for (pusher_key, state) in &mut progress.pushers {
            if in_flight >= MAX_IN_FLIGHT {
                break;
            }
            if state.task.is_some() || state.backing_off(now) {
                continue;
            }
            if state.held.is_empty() && state.behind {
                self.catch_up(state, progress.reader)?;
            }
            if state.held.is_empty() {
                if std::mem::take(&mut state.badge_due) {
                    let (worker, pusher) = (Arc::clone(self), state.pusher.clone());
                    let last = state.last_badge;
                    let task = tasks.spawn(async move { worker.deliver_badge(pusher, last).await });
                    progress.tasks.insert(task.id(), pusher_key.clone());
                    state.task = Some(task.id());
                    in_flight += 1;
                }
                continue;
            }
            // Its pushes carry the count as it is now.
            state.badge_due = false;
            // A pusher retried after a failure tries one entry first: its batch is built
            // before the first request, and a gateway still down would waste the rest.
            let take = if state.backoff.is_some() {
                1
            } else {
                PER_PUSHER
            };
            let items: Vec<Item> = state.held.iter().take(take).copied().collect();
            let (worker, pusher) = (Arc::clone(self), state.pusher.clone());
            let task = tasks.spawn(async move { worker.deliver(pusher, items).await });
            progress.tasks.insert(task.id(), pusher_key.clone());
            state.task = Some(task.id());
            in_flight += 1;
        }

        // What every pusher has passed goes. A pusher with nothing held and nothing
        // missed has passed everything read: its cursor moves to the reader (stored with
        // the deletions), so a pusher nobody notifies holds nothing back.
        let reader = progress.reader;
        let mut floor = reader;
        for state in progress.pushers.values_mut() {
            let passed = match state.held.front() {
                Some(first) => first.pos - 1,
                None if state.behind || state.task.is_some() => state.cursor,
                None => {
                    if state.cursor < reader {
                        state.cursor = reader;
                        state.unsaved = true;
                    }
                    reader
                }
            };
            floor = floor.min(passed);
        }
        let mut writes = Writes::default();
        progress.take_unsaved(&mut writes);
        let due = progress
            .last_delete
            .is_none_or(|at| now.duration_since(at) >= DELETE_EVERY);
        if floor > progress.deleted_upto && due {
            writes.delete = Some((progress.deleted_upto, floor));
            progress.deleted_upto = floor;
            progress.last_delete = Some(now);
        }
        Ok(writes)
    }

    /// Keeps the worker's pushers those of the index: new ones start at their stored
    /// cursor, removed ones are forgotten, changed ones take their new settings. On the
    /// first pass the reader starts at the lowest cursor. Does nothing while the index is
    /// the one it last followed in full (a changed index is a new one).
    fn follow_pushers(&self, progress: &mut Progress, published: u64) -> ServiceResult<()> {
        let index = self.push.pusher_index();
        if progress
            .followed
            .as_ref()
            .is_some_and(|followed| Arc::ptr_eq(followed, &index))
        {
            return Ok(());
        }
        let mut deferred = false;
        let pushers: Vec<Pusher> = index.all().cloned().collect();
        let keys: std::collections::HashSet<Vec<u8>> = pushers.iter().map(Pusher::key).collect();
        progress.pushers.retain(|key, _| keys.contains(key));
        let mut added = Vec::new();
        for pusher in pushers {
            let key = pusher.key();
            if let Some(state) = progress.pushers.get_mut(&key) {
                // Set again since the last pass, perhaps removed and set anew with a
                // cursor of its own: that one wins if it is ahead. Not while a delivery
                // is under way (its result is counted off the held entries): next pass.
                if state.pusher != pusher && state.task.is_some() {
                    deferred = true;
                } else if state.pusher != pusher {
                    if let Some(stored) = queue::cursor(&self.push.db, &key)? {
                        if stored > state.cursor {
                            state.cursor = stored;
                            state.held.retain(|item| item.pos > stored);
                        }
                    }
                    state.pusher = pusher;
                    // Perhaps another gateway now: it was sent no badge yet.
                    state.last_badge = None;
                }
                continue;
            }
            let cursor = queue::cursor(&self.push.db, &key)?.unwrap_or(published);
            added.push((
                key,
                PusherState {
                    pusher,
                    cursor,
                    held: VecDeque::new(),
                    behind: false,
                    backoff: None,
                    task: None,
                    unsaved: false,
                    badge_due: false,
                    last_badge: None,
                },
            ));
        }
        if !progress.started {
            progress.started = true;
            let lowest = added
                .iter()
                .map(|(_, s)| s.cursor)
                .min()
                .unwrap_or(published);
            progress.reader = lowest.min(published);
            progress.deleted_upto = 0;
        }
        for (key, mut state) in added {
            // Entries between its cursor and the reader were offered before it came.
            state.behind = state.cursor < progress.reader;
            progress.pushers.insert(key, state);
        }
        progress.followed = (!deferred).then_some(index);
        Ok(())
    }

    /// Reads a pusher's own entries again from the queue, after its cursor (or its last
    /// held entry) up to the reader, as many as it may hold.
    fn catch_up(&self, state: &mut PusherState, reader: u64) -> ServiceResult<()> {
        let after = state.held.back().map_or(state.cursor, |last| last.pos);
        let from = queue::entry_key(after.saturating_add(1));
        let to = queue::entry_key(reader.saturating_add(1));
        let tag = queue::user_tag(&state.pusher.user_id);
        for entry in self
            .push
            .db
            .scan_range(Table::PosPushqueue, &from, &to, false)
        {
            let (key, value) = entry?;
            let (Some(pos), Some(queued)) = (queue::entry_pos(&key), QueuedEvent::decode(&value))
            else {
                continue;
            };
            if !queued.lists(tag) {
                continue;
            }
            if state.held.len() >= HELD_PER_PUSHER {
                return Ok(());
            }
            state.held.push_back(Item::of(pos, &queued));
        }
        state.behind = false;
        Ok(())
    }

    /// Sends one pusher's entries (oldest first) until one fails. Their bodies are built
    /// first, in one go off the async threads (see [`Worker::notifications`]).
    async fn deliver(self: Arc<Self>, pusher: Pusher, items: Vec<Item>) -> Outcome {
        let built = {
            let (worker, pusher) = (Arc::clone(&self), pusher.clone());
            tokio::task::spawn_blocking(move || {
                worker.cpu.charge(|| worker.notifications(&pusher, &items))
            })
            .await
            .unwrap_or_else(|e| Built::failed(e.to_string()))
        };
        let Built {
            bodies,
            badge,
            failure: build_failure,
        } = built;
        let mut outcome = Outcome::new(pusher, false);
        outcome.badge = badge;
        for (pos, body) in bodies {
            let Some(body) = body else {
                outcome.done += 1;
                outcome.done_upto = Some(pos);
                continue;
            };
            match post(&self.http, &self.guard, outcome.pusher.url(), &body).await {
                Sent::Done(rejected) => {
                    outcome.done += 1;
                    outcome.done_upto = Some(pos);
                    if rejected.contains(&outcome.pusher.pushkey) {
                        outcome.rejected = true;
                        return outcome;
                    }
                }
                Sent::Failed(why) => {
                    outcome.failure = Some(why);
                    if outcome.done == 0 {
                        outcome.badge = None;
                    }
                    return outcome;
                }
                Sent::Refused(why) => {
                    tracing::warn!(user = %outcome.pusher.user_id, %why, "a push the gateway refused was dropped");
                    outcome.done += 1;
                    outcome.done_upto = Some(pos);
                }
            }
        }
        outcome.failure = build_failure;
        outcome
    }

    /// A badge-only push: the user's unread count, sent unless it is `last`, the one the
    /// pusher was sent last.
    async fn deliver_badge(self: Arc<Self>, pusher: Pusher, last: Option<u64>) -> Outcome {
        let counted = {
            let (worker, user) = (Arc::clone(&self), pusher.user_id.clone());
            tokio::task::spawn_blocking(move || {
                worker
                    .cpu
                    .charge(|| worker.push.unread_total(&*worker.lookups, &user))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|counted| counted.map_err(|e| e.message))
        };
        let mut outcome = Outcome::new(pusher, true);
        let unread = match counted {
            Ok(unread) => unread,
            Err(why) => {
                outcome.failure = Some(why);
                return outcome;
            }
        };
        outcome.badge = Some(unread);
        if last == Some(unread) {
            return outcome;
        }
        let body = badge_body(&outcome.pusher, unread);
        match post(&self.http, &self.guard, outcome.pusher.url(), &body).await {
            Sent::Done(rejected) => {
                outcome.rejected = rejected.contains(&outcome.pusher.pushkey);
            }
            Sent::Failed(why) => {
                outcome.badge = None;
                outcome.failure = Some(why);
            }
            Sent::Refused(why) => {
                tracing::warn!(user = %outcome.pusher.user_id, %why, "a badge push the gateway refused was dropped");
            }
        }
        outcome
    }
}

/// The body of a badge-only push to `pusher`'s device (spec: push gateway API; no event,
/// `prio` low, the count even when zero: see the module's documentation).
fn badge_body(pusher: &Pusher, unread: u64) -> Value {
    let mut data = pusher.data.clone();
    data.remove("url");
    json!({
        "notification": {
            "prio": "low",
            "counts": {"unread": unread},
            "devices": [{
                "app_id": pusher.app_id,
                "pushkey": pusher.pushkey,
                "pushkey_ts": pusher.pushkey_ts / 1000,
                "data": data,
            }],
        }
    })
}

/// One pusher's pushes, built together (see [`Worker::notifications`]).
struct Built {
    /// Each entry's body and position.
    bodies: Vec<(u64, Option<Value>)>,
    /// The badge they carry (`None` when it is zero: it is left out).
    badge: Option<u64>,
    /// Why the entries after the last body could not be built.
    failure: Option<String>,
}

impl Built {
    fn failed(why: String) -> Self {
        Self {
            bodies: Vec::new(),
            badge: None,
            failure: Some(why),
        }
    }
}

/// What every push of one event says alike: read once for all the pushers it goes to.
struct EventFacts {
    event_id: String,
    pdu: Value,
    room_name: Option<String>,
    sender_name: Option<String>,
    read: Instant,
}

/// Events' facts kept at most; past it the map starts again.
const MAX_EVENT_FACTS: usize = 256;
/// How long an event's facts are used: an event's pushes go out within moments of each
/// other, and one sent later (a gateway retried) reads the event again, redacted if it
/// was since.
const EVENT_FACTS_FOR: Duration = Duration::from_secs(5);

impl Worker {
    /// The facts of the event of `item` (in the room `room_id`), read on first use.
    fn event_facts(&self, item: &Item, room_id: &str) -> ServiceResult<Arc<EventFacts>> {
        let lock = || self.facts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(facts) = lock()
            .get(&item.event)
            .filter(|f| f.read.elapsed() < EVENT_FACTS_FOR)
        {
            return Ok(Arc::clone(facts));
        }
        let (event_id, pdu) = self.lookups.event(item.event)?;
        let sender = pdu.get("sender").and_then(Value::as_str).unwrap_or("");
        let (room_name, sender_name) = self.lookups.names(room_id, sender);
        let facts = Arc::new(EventFacts {
            event_id,
            pdu,
            room_name,
            sender_name,
            read: Instant::now(),
        });
        let mut kept = lock();
        if kept.len() >= MAX_EVENT_FACTS {
            kept.clear();
        }
        kept.insert(item.event, Arc::clone(&facts));
        Ok(facts)
    }

    /// The bodies of one pusher's pushes, in the order of `items`, each with its
    /// position: `None` for an entry sent to no one (queued too long ago, the user left
    /// the room since, or it no longer notifies them). Built together, with the user's
    /// unread count across their rooms (the badge) read once, after every entry's room
    /// is counted in: each push carries the count as it was when its batch was built
    /// (moments before it leaves, unless the gateway is slow), as a phone shows the
    /// latest count. Stops at the first entry that cannot be read and answers why.
    fn notifications(&self, pusher: &Pusher, items: &[Item]) -> Built {
        let now = crate::services::now_ms();
        let mut bodies = Vec::with_capacity(items.len());
        let mut failure = None;
        for item in items {
            if now.saturating_sub(item.queued) > MAX_AGE_MS {
                bodies.push((item.pos, None));
                continue;
            }
            match self.notification(pusher, item) {
                Ok(body) => bodies.push((item.pos, body)),
                Err(e) => {
                    failure = Some(e.message);
                    break;
                }
            }
        }
        let mut badge = None;
        if bodies.iter().any(|(_, body)| body.is_some()) {
            match self.push.unread_total(&*self.lookups, &pusher.user_id) {
                Ok(unread) => {
                    // What the device is told (a zero is left out: then nothing).
                    badge = (unread > 0).then_some(unread);
                    for (_, body) in &mut bodies {
                        // Spec (push gateway API): counts whose value is zero are
                        // left out.
                        if let Some(body) = body.as_mut().filter(|_| unread > 0) {
                            body["notification"]["counts"]["unread"] = Value::from(unread);
                        }
                    }
                }
                Err(e) => return Built::failed(e.message),
            }
        }
        Built {
            bodies,
            badge,
            failure,
        }
    }

    /// The `notification` object for one device (spec: push gateway API), its unread
    /// count left for [`Worker::notifications`] to fill in; `None` when the user has left
    /// the room since (or was never invited).
    fn notification(&self, pusher: &Pusher, item: &Item) -> ServiceResult<Option<Value>> {
        let (push, lookups) = (&self.push, &*self.lookups);
        let Some(MemberRoom {
            room_id,
            invited_at,
        }) = lookups.member_room(item.room, &pusher.user_id)?
        else {
            return Ok(None);
        };
        if invited_at.is_some_and(|at| at != item.pos) {
            return Ok(None);
        }
        let Some(actions) =
            push.notified_actions(&pusher.user_id, (item.room, item.pos), invited_at.is_some())?
        else {
            return Ok(None);
        };
        let facts = self.event_facts(item, &room_id)?;
        let (event_id, pdu) = (&facts.event_id, &facts.pdu);
        // The pushed room counts, whatever the badge's rooms missed.
        push.badge
            .added([(pusher.user_id.as_str(), item.room, item.pos)]);
        let mut tweaks = Map::new();
        for action in &actions {
            if let Some(name) = action.get("set_tweak").and_then(Value::as_str) {
                let value = action.get("value").cloned().unwrap_or(Value::Bool(true));
                tweaks.insert(name.to_owned(), value);
            }
        }
        let highlight = tweaks
            .get("highlight")
            .is_some_and(|v| v != &Value::Bool(false));
        let mut data = pusher.data.clone();
        data.remove("url");
        let device = json!({
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.pushkey_ts / 1000,
            "data": data,
            "tweaks": tweaks,
        });
        // Spec: `prio` "high" for events that should wake the device: as Synapse, those
        // that sound or highlight, and encrypted ones (whose content the server cannot
        // judge); `low` otherwise.
        let encrypted = pdu.get("type").and_then(Value::as_str) == Some("m.room.encrypted");
        let prio = if highlight || encrypted || tweaks.contains_key("sound") {
            "high"
        } else {
            "low"
        };
        let mut notification = json!({
            "event_id": event_id,
            "room_id": room_id,
            "prio": prio,
            "counts": {},
            "devices": [device],
        });
        if !pusher.event_id_only() {
            let sender = pdu.get("sender").and_then(Value::as_str).unwrap_or("");
            notification["type"] = pdu.get("type").cloned().unwrap_or(Value::Null);
            notification["sender"] = Value::from(sender);
            notification["content"] = pdu.get("content").cloned().unwrap_or(json!({}));
            if let Some(name) = &facts.room_name {
                notification["room_name"] = Value::from(name.as_str());
            }
            if let Some(name) = &facts.sender_name {
                notification["sender_display_name"] = Value::from(name.as_str());
            }
            if pdu.get("type").and_then(Value::as_str) == Some("m.room.member") {
                notification["user_is_target"] = Value::from(
                    pdu.get("state_key").and_then(Value::as_str) == Some(pusher.user_id.as_str()),
                );
            }
        }
        Ok(Some(json!({ "notification": notification })))
    }
}

impl Push {
    /// The user's unread notifications across the rooms they are joined to, and their
    /// pending invites that notified them, once each (the badge).
    /// Sums the rooms [`super::badge`] holds for them, dropping those read through or
    /// left.
    fn unread_total(&self, lookups: &dyn PushLookups, user_id: &str) -> ServiceResult<u64> {
        let mut total = 0;
        let rooms = self
            .badge
            .rooms(user_id, || self.rooms_with_notifications(user_id))?;
        // Read before the memberships: a rejoin the checks miss comes after it.
        let published = self.stream.watermark();
        for room in rooms {
            match lookups.member_room(room, user_id)? {
                None => {
                    // Left (or an invite refused): its entries count again once the user
                    // is back and it notifies them anew (or the user's rooms are loaded
                    // again).
                    self.badge.drop_read(user_id, room, published);
                    continue;
                }
                // A pending invite that notified the user counts once (as Synapse's badge
                // counts invites); the invite's own entry is never counted as unread.
                Some(MemberRoom {
                    invited_at: Some(at),
                    ..
                }) => {
                    if self.notified_actions(user_id, (room, at), true)?.is_some() {
                        total += 1;
                    }
                    continue;
                }
                Some(_) => {}
            }
            let read = lookups.read_positions(room, user_id)?;
            let (counts, complete_upto) = self.counted_unread(user_id, room, &read)?;
            let unread = counts.total().notifications;
            if let Some(upto) = complete_upto.filter(|_| unread == 0) {
                self.badge.drop_read(user_id, room, upto);
            }
            total += unread;
        }
        Ok(total)
    }
}

/// One `POST` to a gateway. Its host is resolved through the address guard; an IP
/// literal is judged directly.
async fn post(http: &reqwest::Client, guard: &AddressGuard, url: &str, body: &Value) -> Sent {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Sent::Failed(format!("{url} is not a URL"));
    };
    let literal = parsed
        .host_str()
        .and_then(|h| h.trim_matches(|c| c == '[' || c == ']').parse().ok());
    if literal.is_some_and(|ip| !guard(ip)) {
        return Sent::Failed(format!("{url}: an address pushes may not reach"));
    }
    let mut response = match http.post(parsed).json(body).send().await {
        Ok(response) => response,
        Err(e) => return Sent::Failed(e.to_string()),
    };
    let status = response.status();
    let retry_later = [
        reqwest::StatusCode::REQUEST_TIMEOUT,
        reqwest::StatusCode::TOO_MANY_REQUESTS,
    ];
    if status.is_client_error() && !retry_later.contains(&status) {
        return Sent::Refused(format!("the gateway answered {status}"));
    }
    if !status.is_success() {
        return Sent::Failed(format!("the gateway answered {status}"));
    }
    // Read up to the limit: the gateway is someone else's.
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                bytes.extend_from_slice(&chunk);
            }
            // Delivered; an answer too long to read rejects nothing we can tell.
            Ok(Some(_)) => return Sent::Done(Vec::new()),
            Ok(None) => break,
            Err(e) => return Sent::Failed(e.to_string()),
        }
    }
    let rejected = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("rejected").cloned())
        .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
        .unwrap_or_default();
    Sent::Done(rejected)
}

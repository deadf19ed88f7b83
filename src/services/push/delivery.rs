//! Sending notifications to push gateways.
//!
//! Spec: push gateway API, `POST /_matrix/push/v1/notify`, and client-server API "Push
//! Notifications" ("Homeserver behaviour"). An event that notifies a user with pushers
//! leaves one queue entry per pusher in the event's own write batch
//! (`pos_pusher_pushqueue`, keyed by pusher then position), so nothing acknowledged is lost
//! to a crash and the send path never waits for a gateway. A worker delivers each pusher's
//! entries in order, one request per entry (one device), with the user's unread count
//! across the rooms they are in; pushers are served concurrently (at most
//! [`MAX_IN_FLIGHT`] at once), so a slow or dead gateway holds up only its own pushers. A
//! pusher whose gateway fails keeps its entries and is retried with a doubling back-off
//! (1 s to 5 min); entries queued more than a day ago are dropped unsent; the pushkeys a
//! gateway answers as `rejected` lose their pusher. Gateway URLs are user input: the HTTP
//! client resolves them through the same address guard as federation
//! (`federation.ip_range_allowlist` opens private ranges) and follows no redirect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::pushers::Pusher;
use super::Push;
use crate::error::MatrixResult;
use crate::services::ephemeral::receipts::ReadPositions;
use crate::services::stream::{StreamChange, StreamSubscriber};
use crate::storage::{keys, Table};

/// Entries one pusher's delivery takes at a time.
const PER_PUSHER: usize = 50;
/// Pushers delivered to at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a gateway gets to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry of a failing pusher, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Entries queued longer ago than this are dropped unsent.
const MAX_AGE_MS: u64 = 24 * 3_600_000;
/// The largest gateway answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The worker looks at the queue at least this often (a missed wake-up costs no more).
const IDLE_LOOK: Duration = Duration::from_secs(30);

/// What a queue entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedPush {
    /// The room's short id.
    pub room: u64,
    /// The event's short id.
    pub event: u64,
    /// When it was queued here (ms, our clock).
    pub queued: u64,
    /// The actions of the push rule that matched (for `tweaks` and `prio`).
    pub actions: Vec<Value>,
}

/// `pusher key 0xFF position (u64 BE)`: a pusher's entries together, in stream order.
pub fn queue_key(pos: u64, pusher_key: &[u8]) -> Vec<u8> {
    let mut key = pusher_queue_prefix(pusher_key);
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

fn pusher_queue_prefix(pusher_key: &[u8]) -> Vec<u8> {
    keys::prefix(pusher_key)
}

/// The pusher key of a queue key.
fn pusher_of(queue_key: &[u8]) -> &[u8] {
    &queue_key[..queue_key.len().saturating_sub(9)]
}

/// The user of a pusher key.
fn user_of(pusher_key: &[u8]) -> String {
    keys::split(pusher_key)
        .next()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .unwrap_or_default()
}

/// What the worker needs to know of rooms and receipts (implemented over the services).
pub trait PushLookups: Send + Sync {
    /// An event's id and PDU by short id.
    fn event(&self, short: u64) -> MatrixResult<(String, Value)>;
    /// The room id of a short room id, and whether `user_id` is joined to it.
    fn joined_room(&self, room: u64, user_id: &str) -> MatrixResult<Option<String>>;
    /// How far the user has read in a room.
    fn read_positions(&self, room: u64, user_id: &str) -> MatrixResult<ReadPositions>;
    /// The room's name (`m.room.name`) and the sender's display name there, if any.
    fn names(&self, room_id: &str, sender: &str) -> (Option<String>, Option<String>);
}

/// The pushers being delivered to, with the task doing it.
type InFlight = HashMap<Vec<u8>, tokio::task::Id>;

/// Which addresses gateways may be reached at.
pub type AddressGuard = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// A pusher's failures: when it may be tried again and the next wait.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    next: Duration,
}

/// Puts a pusher in back-off: 1 s after its first failure, doubled after each next one
/// up to [`MAX_BACKOFF`]; answers the wait.
fn back_off(backoff: &mut HashMap<Vec<u8>, Backoff>, pusher_key: Vec<u8>) -> Duration {
    let next = backoff
        .get(&pusher_key)
        .map_or(FIRST_BACKOFF, |b| (b.next * 2).min(MAX_BACKOFF));
    backoff.insert(
        pusher_key,
        Backoff {
            until: Instant::now() + next,
            next,
        },
    );
    next
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
}

impl Delivery {
    /// Notes that the event at `pos` queued pushes.
    pub fn queued_at(&self, pos: u64) {
        self.pushes_upto.fetch_max(pos, Ordering::AcqRel);
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

/// An HTTP client for gateways: no proxy, no redirects, the federation address guard.
pub fn gateway_client(
    resolver: impl reqwest::dns::Resolve + 'static,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("ourwhats/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the push gateway client: {e}"))
}

/// How one delivery went.
enum Sent {
    /// Accepted; these pushkeys were rejected.
    Done(Vec<String>),
    /// Not delivered: try again later.
    Failed(String),
}

/// What one pusher's delivery did.
struct Outcome {
    pusher: Pusher,
    /// Entries sent or dropped.
    done: Vec<Vec<u8>>,
    failure: Option<String>,
    rejected: bool,
}

/// What the worker's tasks share.
struct Worker {
    push: Arc<Push>,
    lookups: Arc<dyn PushLookups>,
    http: reqwest::Client,
    guard: AddressGuard,
}

impl Push {
    /// Runs the delivery worker until `stopped` turns true.
    pub fn start_delivery(
        self: &Arc<Self>,
        lookups: Arc<dyn PushLookups>,
        http: reqwest::Client,
        guard: AddressGuard,
        mut stopped: watch::Receiver<bool>,
    ) {
        self.stream
            .subscribe(Arc::clone(&self.delivery) as Arc<dyn StreamSubscriber>);
        let worker = Arc::new(Worker {
            push: Arc::clone(self),
            lookups,
            http,
            guard,
        });
        tokio::spawn(async move {
            let mut backoff: HashMap<Vec<u8>, Backoff> = HashMap::new();
            // The pushers being delivered to, with their task.
            let mut in_flight: InFlight = HashMap::new();
            let mut tasks: JoinSet<Outcome> = JoinSet::new();
            loop {
                if let Err(e) = worker.start_deliveries(&mut backoff, &mut in_flight, &mut tasks) {
                    tracing::warn!(error = %e.message, "reading the push queue failed");
                }
                // The next back-off to end, of a pusher not being delivered to (one whose
                // back-off ended is retried by the pass above, or is in flight).
                let now = Instant::now();
                let retry = backoff
                    .iter()
                    .filter(|(key, b)| b.until > now && !in_flight.contains_key(*key))
                    .map(|(_, b)| b.until - now)
                    .min()
                    .unwrap_or(IDLE_LOOK)
                    .clamp(Duration::from_millis(20), IDLE_LOOK);
                let finished = tokio::select! {
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                        Ok(outcome) => Some(outcome),
                        Err(e) => {
                            // A task that died: its pusher is tried again after a
                            // back-off, like a failing gateway.
                            let died: Vec<Vec<u8>> = in_flight
                                .iter()
                                .filter(|(_, task)| **task == e.id())
                                .map(|(key, _)| key.clone())
                                .collect();
                            for key in died {
                                in_flight.remove(&key);
                                back_off(&mut backoff, key);
                            }
                            None
                        }
                    },
                    _ = worker.push.delivery.wake.notified() => None,
                    _ = tokio::time::sleep(retry) => None,
                    _ = stopped.wait_for(|s| *s) => {
                        // Entries not yet recorded as sent go again after the restart.
                        tasks.abort_all();
                        return;
                    }
                };
                if let Some(outcome) = finished {
                    if let Err(e) = worker
                        .push
                        .finish(outcome, &mut backoff, &mut in_flight)
                        .await
                    {
                        tracing::warn!(error = %e.message, "recording push deliveries failed");
                    }
                }
            }
        });
    }

    /// Records one pusher's delivery: entries done, back-off, a rejected pushkey.
    async fn finish(
        &self,
        outcome: Outcome,
        backoff: &mut HashMap<Vec<u8>, Backoff>,
        in_flight: &mut InFlight,
    ) -> MatrixResult<()> {
        let pusher_key = outcome.pusher.key();
        in_flight.remove(&pusher_key);
        let mut batch = self.db.batch();
        for key in outcome.done {
            batch.delete(Table::PosPusherPushqueue, key);
        }
        match outcome.failure {
            None => {
                backoff.remove(&pusher_key);
            }
            Some(why) => {
                let next = back_off(backoff, pusher_key.clone());
                tracing::info!(user = %outcome.pusher.user_id, app_id = %outcome.pusher.app_id, error = %why, retry_in = ?next, "push gateway failed");
            }
        }
        if !outcome.rejected {
            self.db.commit(batch).await?;
            return Ok(());
        }
        // Removed only if it is still the pusher that was used (not set again since).
        let _guard = self.pusher_lock.lock().await;
        let same = self
            .pusher_index()
            .find(&outcome.pusher.user_id, &pusher_key)
            .is_some_and(|p| *p == outcome.pusher);
        if same {
            tracing::info!(user = %outcome.pusher.user_id, app_id = %outcome.pusher.app_id, "push gateway rejected the pushkey: pusher removed");
            batch.delete(Table::UseridAppidPushkeyPusher, &pusher_key);
        }
        self.db.commit(batch).await?;
        if same {
            self.forget_pushers(&outcome.pusher.user_id, &[pusher_key]);
        }
        Ok(())
    }
}

impl Worker {
    /// Starts a delivery for every pusher with queued entries that is neither in flight
    /// nor backing off (up to [`MAX_IN_FLIGHT`] at once); drops the entries of pushers
    /// that no longer exist.
    fn start_deliveries(
        self: &Arc<Self>,
        backoff: &mut HashMap<Vec<u8>, Backoff>,
        in_flight: &mut InFlight,
        tasks: &mut JoinSet<Outcome>,
    ) -> MatrixResult<()> {
        let db = &self.push.db;
        let now = Instant::now();
        {
            let index = self.push.pusher_index();
            backoff.retain(|key, _| index.find(&user_of(key), key).is_some());
        }
        let mut from: Vec<u8> = Vec::new();
        let mut orphans = db.batch();
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(first) = db
                .scan_range(Table::PosPusherPushqueue, &from, &[0xff], false)
                .next()
            else {
                break;
            };
            let (key, _) = first?;
            let pusher_key = pusher_of(&key).to_vec();
            let prefix = pusher_queue_prefix(&pusher_key);
            let Some(end) = keys::prefix_successor(&prefix) else {
                break;
            };
            from.clone_from(&end);
            if in_flight.contains_key(&pusher_key)
                || backoff.get(&pusher_key).is_some_and(|b| b.until > now)
            {
                continue;
            }
            let pusher = self
                .push
                .pusher_index()
                .find(&user_of(&pusher_key), &pusher_key)
                .cloned();
            let mut entries = Vec::new();
            for entry in db
                .scan_range(Table::PosPusherPushqueue, &prefix, &end, false)
                .take(if pusher.is_some() { PER_PUSHER } else { 10_000 })
            {
                let (key, value) = entry?;
                match (&pusher, serde_json::from_slice::<QueuedPush>(&value)) {
                    (Some(_), Ok(queued)) => entries.push((key.to_vec(), queued)),
                    // The pusher is gone (its notifications too), or the entry is unreadable.
                    _ => orphans.delete(Table::PosPusherPushqueue, key),
                }
            }
            let Some(pusher) = pusher else {
                continue;
            };
            let worker = Arc::clone(self);
            let task = tasks.spawn(async move { worker.deliver(pusher, entries).await });
            in_flight.insert(pusher_key, task.id());
        }
        if !orphans.is_empty() {
            db.write_relaxed(orphans)?;
        }
        Ok(())
    }

    /// Sends one pusher's entries (oldest first) until one fails.
    async fn deliver(
        self: Arc<Self>,
        pusher: Pusher,
        queued: Vec<(Vec<u8>, QueuedPush)>,
    ) -> Outcome {
        let mut outcome = Outcome {
            pusher,
            done: Vec::new(),
            failure: None,
            rejected: false,
        };
        let now = crate::services::now_ms();
        for (key, entry) in queued {
            if now.saturating_sub(entry.queued) > MAX_AGE_MS {
                outcome.done.push(key);
                continue;
            }
            // Reads (the event, receipts, every room's unread count) off the async
            // threads.
            let built = {
                let (worker, pusher) = (Arc::clone(&self), outcome.pusher.clone());
                tokio::task::spawn_blocking(move || {
                    worker.push.notification(&*worker.lookups, &pusher, &entry)
                })
                .await
                .unwrap_or_else(|e| Err(crate::error::MatrixError::internal(e.to_string())))
            };
            let body = match built {
                Ok(Some(body)) => body,
                Ok(None) => {
                    outcome.done.push(key);
                    continue;
                }
                Err(e) => {
                    outcome.failure = Some(e.message);
                    break;
                }
            };
            match post(&self.http, &self.guard, outcome.pusher.url(), &body).await {
                Sent::Done(rejected) => {
                    outcome.done.push(key);
                    if rejected.contains(&outcome.pusher.pushkey) {
                        outcome.rejected = true;
                        break;
                    }
                }
                Sent::Failed(why) => {
                    outcome.failure = Some(why);
                    break;
                }
            }
        }
        outcome
    }
}

impl Push {
    /// The `notification` object for one device (spec: push gateway API), or `None` when
    /// the user has left the room since.
    fn notification(
        &self,
        lookups: &dyn PushLookups,
        pusher: &Pusher,
        entry: &QueuedPush,
    ) -> MatrixResult<Option<Value>> {
        let Some(room_id) = lookups.joined_room(entry.room, &pusher.user_id)? else {
            return Ok(None);
        };
        let (event_id, pdu) = lookups.event(entry.event)?;
        let unread = self.unread_total(lookups, &pusher.user_id)?;
        let mut tweaks = Map::new();
        for action in &entry.actions {
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
            "counts": {"unread": unread},
            "devices": [device],
        });
        if !pusher.event_id_only() {
            let sender = pdu.get("sender").and_then(Value::as_str).unwrap_or("");
            let (room_name, sender_name) = lookups.names(&room_id, sender);
            notification["type"] = pdu.get("type").cloned().unwrap_or(Value::Null);
            notification["sender"] = Value::from(sender);
            notification["content"] = pdu.get("content").cloned().unwrap_or(json!({}));
            if let Some(name) = room_name {
                notification["room_name"] = Value::from(name);
            }
            if let Some(name) = sender_name {
                notification["sender_display_name"] = Value::from(name);
            }
            if pdu.get("type").and_then(Value::as_str) == Some("m.room.member") {
                notification["user_is_target"] = Value::from(
                    pdu.get("state_key").and_then(Value::as_str) == Some(pusher.user_id.as_str()),
                );
            }
        }
        Ok(Some(json!({ "notification": notification })))
    }

    /// The user's unread notifications across the rooms they are joined to (the badge).
    fn unread_total(&self, lookups: &dyn PushLookups, user_id: &str) -> MatrixResult<u64> {
        let mut total = 0;
        for room in self.rooms_with_notifications(user_id)? {
            if lookups.joined_room(room, user_id)?.is_none() {
                continue;
            }
            let read = lookups.read_positions(room, user_id)?;
            total += self
                .unread_counts(user_id, room, &read)?
                .total()
                .notifications;
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

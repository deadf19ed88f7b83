//! Sending notifications to push gateways.
//!
//! Spec: push gateway API, `POST /_matrix/push/v1/notify`, and client-server API "Push
//! Notifications" ("Homeserver behaviour"). An event that notifies a user with pushers
//! leaves one queue entry per pusher in the event's own write batch
//! (`pos_pusher_pushqueue`), so nothing acknowledged is lost to a crash and the send path
//! never waits for a gateway. A worker drains the queue in stream order: one request per
//! entry (one device), with the user's unread count across the rooms they are in; a
//! pusher whose gateway fails keeps its entries and is retried with a doubling back-off
//! (1 s to 5 min); the pushkeys a gateway answers as `rejected` lose their pusher.
//! Notifications older than a day are dropped unsent. Gateway URLs are user input: the
//! HTTP client resolves them through the same address guard as federation
//! (`federation.ip_range_allowlist` opens private ranges).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};

use super::pushers::Pusher;
use super::Push;
use crate::error::MatrixResult;
use crate::services::ephemeral::receipts::ReadPositions;
use crate::services::stream::{StreamChange, StreamSubscriber};
use crate::storage::{keys, Table};

/// Entries read per round.
const BATCH: usize = 200;
/// How long a gateway gets to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry of a failing pusher, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Notifications older than this are dropped unsent.
const MAX_AGE_MS: u64 = 24 * 3_600_000;
/// The largest gateway answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a queue entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedPush {
    /// The room's short id.
    pub room: u64,
    /// The event's short id.
    pub event: u64,
    /// When the event was sent (ms).
    pub ts: u64,
    /// The actions of the push rule that matched (for `tweaks` and `prio`).
    pub actions: Vec<Value>,
}

/// `position (u64 BE) ++ pusher key`.
pub fn queue_key(pos: u64, pusher_key: &[u8]) -> Vec<u8> {
    let mut key = pos.to_be_bytes().to_vec();
    key.extend_from_slice(pusher_key);
    key
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

/// A pusher's failures: when it may be tried again and the next wait.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    next: Duration,
}

/// The worker's wake-up: the send path notes the greatest stream position whose event
/// queued pushes, and once the stream commits up to it the worker is woken (the entries
/// are readable then). Held by the stream's subscriber list, so it holds nothing that
/// holds the stream.
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
        if upto <= last && upto > self.woken_upto.load(Ordering::Acquire) {
            self.woken_upto.fetch_max(upto, Ordering::AcqRel);
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

impl Push {
    /// Runs the delivery worker until `stopped` turns true.
    pub fn start_delivery(
        self: &Arc<Self>,
        lookups: Arc<dyn PushLookups>,
        http: reqwest::Client,
        guard: impl Fn(std::net::IpAddr) -> bool + Send + Sync + 'static,
        mut stopped: watch::Receiver<bool>,
    ) {
        self.stream
            .subscribe(Arc::clone(&self.delivery) as Arc<dyn StreamSubscriber>);
        let push = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff: HashMap<Vec<u8>, Backoff> = HashMap::new();
            loop {
                // Given up at shutdown even mid-request: entries not yet marked sent
                // are sent again after the restart (at least once, never lost).
                let round = tokio::select! {
                    round = push.deliver_round(&*lookups, &http, &guard, &mut backoff) => round,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let next_wake = match round {
                    Ok(true) => Duration::ZERO,
                    Ok(false) => backoff
                        .values()
                        .map(|b| b.until.saturating_duration_since(Instant::now()))
                        .min()
                        .unwrap_or(Duration::from_secs(60))
                        .max(Duration::from_millis(50)),
                    Err(e) => {
                        tracing::warn!(error = %e.message, "push delivery round failed");
                        Duration::from_secs(5)
                    }
                };
                if next_wake.is_zero() {
                    tokio::task::yield_now().await;
                    continue;
                }
                tokio::select! {
                    _ = push.delivery.wake.notified() => {}
                    _ = tokio::time::sleep(next_wake) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
    }

    /// One pass over the queue: answers whether a full batch was sent (more may wait).
    async fn deliver_round(
        &self,
        lookups: &dyn PushLookups,
        http: &reqwest::Client,
        guard: &(dyn Fn(std::net::IpAddr) -> bool + Send + Sync),
        backoff: &mut HashMap<Vec<u8>, Backoff>,
    ) -> MatrixResult<bool> {
        let now = Instant::now();
        let mut entries: BTreeMap<Vec<u8>, Vec<(Vec<u8>, QueuedPush)>> = BTreeMap::new();
        let mut read = 0;
        let mut stale = Vec::new();
        for entry in self.db.scan_prefix(Table::PosPusherPushqueue, &[]) {
            let (key, value) = entry?;
            read += 1;
            let pusher_key = key.get(8..).unwrap_or_default().to_vec();
            if backoff.get(&pusher_key).is_some_and(|b| b.until > now) {
                if read >= BATCH * 10 {
                    break;
                }
                continue;
            }
            match serde_json::from_slice::<QueuedPush>(&value) {
                Ok(queued) => entries
                    .entry(pusher_key)
                    .or_default()
                    .push((key.to_vec(), queued)),
                Err(_) => stale.push(key.to_vec()),
            }
            if entries.values().map(Vec::len).sum::<usize>() >= BATCH {
                break;
            }
        }
        let full = entries.values().map(Vec::len).sum::<usize>() >= BATCH;
        let mut jobs = Vec::new();
        for (pusher_key, queued) in entries {
            let user_id = keys::split(&pusher_key)
                .next()
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .unwrap_or_default();
            let pusher = self.pusher_index().find(&user_id, &pusher_key).cloned();
            let Some(pusher) = pusher else {
                // The pusher is gone: so are its notifications.
                stale.extend(queued.into_iter().map(|(k, _)| k));
                continue;
            };
            jobs.push(self.deliver_to(lookups, http, guard, pusher, queued));
        }
        let outcomes = futures_util::future::join_all(jobs).await;
        let mut batch = self.db.batch();
        for key in stale {
            batch.delete(Table::PosPusherPushqueue, key);
        }
        for (pusher, done, failure, rejected) in outcomes {
            for key in done {
                batch.delete(Table::PosPusherPushqueue, key);
            }
            let pusher_key = pusher.key();
            match failure {
                None => {
                    backoff.remove(&pusher_key);
                }
                Some(why) => {
                    let next = backoff
                        .get(&pusher_key)
                        .map_or(FIRST_BACKOFF, |b| (b.next * 2).min(MAX_BACKOFF));
                    tracing::info!(user = %pusher.user_id, app_id = %pusher.app_id, error = %why, retry_in = ?next, "push gateway failed");
                    backoff.insert(
                        pusher_key,
                        Backoff {
                            until: Instant::now() + next,
                            next,
                        },
                    );
                }
            }
            if rejected {
                tracing::info!(user = %pusher.user_id, app_id = %pusher.app_id, "push gateway rejected the pushkey: pusher removed");
                self.remove_pushers(&pusher.user_id, |p| p.key() == pusher.key(), &mut batch)?;
            }
        }
        self.db.commit(batch).await?;
        Ok(full)
    }

    /// Sends `queued` (one pusher's entries, oldest first) until one fails; answers the
    /// pusher, the keys delivered (or dropped), the failure and whether the gateway
    /// rejected the pushkey.
    async fn deliver_to(
        &self,
        lookups: &dyn PushLookups,
        http: &reqwest::Client,
        guard: &(dyn Fn(std::net::IpAddr) -> bool + Send + Sync),
        pusher: Pusher,
        queued: Vec<(Vec<u8>, QueuedPush)>,
    ) -> (Pusher, Vec<Vec<u8>>, Option<String>, bool) {
        let mut done = Vec::new();
        let now = crate::services::now_ms();
        for (key, entry) in queued {
            if now.saturating_sub(entry.ts) > MAX_AGE_MS {
                done.push(key);
                continue;
            }
            let body = match self.notification(lookups, &pusher, &entry) {
                Ok(Some(body)) => body,
                Ok(None) => {
                    done.push(key);
                    continue;
                }
                Err(e) => return (pusher, done, Some(e.message), false),
            };
            match post(http, guard, pusher.url(), &body).await {
                Sent::Done(rejected) => {
                    done.push(key);
                    if rejected.contains(&pusher.pushkey) {
                        return (pusher, done, None, true);
                    }
                }
                Sent::Failed(why) => return (pusher, done, Some(why), false),
            }
        }
        (pusher, done, None, false)
    }

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
        // Spec: `prio` "high" for events that should wake the device (Synapse: those that
        // sound or highlight); `low` otherwise.
        let prio = if highlight || tweaks.contains_key("sound") {
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
async fn post(
    http: &reqwest::Client,
    guard: &(dyn Fn(std::net::IpAddr) -> bool + Send + Sync),
    url: &str,
    body: &Value,
) -> Sent {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Sent::Failed(format!("{url} is not a URL"));
    };
    let literal = parsed
        .host_str()
        .and_then(|h| h.trim_matches(|c| c == '[' || c == ']').parse().ok());
    if literal.is_some_and(|ip| !guard(ip)) {
        return Sent::Failed(format!("{url}: an address pushes may not reach"));
    }
    let response = match http.post(parsed).json(body).send().await {
        Ok(response) => response,
        Err(e) => return Sent::Failed(e.to_string()),
    };
    let status = response.status();
    if !status.is_success() {
        return Sent::Failed(format!("the gateway answered {status}"));
    }
    let bytes = match response.bytes().await {
        Ok(bytes) if bytes.len() <= MAX_ANSWER_BYTES => bytes,
        Ok(_) => return Sent::Done(Vec::new()),
        Err(e) => return Sent::Failed(e.to_string()),
    };
    let rejected = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("rejected").cloned())
        .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
        .unwrap_or_default();
    Sent::Done(rejected)
}

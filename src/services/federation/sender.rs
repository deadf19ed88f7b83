//! The federation sender: delivers what the outbox holds, per destination, in order.
//!
//! Spec: server-server API, "Transactions" (`PUT /_matrix/federation/v1/send/{txnId}`, at
//! most 50 PDUs and 100 EDUs), in the order they were queued. Each destination has its own task, started when something
//! is queued for it and stopped once its queue is empty and idle, so a destination that
//! does not answer holds up no other. One transaction in flight per destination; a retry
//! sends the same transaction (same id, same items; presence aged to the attempt) until it is acknowledged, then its
//! EDUs leave the queue. Failures back off exponentially with jitter (1 s doubling to an
//! hour), persisted so a restart does not hammer a dead server, and reset as soon as that
//! server makes a request to us; a destination waiting longer than a few seconds gives
//! up its task and waits as an entry in a set that one timer checks. A transaction the destination refuses outright (a 4xx
//! other than 429) three times gives up its first item, logged, so one item the other
//! side cannot take never wedges the queue. At start, destinations with queued items are
//! resumed. A PDU the destination answers with an error in the transaction's answer is
//! logged, not retried (the spec's answer says the other side judged it).
//!
//! Catch-up: a destination coming back from failures (an attempt failed, or its stored
//! back-off shows failures when its task starts: after our start, after it was parked)
//! with more than [`CATCH_UP_AFTER`] events queued is sent only the newest queued event
//! of each room; the older ones leave its queue (logged), for it to ask for with
//! `get_missing_events` or `/backfill`, as the spec's gap handling has it (Synapse enters
//! catch-up after a failed transaction). Never dropped this way: EDUs, and member events
//! about the destination's users (a leave, kick or ban it could not ask us for once out
//! of the room). A request from the destination ends its back-off but keeps the count of
//! failures until a transaction goes through. The scan reads the queue once, off the
//! async threads, EDU bodies unread.
//! Every task the
//! sender starts is tracked: when the server stops, a transaction in flight is dropped
//! (it stays queued, sent again under the same id at the next start) and the handle
//! [`Sender::start`] answers ends once no task is left.
//!
//! Owns the table `servername_destination`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::client::{FederationClient, FederationError};
use crate::core::ServerName;
use crate::services::now_ms;
use crate::services::outbox::{Item, Outbox, PduStore};
use crate::services::records::{decode, encode};
use crate::storage::{Db, Table};

/// EDUs per transaction at most (spec).
pub const MAX_EDUS: usize = 100;
/// PDUs per transaction at most (spec).
pub const MAX_PDUS: usize = 50;
/// A destination task without work stops after this long.
const IDLE_STOP: Duration = Duration::from_secs(30);
const FIRST_BACKOFF_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Refusals of one transaction before its first EDU is given up.
const REFUSALS_BEFORE_SKIP: u32 = 3;
/// A destination backing off longer than this gives up its task (and the memory of its
/// transaction) until its retry time: thousands of dead servers cost a set entry each.
const PARK_AFTER: Duration = Duration::from_secs(5);
/// How often parked destinations are checked for their retry time.
const PARKED_TICK: Duration = Duration::from_secs(1);
/// Queued events beyond which a destination coming back catches up (newest per room).
pub const CATCH_UP_AFTER: usize = 100;
/// Deletions per write batch of a catch-up.
const CATCH_UP_BATCH: usize = 10_000;

/// A destination's back-off, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestinationRecord {
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Not before this time (ms since the epoch).
    pub retry_at: u64,
}

/// The back-off after `failures` consecutive failures: 1 s doubling up to an hour, with
/// up to a quarter more as jitter (from `jitter`, a number in 0..1000).
pub fn backoff_ms(failures: u32, jitter: u64) -> u64 {
    let base = FIRST_BACKOFF_MS
        .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF_MS);
    base + base / 4 * jitter.min(1000) / 1000
}

struct Shared {
    db: Arc<Db>,
    client: Arc<FederationClient>,
    pdus: Arc<dyn PduStore>,
    /// The running destination tasks' wake-ups.
    running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Destinations without a task, backing off: `(retry time, name)`.
    parked: Mutex<std::collections::BTreeSet<(u64, String)>>,
    stopped: watch::Receiver<bool>,
    /// Every task of the sender, waited for at shutdown.
    tasks: TaskTracker,
    /// When each destination backing off last reached us (ms since the epoch): an attempt
    /// that failed while it did is tried again at once, not backed off further.
    contacts: Mutex<HashMap<String, u64>>,
}

/// The sender's handle: who to wake.
pub struct Sender {
    shared: Mutex<Option<Arc<Shared>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Sender {
    fn default() -> Self {
        Self {
            shared: Mutex::new(None),
        }
    }
}

impl Sender {
    /// Starts the sender: it resumes every destination with queued EDUs and then follows
    /// the outbox's wake-ups until `stopped` turns true. The handle ends once every task
    /// of the sender has ended after that (`None`: the sender was already started).
    pub fn start(
        &self,
        (db, pdus): (Arc<Db>, Arc<dyn PduStore>),
        client: Arc<FederationClient>,
        outbox: &Outbox,
        stopped: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let Some(mut wakeups) = outbox.take_wakeups() else {
            tracing::error!("the federation sender was started twice");
            return None;
        };
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            db,
            client,
            pdus,
            running: Mutex::new(HashMap::new()),
            parked: Mutex::new(std::collections::BTreeSet::new()),
            stopped: stopped.clone(),
            tasks: tasks.clone(),
            contacts: Mutex::new(HashMap::new()),
        });
        *lock(&self.shared) = Some(Arc::clone(&shared));
        match Outbox::destinations(&shared.db) {
            Ok(destinations) => {
                for destination in destinations {
                    wake(&shared, &destination);
                }
            }
            Err(e) => tracing::error!(error = %e.message, "cannot read the outbox"),
        }
        let parked = Arc::clone(&shared);
        let mut parked_stop = stopped.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PARKED_TICK) => {}
                    _ = parked_stop.changed() => return,
                }
                let now = now_ms();
                let due: Vec<String> = {
                    let mut set = lock(&parked.parked);
                    let mut due = Vec::new();
                    while let Some(first) = set.first().cloned() {
                        if first.0 > now {
                            break;
                        }
                        set.remove(&first);
                        due.push(first.1);
                    }
                    due
                };
                for destination in due {
                    wake(&parked, &destination);
                }
            }
        });
        let mut wakeups_stop = stopped.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    next = wakeups.recv() => match next {
                        Some(destination) => wake(&shared, &destination),
                        None => return,
                    },
                    _ = wakeups_stop.changed() => return,
                }
            }
        });
        let mut stopped = stopped;
        Some(tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                if stopped.changed().await.is_err() {
                    break;
                }
            }
            // No new task after this; the running ones see the stop themselves.
            tasks.close();
            tasks.wait().await;
        }))
    }

    /// `server` made a request to us: it is up, so its back-off ends and what waits for it
    /// is sent now.
    pub fn contacted(&self, server: &str) {
        let Some(shared) = lock(&self.shared).clone() else {
            return;
        };
        let mut record = load_record(&shared.db, server);
        lock(&shared.parked).retain(|(_, name)| name != server);
        if record.failures > 0 || record.retry_at > 0 {
            lock(&shared.contacts).insert(server.to_owned(), now_ms());
        }
        if record.retry_at > 0 {
            // Sent to at once; the failures stay counted (a backlog is caught up)
            // until a transaction goes through.
            record.retry_at = 0;
            store_record(&shared.db, server, &record);
            wake(&shared, server);
        }
    }
}

/// Wakes the destination's task, starting it when none runs.
fn wake(shared: &Arc<Shared>, destination: &str) {
    let mut running = lock(&shared.running);
    if let Some(notify) = running.get(destination) {
        notify.notify_one();
        return;
    }
    let Ok(name) = ServerName::parse(destination) else {
        tracing::warn!(%destination, "queued EDUs for an invalid server name");
        return;
    };
    let notify = Arc::new(Notify::new());
    if *shared.stopped.borrow() {
        return;
    }
    running.insert(destination.to_owned(), Arc::clone(&notify));
    shared
        .tasks
        .spawn(run_destination(Arc::clone(shared), name, notify));
}

/// What the sender holds of `destination`: its consecutive failures and when it may be
/// tried again (none: never failed, or reached since). Public for the split harness's
/// failure reports.
pub fn load_record(db: &Db, destination: &str) -> DestinationRecord {
    db.get(Table::ServernameDestination, destination.as_bytes())
        .ok()
        .flatten()
        .and_then(|b| decode(Table::ServernameDestination, &b).ok())
        .unwrap_or_default()
}

fn store_record(db: &Db, destination: &str, record: &DestinationRecord) {
    let mut batch = db.batch();
    batch.put(
        Table::ServernameDestination,
        destination.as_bytes(),
        encode(record),
    );
    if let Err(e) = db.write_relaxed(batch) {
        tracing::warn!(%destination, error = %e, "cannot store the back-off");
    }
}

/// Waits `duration`, or less if woken or stopped; answers whether to go on.
async fn pause(notify: &Notify, stopped: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        _ = notify.notified() => true,
        _ = tokio::time::sleep(duration) => true,
        _ = stopped.changed() => false,
    }
}

async fn run_destination(shared: Arc<Shared>, destination: ServerName, notify: Arc<Notify>) {
    let name = destination.as_str().to_owned();
    let mut stopped = shared.stopped.clone();
    // The transaction in flight, kept across retries.
    let mut in_flight: Option<Transaction> = None;
    let mut refusals = 0u32;
    // Back from failures (stored, or an attempt of this task): a backlog is caught up.
    let mut check_backlog = load_record(&shared.db, &name).failures > 0;
    loop {
        if *stopped.borrow() {
            break;
        }
        let record = load_record(&shared.db, &name);
        let now = now_ms();
        if record.retry_at > now {
            let wait = Duration::from_millis(record.retry_at - now);
            if wait > PARK_AFTER {
                // Park: no task until the retry time (or a contact, which wakes it).
                let mut running = lock(&shared.running);
                running.remove(&name);
                lock(&shared.parked).insert((record.retry_at, name.clone()));
                return;
            }
            if !pause(&notify, &mut stopped, wait).await {
                break;
            }
            // Woken early: only a contact (which deletes the record) ends the wait.
            continue;
        }
        if in_flight.is_none() {
            if check_backlog {
                check_backlog = false;
                let (scan, destination) = (Arc::clone(&shared), name.clone());
                match tokio::task::spawn_blocking(move || catch_up(&scan, &destination)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(destination = %name, error = %e.message, "catch-up could not read the outbox");
                    }
                    Err(e) => tracing::error!(destination = %name, error = %e, "catch-up failed"),
                }
            }
            let pending = match Outbox::pending(&shared.db, &name, MAX_EDUS + MAX_PDUS) {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::error!(destination = %name, error = %e.message, "cannot read the outbox");
                    Vec::new()
                }
            };
            if pending.is_empty() {
                // Idle: stop, unless something arrives meanwhile. Leaving the map under its
                // lock after checking the queue once more means a wake-up either finds
                // this task or starts a new one.
                if pause(&notify, &mut stopped, IDLE_STOP).await {
                    let mut running = lock(&shared.running);
                    if Outbox::pending(&shared.db, &name, 1).is_ok_and(|p| p.is_empty()) {
                        running.remove(&name);
                        return;
                    }
                    continue;
                }
                break;
            }
            let transaction = next_transaction(shared.pdus.as_ref(), &name, pending);
            refusals = 0;
            in_flight = Some(transaction);
        }
        let Some(Transaction {
            txn_id,
            keys,
            pdus,
            edus,
        }) = in_flight.clone()
        else {
            continue;
        };
        if keys.is_empty() {
            in_flight = None;
            continue;
        }
        let now = now_ms();
        let body = json!({
            "origin": shared.client.server_name().as_str(),
            "origin_server_ts": now,
            "pdus": pdus,
            "edus": edus_as_sent(edus, now),
        });
        let path = format!("/_matrix/federation/v1/send/{txn_id}");
        let attempt_started = now_ms();
        let request = shared
            .client
            .request(&destination, Method::PUT, &path, Some(&body));
        // Stopping drops the request: the items stay queued for the next start.
        let answer = tokio::select! {
            answer = request => answer,
            _ = stopped.changed() => break,
        };
        match answer {
            Ok(answer) => {
                log_pdu_errors(&name, &answer);
                let mut batch = shared.db.batch();
                for key in &keys {
                    batch.delete(Table::ServernamePosEdu, key);
                }
                batch.delete(Table::ServernameDestination, name.as_bytes());
                if let Err(e) = shared.db.write_relaxed(batch) {
                    tracing::error!(destination = %name, error = %e, "cannot clear sent EDUs");
                }
                lock(&shared.contacts).remove(&name);
                in_flight = None;
            }
            // 401: the destination could not check our signature (it cannot reach our
            // key yet, say); 408 and 429: it is busy. None of them is about the items.
            Err(FederationError::Refused { status, body })
                if (400..500).contains(&status) && ![401, 408, 429].contains(&status) =>
            {
                refusals += 1;
                tracing::warn!(destination = %name, %status, %body, "transaction {txn_id} refused ({refusals})");
                if refusals >= REFUSALS_BEFORE_SKIP {
                    // Give up the first item, which may be what the other side cannot take.
                    if let Some(first) = keys.first() {
                        let mut batch = shared.db.batch();
                        batch.delete(Table::ServernamePosEdu, first);
                        let _ = shared.db.write_relaxed(batch);
                        tracing::warn!(destination = %name, "an item the destination keeps refusing was dropped");
                    }
                    in_flight = None;
                } else {
                    back_off(&shared.db, &name, record);
                }
            }
            Err(e) => {
                check_backlog = true;
                // The destination reached us while this attempt failed (a network that
                // healed meanwhile): it is up, so again at once, once (the contact is
                // used up; a next failure backs off as usual).
                let reached_us = lock(&shared.contacts)
                    .remove(&name)
                    .is_some_and(|at| at >= attempt_started);
                if reached_us {
                    tracing::info!(destination = %name, error = %e, "transaction {txn_id} not delivered, but the destination reached us meanwhile; again now");
                    continue;
                }
                tracing::info!(destination = %name, error = %e, "transaction {txn_id} not delivered; backing off");
                back_off(&shared.db, &name, record);
            }
        }
    }
    lock(&shared.running).remove(&name);
}

/// Catch-up (see the module doc): when more than [`CATCH_UP_AFTER`] events are queued
/// for `destination`, only the newest of each room stays (and every member event about
/// one of its users). One pass over the queue; memory follows the number of rooms.
fn catch_up(shared: &Shared, destination: &str) -> crate::services::error::ServiceResult<()> {
    let mut counted = 0;
    for event in Outbox::queued_events(&shared.db, destination).take(CATCH_UP_AFTER + 1) {
        event?;
        counted += 1;
    }
    if counted <= CATCH_UP_AFTER {
        return Ok(());
    }
    let mut newest: HashMap<String, Vec<u8>> = HashMap::new();
    let mut batch = shared.db.batch();
    let (mut dropped, mut in_batch) = (0usize, 0usize);
    for event in Outbox::queued_events(&shared.db, destination) {
        let (key, id) = event?;
        // An event no longer stored stays, to be skipped as usual.
        let Some(pdu) = shared.pdus.pdu(&id) else {
            continue;
        };
        match catch_up_room(&pdu, destination) {
            Some(room) => {
                if let Some(older) = newest.insert(room, key) {
                    batch.delete(Table::ServernamePosEdu, older);
                    dropped += 1;
                    in_batch += 1;
                }
            }
            None => continue,
        }
        if in_batch >= CATCH_UP_BATCH {
            shared
                .db
                .write_relaxed(std::mem::replace(&mut batch, shared.db.batch()))?;
            in_batch = 0;
        }
    }
    shared.db.write_relaxed(batch)?;
    tracing::info!(%destination, dropped, rooms = newest.len(), "catching up: the newest event of each room is sent, the older ones are left for the destination to ask for");
    Ok(())
}

/// The room an event counts for in a catch-up, or `None` for an event that is always
/// sent: a member event about a user of `destination`.
fn catch_up_room(pdu: &Value, destination: &str) -> Option<String> {
    let field = |key: &str| pdu.get(key).and_then(Value::as_str);
    if field("type") == Some("m.room.member")
        && field("state_key")
            .and_then(|u| u.split_once(':'))
            .map(|(_, s)| s)
            == Some(destination)
    {
        return None;
    }
    field("room_id").map(str::to_owned)
}

/// A transaction being delivered: the same id and items on every retry.
#[derive(Clone)]
struct Transaction {
    txn_id: String,
    /// The outbox keys it empties once acknowledged.
    keys: Vec<Vec<u8>>,
    pdus: Vec<Value>,
    edus: Vec<Value>,
}

/// The next transaction from the head of a destination's queue: items in order while
/// both limits hold. A queued event no longer stored is skipped (its key still leaves
/// the queue with the transaction).
fn next_transaction(
    store: &dyn PduStore,
    destination: &str,
    pending: Vec<(Vec<u8>, Item)>,
) -> Transaction {
    let mut keys = Vec::new();
    let mut pdus = Vec::new();
    let mut edus = Vec::new();
    for (key, item) in pending {
        match item {
            Item::Pdu(_) if pdus.len() >= MAX_PDUS => break,
            Item::Edu(_) if edus.len() >= MAX_EDUS => break,
            Item::Pdu(id) => match store.pdu(&id) {
                Some(pdu) => pdus.push(pdu),
                None => tracing::warn!(%destination, event = %id, "a queued event is not stored"),
            },
            Item::Edu(edu) => edus.push(edu),
        }
        keys.push(key);
    }
    // Stable for these items, and only for them (a catch-up deletes items from the
    // middle of the queue): the position of the first, the count, and a hash of all
    // their keys (FNV-1a).
    let first = keys
        .first()
        .and_then(|k| k.get(k.len().saturating_sub(8)..))
        .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    let hash = crate::core::fnv::fnv1a_64(keys.iter().flatten().copied());
    Transaction {
        txn_id: format!("{first:x}.{}.{hash:x}", keys.len()),
        keys,
        pdus,
        edus,
    }
}

/// A transaction's EDUs as an attempt at `now` sends them (presence aged to `now`: a
/// retry after a back-off says how long ago the user was active as of that retry).
fn edus_as_sent(mut edus: Vec<Value>, now: u64) -> Vec<Value> {
    for edu in &mut edus {
        Outbox::presence_as_sent(edu, now);
    }
    edus
}

/// The destination's answer names PDUs it did not accept (`{"pdus": {id: {"error"}}}`).
fn log_pdu_errors(destination: &str, answer: &Value) {
    let Some(results) = answer.get("pdus").and_then(Value::as_object) else {
        return;
    };
    for (event_id, result) in results {
        if let Some(error) = result.get("error") {
            tracing::info!(%destination, event = %event_id, %error, "the destination did not accept an event");
        }
    }
}

fn back_off(db: &Db, destination: &str, mut record: DestinationRecord) {
    record.failures = record.failures.saturating_add(1);
    let jitter = u64::from(crate::services::random_bytes::<2>()[0]) * 1000 / 255;
    record.retry_at = now_ms() + backoff_ms(record.failures, jitter);
    store_record(db, destination, &record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_counts_events_by_room_but_never_drops_member_events_of_the_destination() {
        let event = |kind: &str, state_key: Option<&str>| {
            let mut e = json!({"type": kind, "room_id": "!r:a.example", "sender": "@x:a.example"});
            if let Some(key) = state_key {
                e["state_key"] = json!(key);
            }
            e
        };
        let room = Some("!r:a.example".to_owned());
        assert_eq!(
            catch_up_room(&event("m.room.message", None), "d.example"),
            room
        );
        assert_eq!(
            catch_up_room(&event("m.room.member", Some("@u:e.example")), "d.example"),
            room
        );
        // A leave, kick or ban of the destination's user is always sent.
        assert_eq!(
            catch_up_room(&event("m.room.member", Some("@u:d.example")), "d.example"),
            None
        );
        assert_eq!(
            catch_up_room(&json!({"type": "m.room.message"}), "d.example"),
            None
        );
    }

    #[test]
    fn a_transaction_id_names_its_items() {
        let item = |pos: u64| {
            (
                pos,
                Item::Edu(json!({"edu_type": "m.typing", "content": {}})),
            )
        };
        let transaction = |positions: &[u64]| {
            let pending = positions
                .iter()
                .map(|p| {
                    let (pos, edu) = item(*p);
                    (crate::services::outbox::edu_key("d.example", pos), edu)
                })
                .collect();
            next_transaction(&NoPdus, "d.example", pending).txn_id
        };
        assert_eq!(transaction(&[1, 2, 3]), transaction(&[1, 2, 3]));
        // Same first item and count, other items: another id.
        assert_ne!(transaction(&[1, 2, 3]), transaction(&[1, 5, 9]));
    }

    #[test]
    fn presence_leaves_with_the_time_since_it_was_queued() {
        let edu = json!({"edu_type": "m.presence", "content": {"push": [
            {"user_id": "@a:o.example", "presence": "online", "last_active_ago": 100},
            {"user_id": "@b:o.example", "presence": "offline"}
        ]}});
        let (_, key, bytes) = Outbox::queue_presence("d.example", 7, &edu, 1_000);
        let queued: Value = serde_json::from_slice(&bytes.unwrap()).unwrap();
        let pending = vec![(key, Item::Edu(queued))];
        let transaction = next_transaction(&NoPdus, "d.example", pending);
        // Tried a second after it was queued, then again an hour after.
        let first = edus_as_sent(transaction.edus.clone(), 2_000);
        assert_eq!(first[0]["content"]["push"][0]["last_active_ago"], 1_100);
        let sent = edus_as_sent(transaction.edus, 3_601_000);
        let push = &sent[0]["content"]["push"];
        assert_eq!(push[0]["last_active_ago"], 3_600_100, "{push}");
        assert!(push[0].get(crate::services::outbox::QUEUED_TS).is_none());
        assert!(push[1].get("last_active_ago").is_none(), "{push}");
        assert!(push[1].get(crate::services::outbox::QUEUED_TS).is_none());
        // Other EDUs leave as queued.
        let typing = json!({"edu_type": "m.typing", "content": {"last_active_ago": 1}});
        assert_eq!(edus_as_sent(vec![typing.clone()], 9)[0], typing);
    }

    struct NoPdus;

    impl PduStore for NoPdus {
        fn pdu(&self, _: &str) -> Option<Value> {
            None
        }
    }

    #[test]
    fn backoff_doubles_from_a_second_to_an_hour_with_a_quarter_of_jitter() {
        assert_eq!(backoff_ms(1, 0), 1_000);
        assert_eq!(backoff_ms(2, 0), 2_000);
        assert_eq!(backoff_ms(5, 0), 16_000);
        assert_eq!(backoff_ms(40, 0), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(1, 1000), 1_250);
        assert!(backoff_ms(3, 500) > backoff_ms(3, 0) && backoff_ms(3, 500) < backoff_ms(3, 1000));
    }
}

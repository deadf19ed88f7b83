//! The entry point for events other servers made: one remote PDU in, one outcome out.
//!
//! Spec: server-server API, "Checks performed on receipt of a PDU". In order:
//! 1. the event format of the room's version, strict canonical JSON and the size limit
//!    ([`pdu_checks::check_format`]): otherwise dropped;
//! 2. the signatures of the sender's server (and, for a restricted join, of the
//!    authorising server, which the auth rules ask about), by keys the caller's
//!    [`MissingSource`] supplies ([`pdu_checks::check_signatures`]): otherwise dropped;
//! 3. the content hash ([`pdu_checks::check_content_hash`]): otherwise the event goes on
//!    redacted;
//! 4. to 6. the auth rules against the event's auth events, the state before it and the
//!    current state, inside the room's writer (see the writer's `remote_event` module):
//!    rejected, rejected, soft-failed.
//!
//! Keys and missing events are fetched here, outside the room's writer, so a slow server
//! never holds a room: missing prev events are fetched and received first (their own
//! missing events before them), then auth events still missing are fetched and stored as
//! outliers (each checked against its own auth events), within a budget. When prev events
//! still cannot be had (a gap too big to fill), or are held only as outliers, the state
//! after each is asked of the server that sent it (`/state_ids`, its state events
//! fetched as outliers; see [`super::told_state`]) and the writer resolves it with the
//! states after the prev events it holds, as Synapse does; what is still missing is
//! named in [`PduOutcome::MissingEvents`].

use std::collections::{BTreeSet, HashMap, HashSet};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::Value;

use super::graph::EventStatus;
use super::writer::RemoteEvent;
use super::Rooms;
use crate::core::event_hashes;
use crate::core::pdu;
use crate::core::pdu_checks::{self, KnownKey, SignatureCheck};
use crate::services::error::ServiceResult;

pub use super::writer::PduOutcome;

/// Events fetched for one offered PDU at most (its missing auth and prev events, theirs,
/// and so on), as Synapse bounds `get_missing_events`.
pub const FETCH_BUDGET: usize = 50;

/// What the entry point asks of its caller: keys and events it does not have. Federation
/// answers from its key cache and other servers; tests from a made-up server.
pub trait MissingSource: Send + Sync {
    /// The verify keys of `server` with these ids (key id to key); keys the source cannot
    /// find are left out.
    fn keys<'a>(
        &'a self,
        server: &'a str,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, HashMap<String, KnownKey>>;

    /// The PDUs of these events of `room_id`, those the source can get.
    fn events<'a>(&'a self, room_id: &'a str, event_ids: &'a [String])
        -> BoxFuture<'a, Vec<Value>>;

    /// The events of `room_id` between `earliest` (what we hold: our forward extremities)
    /// and `latest`, none deeper in the past than `min_depth`, at most `limit`, as
    /// `/get_missing_events` answers them; none when the source cannot tell.
    fn missing_events<'a>(
        &'a self,
        room_id: &'a str,
        (earliest, latest): (&'a [String], &'a [String]),
        (limit, min_depth): (usize, u64),
    ) -> BoxFuture<'a, Vec<Value>> {
        let _ = (room_id, earliest, latest, limit, min_depth);
        Box::pin(async { Vec::new() })
    }

    /// The ids of the state events of `room_id` before `event_id`, as `/state_ids`
    /// answers them (`pdu_ids`); `None` when the source cannot tell.
    fn state_ids<'a>(
        &'a self,
        room_id: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Option<Vec<String>>> {
        let _ = (room_id, event_id);
        Box::pin(async { None })
    }
}

/// What an offered PDU is to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A live event: its missing prev events are fetched first.
    Live,
    /// Held for its own sake (an auth or state event of another).
    Outlier,
    /// Of the room's past (backfill): placed by the caller, prev events not fetched.
    History,
}

/// Prev events of one PDU whose state is asked of its sender one by one at most
/// (`/state_ids` and the event itself for each); with more, the state before the PDU is
/// asked once instead.
const TOLD_PREVS: usize = 5;

/// Events one `/get_missing_events` asks for at most (as Synapse does).
const GAP_LIMIT: usize = 10;

/// A PDU's answer in a transaction: known at once, or when its writer has written it.
enum Answered {
    Now(ServiceResult<(Option<String>, PduOutcome)>),
    Later(String, BoxFuture<'static, ServiceResult<PduOutcome>>),
}

/// How many events may still be fetched for the PDU (or transaction) being received
/// (`.0`), and how many times the state at an event may still be asked (`.1`,
/// [`STATE_ASKS`] to start: each ask is a `/state_ids` request and the events it names,
/// and one hostile PDU's gap can hold many events, each with prev events to ask about).
pub(super) struct Budget(pub(super) usize, pub(super) usize);

/// The states asked of other servers for one received PDU (or transaction) at most: its
/// own prev events, and those of the events fetched for it. Each PDU keeps
/// [`TOLD_PREVS`] of what is left for its own prev events.
pub(super) const STATE_ASKS: usize = 50;

/// A PDU that passed checks 1 to 3, ready for its room's writer.
pub(super) struct Prepared {
    pub(super) room_id: String,
    pub(super) event: RemoteEvent,
}

/// What the checks before the writer decided: go on, or this outcome.
pub(super) enum Prepare {
    Ready(Box<Prepared>),
    Done(Option<String>, PduOutcome),
}

impl Rooms {
    /// Receives one PDU `origin` sent: the receipt checks in order, fetching through
    /// `source` what is missing, and the outcome. Answers the event id (when the PDU had
    /// one's shape) with the outcome.
    pub async fn receive_pdu(
        &self,
        origin: &str,
        pdu: Value,
        source: &dyn MissingSource,
    ) -> ServiceResult<(Option<String>, PduOutcome)> {
        let mut budget = Budget(FETCH_BUDGET, STATE_ASKS);
        self.receive_one(origin, pdu, Kind::Live, source, &mut budget)
            .await
    }

    /// Receives a membership event another server sent us for the room (`send_join`,
    /// `send_leave`, `send_knock`): the receipt checks as for any PDU, and once accepted
    /// the event is passed on to the other servers in the room.
    pub async fn receive_membership_pdu(
        &self,
        origin: &str,
        pdu: Value,
        source: &dyn MissingSource,
    ) -> ServiceResult<(Option<String>, PduOutcome)> {
        let mut budget = Budget(FETCH_BUDGET, STATE_ASKS);
        let none = HashSet::new();
        match self
            .prepare(origin, pdu, Kind::Live, (source, &mut budget), &none)
            .await?
        {
            Prepare::Done(id, outcome) => Ok((id, outcome)),
            Prepare::Ready(mut ready) => {
                ready.event.forward = true;
                let id = ready.event.event_id.clone();
                let outcome = self.writers.receive(&ready.room_id, ready.event).await?;
                Ok((Some(id), outcome))
            }
        }
    }

    /// Receives the PDUs of one transaction, in order, answering each one's outcome. A
    /// PDU may name earlier ones of the same transaction as prev or auth events (they are
    /// not fetched); the writers get them all at once, so one fsync covers many.
    pub async fn receive_pdus(
        &self,
        origin: &str,
        pdus: Vec<Value>,
        source: &dyn MissingSource,
    ) -> Vec<ServiceResult<(Option<String>, PduOutcome)>> {
        let mut budget = Budget(FETCH_BUDGET, STATE_ASKS);
        let mut in_batch = HashSet::new();
        let mut answers = Vec::with_capacity(pdus.len());
        let rooms_held: HashMap<&str, bool> = pdus
            .iter()
            .filter_map(|pdu| pdu.get("room_id").and_then(Value::as_str))
            .collect::<HashSet<&str>>()
            .into_iter()
            // Its short id (kept in memory) tells whether a room is held; its record is
            // read again by each PDU's checks.
            .map(|room| (room, self.store.room_short(room).ok().flatten().is_some()))
            .collect();
        prefetch_sender_keys(&pdus, source, |room| {
            rooms_held.get(room).copied().unwrap_or(false)
        })
        .await;
        // Each PDU goes to its room's writer as soon as it is checked, so checking the
        // next overlaps with writing this one; the writers answer after their fsyncs.
        for pdu in pdus {
            let step = self
                .prepare(origin, pdu, Kind::Live, (source, &mut budget), &in_batch)
                .await;
            answers.push(match step {
                Err(e) => Answered::Now(Err(e)),
                Ok(Prepare::Done(id, outcome)) => Answered::Now(Ok((id, outcome))),
                Ok(Prepare::Ready(ready)) => {
                    in_batch.insert(ready.event.event_id.clone());
                    let id = ready.event.event_id.clone();
                    Answered::Later(
                        id,
                        Box::pin(self.writers.receive(&ready.room_id, ready.event)),
                    )
                }
            });
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Answered::Now(result) => result,
                Answered::Later(id, outcome) => outcome.await.map(|o| (Some(id), o)),
            });
        }
        out
    }

    fn receive_one<'a>(
        &'a self,
        origin: &'a str,
        pdu: Value,
        kind: Kind,
        source: &'a dyn MissingSource,
        budget: &'a mut Budget,
    ) -> BoxFuture<'a, ServiceResult<(Option<String>, PduOutcome)>> {
        Box::pin(async move {
            let none = HashSet::new();
            match self
                .prepare(origin, pdu, kind, (source, budget), &none)
                .await?
            {
                Prepare::Done(id, outcome) => Ok((id, outcome)),
                Prepare::Ready(ready) => {
                    let id = ready.event.event_id.clone();
                    let outcome = self.writers.receive(&ready.room_id, ready.event);
                    Ok((Some(id), outcome.await?))
                }
            }
        })
    }

    /// Checks 1 to 3, and fetching what the room lacks (but `in_batch`).
    pub(super) async fn prepare(
        &self,
        origin: &str,
        pdu: Value,
        kind: Kind,
        (source, budget): (&dyn MissingSource, &mut Budget),
        in_batch: &HashSet<String>,
    ) -> ServiceResult<Prepare> {
        let dropped = |reason: String| Ok(Prepare::Done(None, PduOutcome::Dropped(reason)));
        let Some(room_id) = room_of(&pdu) else {
            return dropped("the PDU has no room_id".into());
        };
        let Some(room) = self.store.room(&room_id)?.filter(|r| r.record.state != 0) else {
            // No record, or one with no state yet (a join through another server that
            // did not complete): only the end of one of our users' invites or knocks
            // is taken (out of band).
            if kind == Kind::Live {
                if let Some((id, outcome)) = self
                    .rescinded_membership(origin, (&room_id, &pdu), source)
                    .await?
                {
                    return Ok(Prepare::Done(id, outcome));
                }
            }
            return dropped(format!("this server is not in room {room_id}"));
        };
        let version = room.version;
        // Check 1.
        if let Err(e) = pdu_checks::check_format(version, &pdu) {
            return dropped(format!("malformed: {e}"));
        }
        // What the event id hashes (rooms v3 and later) and every signature covers,
        // written once for both.
        let signed = match event_hashes::redacted_signed_bytes(&pdu, version) {
            Ok(signed) => signed,
            Err(e) => return dropped(format!("no event id: {e:?}")),
        };
        let event_id = match event_hashes::event_id_over(&pdu, version, &signed) {
            Ok(id) => id,
            Err(e) => return dropped(format!("no event id: {e:?}")),
        };
        if !self.server_allowed_in(&room, origin)? {
            let reason = format!("the server ACL of room {room_id} denies {origin}");
            return Ok(Prepare::Done(Some(event_id), PduOutcome::Dropped(reason)));
        }
        if let Some(short) = self.store.state.find_event(&event_id)? {
            // Rooms v1 and v2: the sender chose the id; another event under a held id
            // is not that event.
            if !version.event_ids_are_reference_hashes()
                && !same_event(version, self.store.event(short)?.pdu(), &pdu)
            {
                let reason = format!("another event is held under the id {event_id}");
                return Ok(Prepare::Done(Some(event_id), PduOutcome::Dropped(reason)));
            }
            let status = super::graph::record(&self.store, short)?.map(|r| r.status);
            let again = match status {
                Some(super::graph::EventStatus::OutOfBand) => true,
                Some(super::graph::EventStatus::Outlier) => kind != Kind::Outlier,
                _ => false,
            };
            if !again {
                return Ok(Prepare::Done(Some(event_id), PduOutcome::AlreadyKnown));
            }
        }
        // Check 2.
        let signed_by = match verify_signatures_over(version, (&pdu, &signed), source).await {
            Ok(servers) => servers,
            Err(reason) => {
                tracing::info!(%origin, event = %event_id, "dropped: {reason}");
                return Ok(Prepare::Done(Some(event_id), PduOutcome::Dropped(reason)));
            }
        };
        drop(signed);
        // Check 3.
        let (pdu, redacted) = pdu_checks::check_content_hash(version, pdu);
        if redacted {
            tracing::info!(%origin, event = %event_id, "content hash mismatch: kept redacted");
        }

        // What the room lacks, fetched outside its writer (an outlier counts as held).
        let unknown = |key: &str| -> ServiceResult<Vec<String>> {
            let mut out = Vec::new();
            for id in pdu::event_ids(&pdu, key) {
                let known = match self.store.state.find_event(id)? {
                    Some(short) => !super::graph::is_out_of_band(&self.store, short)?,
                    None => false,
                };
                if !in_batch.contains(id) && !known && !out.iter().any(|o| o == id) {
                    out.push(id.to_owned());
                }
            }
            Ok(out)
        };
        // Prev events first: one that is also an auth event then gets its timeline
        // place rather than being held as an outlier.
        let mut gap_states = Vec::new();
        if kind == Kind::Live {
            // The state asks this event's own prev events may need are kept from the
            // events fetched for it (which may spend the rest).
            let reserved = budget.1.min(TOLD_PREVS);
            budget.1 -= reserved;
            let mut missing_prev = unknown("prev_events")?;
            if !missing_prev.is_empty() && budget.0 > 0 {
                // A gap: what lies between our forward extremities and this event, in
                // one request, before any event is fetched alone.
                self.fill_gap(origin, (&room_id, &event_id), source, budget)
                    .await?;
                missing_prev = unknown("prev_events")?;
            }
            self.fetch_and_receive(origin, &room_id, &missing_prev, Kind::Live, source, budget)
                .await?;
            // Prev events still without a state of ours (missing for good, or held only
            // as outliers, such as the state a join took): the state after each as the
            // sending server tells it, which the writer resolves with the states after
            // the others. Asked even with the fetch budget spent (the gap filling above
            // may have used it up); the state events named are fetched within it.
            budget.1 += reserved;
            let unplaced = self.unplaced_prevs(&pdu, in_batch)?;
            if unplaced.len() > TOLD_PREVS {
                // More than a few (two requests each would let one hostile PDU cost
                // forty): one request, the state before the event as its sender tells
                // it, stands for the state after each of them.
                if let Some((snapshot, _)) = self
                    .state_before(origin, &room_id, &event_id, source, budget)
                    .await?
                {
                    gap_states = unplaced.into_iter().map(|p| (p, snapshot)).collect();
                }
            } else {
                let mut rest = Vec::new();
                for (n, prev) in unplaced.iter().enumerate() {
                    match self
                        .state_after_prev(origin, &room_id, prev, source, budget)
                        .await?
                    {
                        Some(snapshot) => gap_states.push((prev.clone(), snapshot)),
                        None => {
                            rest = unplaced[n..].to_vec();
                            break;
                        }
                    }
                }
                // A prev event that cannot be had (or whose state cannot be told): the
                // state before the event, asked once, stands for it and those after it,
                // as with many prev events.
                if !rest.is_empty() {
                    if let Some((snapshot, _)) = self
                        .state_before(origin, &room_id, &event_id, source, budget)
                        .await?
                    {
                        gap_states.extend(rest.into_iter().map(|p| (p, snapshot)));
                    }
                }
            }
        }
        let missing_auth = unknown("auth_events")?;
        self.fetch_and_receive(
            origin,
            &room_id,
            &missing_auth,
            Kind::Outlier,
            source,
            budget,
        )
        .await?;

        Ok(Prepare::Ready(Box::new(Prepared {
            room_id,
            event: RemoteEvent {
                event_id,
                pdu,
                signed_by,
                outlier: kind == Kind::Outlier,
                forward: false,
                given_state: None,
                history_pos: None,
                redacted_by: 0,
                gap_states,
            },
        })))
    }

    /// The depth of the oldest event of `room` held with a place (0 when none is).
    fn oldest_depth(&self, room: &super::event_store::Room) -> ServiceResult<u64> {
        let oldest = self.store.timeline(room.short, 0, u64::MAX, false, 1)?;
        let Some((_, short)) = oldest.first() else {
            return Ok(0);
        };
        Ok(super::graph::record(&self.store, *short)?.map_or(0, |r| r.depth))
    }

    /// The prev events of `pdu` without a state of ours that the writer can use: not
    /// held (nor earlier in the transaction), held only as outliers or out of band, or
    /// rejected before their state was known.
    fn unplaced_prevs(
        &self,
        pdu: &Value,
        in_batch: &HashSet<String>,
    ) -> ServiceResult<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for id in pdu::event_ids(pdu, "prev_events") {
            if in_batch.contains(id) || out.iter().any(|o| o == id) {
                continue;
            }
            let placed = match self.store.state.find_event(id)? {
                None => false,
                Some(short) => match super::graph::record(&self.store, short)?.map(|r| r.status) {
                    Some(EventStatus::Outlier | EventStatus::OutOfBand) => false,
                    Some(EventStatus::Rejected { .. }) => self.store.meta(short)?.state_before != 0,
                    _ => true,
                },
            };
            if !placed {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// Spec: server-server API, "Retrieving missing events": asks `source` for the events
    /// between our forward extremities and `event_id` (at most [`GAP_LIMIT`], within the
    /// budget) and receives them oldest first, as timeline events.
    async fn fill_gap(
        &self,
        origin: &str,
        (room_id, event_id): (&str, &str),
        source: &dyn MissingSource,
        budget: &mut Budget,
    ) -> ServiceResult<()> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(());
        };
        let limit = GAP_LIMIT.min(budget.0);
        let latest = [event_id.to_owned()];
        // Nothing from before the oldest event we hold with a place (as Synapse asks):
        // events from before our join, held as outliers, are not the gap, and taking them
        // in as live events would put the room's past at its end.
        let min_depth = self.oldest_depth(&room)?;
        let fetched = source
            .missing_events(
                room_id,
                (&room.record.extremities, &latest),
                (limit, min_depth),
            )
            .await;
        budget.0 = budget.0.saturating_sub(fetched.len().min(limit));
        let depth = |p: &Value| p.get("depth").and_then(Value::as_u64).unwrap_or(0);
        let mut fetched: Vec<Value> = fetched
            .into_iter()
            .take(limit)
            .filter(|p| p.get("room_id").and_then(Value::as_str) == Some(room_id))
            .filter(|p| depth(p) >= min_depth)
            .collect();
        fetched.sort_by_key(depth);
        for pdu in fetched {
            let (id, outcome) =
                Box::pin(self.receive_one(origin, pdu, Kind::Live, source, budget)).await?;
            tracing::debug!(%origin, event = ?id, ?outcome, "an event of a gap received");
        }
        Ok(())
    }

    /// Fetches `ids` through `source` (within the budget) and receives each, as outliers
    /// or as timeline events; events the source does not give stay missing.
    pub(super) async fn fetch_and_receive(
        &self,
        origin: &str,
        room_id: &str,
        ids: &[String],
        kind: Kind,
        source: &dyn MissingSource,
        budget: &mut Budget,
    ) -> ServiceResult<()> {
        if ids.is_empty() || budget.0 == 0 {
            return Ok(());
        }
        let wanted: Vec<String> = ids.iter().take(budget.0).cloned().collect();
        budget.0 -= wanted.len();
        let fetched = source.events(room_id, &wanted).await;
        let room = self.store.room(room_id)?;
        // Only what was asked for: an answer with another event (of the same room, validly
        // signed) is not taken in, and the wanted one stays missing.
        let asked_for = |pdu: &Value| match &room {
            Some(room) => crate::core::event_hashes::event_id(pdu, room.version)
                .is_ok_and(|id| wanted.contains(&id)),
            None => true,
        };
        // Oldest first: a fetched event's own missing prev events are fetched by its
        // receipt, so the order here only matters among siblings.
        let mut fetched: Vec<Value> = fetched
            .into_iter()
            .filter(|p| p.get("room_id").and_then(Value::as_str) == Some(room_id))
            .filter(|p| {
                let asked = asked_for(p);
                if !asked {
                    tracing::info!(%origin, "the source answered an event that was not asked for: not taken");
                }
                asked
            })
            .collect();
        fetched.sort_by_key(|p| p.get("depth").and_then(Value::as_u64).unwrap_or(0));
        // A prev event from before the oldest event we hold with a place (from before our
        // join) is not taken in as a live event at the timeline's end: held as an
        // outlier, the state after it is asked for instead.
        let oldest = match (kind, room) {
            (Kind::Live, Some(room)) => self.oldest_depth(&room)?,
            _ => 0,
        };
        for pdu in fetched {
            let depth = pdu.get("depth").and_then(Value::as_u64).unwrap_or(0);
            let kind = if kind == Kind::Live && depth < oldest {
                Kind::Outlier
            } else {
                kind
            };
            let (id, outcome) =
                Box::pin(self.receive_one(origin, pdu, kind, source, budget)).await?;
            tracing::debug!(%origin, event = ?id, ?outcome, "fetched event received");
        }
        Ok(())
    }
}

/// The room of a PDU: its `room_id`, or for the create event of a room version whose
/// room id is the create event's hash (v12), that hash.
pub(super) fn room_of(pdu: &Value) -> Option<String> {
    if let Some(room_id) = pdu.get("room_id").and_then(Value::as_str) {
        return Some(room_id.to_owned());
    }
    if pdu.get("type").and_then(Value::as_str) != Some("m.room.create") {
        return None;
    }
    let version = pdu
        .get("content")
        .and_then(|c| c.get("room_version"))
        .and_then(Value::as_str)
        .and_then(crate::core::RoomVersion::from_id)?;
    if !version.room_id_is_create_event_hash() {
        return None;
    }
    event_hashes::room_id_from_create_event(pdu, version).ok()
}

/// Servers whose keys one batch looks up at once at most.
const CONCURRENT_KEY_LOOKUPS: usize = 16;

/// The keys the senders' servers signed a batch's PDUs with, looked up at once (each
/// server once, [`CONCURRENT_KEY_LOOKUPS`] at a time) before the PDUs are checked one
/// by one, so that a transaction of events from many servers waits for the slowest
/// lookup, not for their sum. Only for PDUs of rooms we hold (`known_room`), and only
/// the sender's server: a PDU cannot make us ask any server it names in its signatures.
async fn prefetch_sender_keys(
    pdus: &[Value],
    source: &dyn MissingSource,
    known_room: impl Fn(&str) -> bool,
) {
    let mut wanted: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for pdu in pdus {
        let room = pdu.get("room_id").and_then(Value::as_str);
        if !room.is_some_and(&known_room) {
            continue;
        }
        let server = pdu
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| s.split_once(':'))
            .map(|(_, server)| server);
        let Some(server) = server else {
            continue;
        };
        let key_ids = pdu
            .get("signatures")
            .and_then(|s| s.get(server))
            .and_then(Value::as_object);
        if let Some(key_ids) = key_ids {
            let ids = wanted.entry(server.to_owned()).or_default();
            ids.extend(
                key_ids
                    .keys()
                    .filter(|k| k.starts_with("ed25519:"))
                    .cloned(),
            );
        }
    }
    let lookups = wanted.into_iter().map(|(server, ids)| async move {
        let ids: Vec<String> = ids.into_iter().collect();
        source.keys(&server, &ids).await;
    });
    futures_util::stream::iter(lookups)
        .buffer_unordered(CONCURRENT_KEY_LOOKUPS)
        .collect::<Vec<()>>()
        .await;
}

/// Whether two PDUs are the same event: the same reference hash (which a redacted copy
/// of an event shares with it).
pub(super) fn same_event(version: crate::core::RoomVersion, a: &Value, b: &Value) -> bool {
    match (
        event_hashes::reference_hash(a, version),
        event_hashes::reference_hash(b, version),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Check 2 with keys from `source`: the servers whose signatures verified (the sender's,
/// and a restricted join's authorising server when it signed), or why the event is
/// dropped.
pub(super) async fn verify_signatures(
    version: crate::core::RoomVersion,
    pdu: &Value,
    source: &dyn MissingSource,
) -> Result<Vec<String>, String> {
    let signed = event_hashes::redacted_signed_bytes(pdu, version)
        .map_err(|e| format!("not signable: {e:?}"))?;
    verify_signatures_over(version, (pdu, &signed), source).await
}

/// As [`verify_signatures`], with the PDU's
/// [`redacted_signed_bytes`](event_hashes::redacted_signed_bytes) already written.
pub(super) async fn verify_signatures_over(
    version: crate::core::RoomVersion,
    (pdu, signed): (&Value, &[u8]),
    source: &dyn MissingSource,
) -> Result<Vec<String>, String> {
    let mut servers = pdu_checks::required_signers(version, pdu);
    let authoriser = pdu
        .get("content")
        .and_then(|c| c.get("join_authorised_via_users_server"))
        .and_then(Value::as_str)
        .and_then(|u| u.split_once(':'))
        .map(|(_, server)| server.to_owned());
    let required = servers.len();
    if let Some(server) = authoriser.filter(|s| !servers.contains(s)) {
        servers.push(server);
    }
    let mut keys: HashMap<(String, String), KnownKey> = HashMap::new();
    for server in &servers {
        let key_ids: Vec<String> = pdu
            .get("signatures")
            .and_then(|s| s.get(server))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if key_ids.is_empty() {
            continue;
        }
        for (id, key) in source.keys(server, &key_ids).await {
            keys.insert((server.clone(), id), key);
        }
    }
    let lookup = |server: &str, id: &str| keys.get(&(server.to_owned(), id.to_owned())).copied();
    match pdu_checks::check_signatures_over(version, pdu, signed, &lookup) {
        SignatureCheck::Verified => {}
        SignatureCheck::NeedKeys(unknown) => {
            return Err(format!("no key found to check the signatures {unknown:?}"))
        }
        SignatureCheck::Invalid(reason) => return Err(reason),
    }
    let mut verified: Vec<String> = servers[..required].to_vec();
    for server in &servers[required..] {
        if pdu_checks::check_server_signature_over(version, pdu, signed, server, &lookup)
            == SignatureCheck::Verified
        {
            verified.push(server.clone());
        }
    }
    Ok(verified)
}

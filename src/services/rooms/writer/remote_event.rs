//! An event another server made, inside its room's writer: checks 4 to 6 of the receipt
//! checks, the state before it, and storing it with its status.
//!
//! Spec: server-server API, "Checks performed on receipt of a PDU" (checks 1 to 3 ran
//! before the event reached the writer, see [`crate::core::pdu_checks`]):
//! 4. the event passes the authorisation rules based on its auth events, otherwise it
//!    is **rejected** (also when an auth event is unknown to the room, belongs to another
//!    room or was itself rejected);
//! 5. it passes them based on the state before it (the state after its one prev event,
//!    or the resolution of the states after each of several), otherwise it is
//!    **rejected**;
//! 6. it passes them based on the current state of the room, otherwise it is
//!    **soft-failed** (stored with its state, neither an extremity nor shown to clients).
//!
//! An accepted event gets a place at the end of the timeline (a live event; history
//! fetched by backfill gets its place before the room's oldest event, in the writer's
//! `backfilled` module), joins the forward extremities by the set rule,
//! and the room's current state becomes the resolution of the states at the new
//! extremities (just the state after the event when it names every extremity). An
//! *outlier* (asked for as such: the auth chain of another event) passes check 4 and is
//! stored without state or timeline place. Events whose auth or prev events are not
//! stored answer [`PduOutcome::MissingEvents`] and are not stored: the caller fetches
//! what is missing outside the writer.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::head::{membership_of, EventFacts, RoomHead};
use super::local_event::CachedAuthState;
use super::persist::Edges;
use super::persist::{
    note_history_visibility, put_event, put_membership, put_timeline_place, queue_for, run_hooks,
};
use super::redactions::apply_redaction;
use super::relations::{adopt_pending_children, index_relation, relation_of};
use super::{WriterContext, Written};
use crate::core::auth_rules::{self, AuthContext};
use crate::core::pdu;
use crate::core::power_levels::PowerLevels;
use crate::core::RoomVersion;
use crate::services::error::ServiceResult;
use crate::services::records::encode;
use crate::services::rooms::auth_index;
use crate::services::rooms::event_store::{EventStore, StoredEvent};
use crate::services::rooms::graph::{self, EventStatus, GraphRecord};
use crate::services::rooms::records::EventMeta;
use crate::services::rooms::resolution;
use crate::services::rooms::server_visibility::{server_may_see, Member};
use crate::services::rooms::state_store::{ShortEventId, ShortStateHash, ShortStateKey, StateMap};
use crate::services::rooms::stream_state;
use crate::services::stream::StreamChange;
use crate::storage::Table;

/// A remote event that passed checks 1 to 3, for its room's writer.
#[derive(Debug, Clone)]
pub struct RemoteEvent {
    /// Its id (from its reference hash).
    pub event_id: String,
    /// The PDU as it is to be kept (redacted when its content hash did not match).
    pub pdu: Value,
    /// The servers whose signatures on it were verified.
    pub signed_by: Vec<String>,
    /// Held for its own sake (an auth event of another): no state, no timeline place.
    pub outlier: bool,
    /// Sent to us for the room (`send_join`, `send_leave`, `send_knock`): once accepted,
    /// we pass it on to the other servers in the room, as its sender's server cannot.
    pub forward: bool,
    /// The state before the event as another server told it (our own join through a
    /// resident server): used instead of the state after its prev events, which we do
    /// not have, and the event is not held against our current state (which it makes).
    pub given_state: Option<(ShortStateHash, StateMap)>,
    /// The state after prev events we cannot place (missing for good, held only as
    /// outliers, or rejected before their state was known), as the server that sent the
    /// event told it (`/state_ids`; see the
    /// rooms' `told_state` module): `(prev event id, snapshot)`, resolved with the states
    /// after the prev events we hold. Unlike `given_state`, the event is held against the
    /// current state (check 6) and joins the extremities as any other.
    pub gap_states: Vec<(String, ShortStateHash)>,
    /// A history position (reserved by the caller, below the room's oldest event): the
    /// event is of the room's past, fetched by backfill, and is placed there without
    /// changing the room's present (see the writer's `backfilled` module).
    pub history_pos: Option<u64>,
    /// The redaction it is stored under: the writer sets it (whatever the caller put
    /// here), and keeps the PDU redacted, when a redaction held before it applies (see
    /// `receive`).
    pub redacted_by: ShortEventId,
}

/// What became of a remote event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PduOutcome {
    /// In the timeline and, for a state event, taking part in the room's state.
    Accepted,
    /// Stored without state or timeline place (it was asked for as an outlier).
    Outlier,
    /// Stored with its state but not an extremity, and not shown to clients (check 6).
    SoftFailed(String),
    /// Stored as rejected so that it is not fetched again (check 4 or 5).
    Rejected(String),
    /// Already stored (a duplicate delivery); nothing changed.
    AlreadyKnown,
    /// Not stored: the event is malformed, badly signed or for a room we are not in
    /// (checks 1 and 2).
    Dropped(String),
    /// Not stored: these auth or prev events are not (or only as outliers, whose state is
    /// unknown) here; fetch them and offer the event again.
    MissingEvents(Vec<String>),
}

/// Checks 4 to 6 and storing, for `event` in the room of `head`.
pub(super) fn receive(
    ctx: &WriterContext,
    head: &mut RoomHead,
    mut event: RemoteEvent,
    written: &mut Written,
) -> ServiceResult<PduOutcome> {
    // The writer alone says whether the event is stored redacted (below).
    event.redacted_by = 0;
    let store = &ctx.store;
    let existing = store.state.find_event(&event.event_id)?;
    // The redaction that applies to the event, if any: it is checked in the form it
    // came (as every other server checks it), and stored redacted.
    let mut redacted_by = 0;
    if let Some(short) = existing {
        let status = graph::record(store, short)?.map(|r| r.status);
        // An outlier offered again as part of the timeline gets its place now; an event
        // kept out of band is checked now that it comes with the room.
        let again = match status {
            Some(EventStatus::OutOfBand) => true,
            Some(EventStatus::Outlier) => !event.outlier,
            _ => false,
        };
        if !again {
            return Ok(PduOutcome::AlreadyKnown);
        }
        // Written again, perhaps with other auth edges: a kept auth height is stale.
        let mut batch = store.db.batch();
        auth_index::forget_height(&mut batch, short);
        store.db.write_relaxed(batch)?;
        // Redacted while it was held without a place: it stays redacted.
        redacted_by = store.meta(short)?.redacted_by;
    }
    let mut waited = false;
    if redacted_by == 0 {
        let (applies, any) = waiting_redaction(ctx, head, &event)?;
        redacted_by = applies.unwrap_or(0);
        waited = any;
    }
    let event_id = waited.then(|| event.event_id.clone());
    let outcome = check_and_store(ctx, head, event, written, (existing, redacted_by))?;
    if let Some(short) = existing {
        // Held before (as an outlier, or out of band) and written again, by `accept`,
        // by `backfilled::place` or with another status: what the head knew of it
        // goes, to be read again.
        head.forget_facts(short);
    }
    let stored = matches!(
        outcome,
        PduOutcome::Accepted
            | PduOutcome::Outlier
            | PduOutcome::SoftFailed(_)
            | PduOutcome::Rejected(_)
    );
    if let (Some(event_id), true) = (event_id, stored) {
        super::redactions::stop_waiting(store, &event_id, head.short)?;
    }
    Ok(outcome)
}

/// The first redaction that came before the event, waits for it in this room and
/// applies to it (see [`super::redactions::wait_for_target`]), if any; and whether any
/// waits for it.
fn waiting_redaction(
    ctx: &WriterContext,
    head: &mut RoomHead,
    event: &RemoteEvent,
) -> ServiceResult<(Option<ShortEventId>, bool)> {
    let store = &ctx.store;
    let waiting = super::redactions::waiting_for(store, head, &event.event_id)?;
    let sender = event
        .pdu
        .get("sender")
        .and_then(Value::as_str)
        .unwrap_or("");
    let target = (sender, event.event_id.as_str());
    for &(redaction, power) in &waiting {
        if power || same_origin(head.version, store.event(redaction)?.pdu(), target) {
            return Ok((Some(redaction), true));
        }
    }
    Ok((None, !waiting.is_empty()))
}

/// The form `event` is stored in, once checked: redacted when a redaction applies to it
/// (`redacted_by`, see [`receive`]), so that its content reaches neither the search
/// index, pushes nor clients.
fn to_store(event: &mut RemoteEvent, version: RoomVersion, redacted_by: ShortEventId) {
    if redacted_by != 0 {
        event.pdu = crate::core::redaction::redact(&event.pdu, version);
    }
    event.redacted_by = redacted_by;
}

/// [`receive`] past the check for an event already held: checks 4 to 6 and storing.
fn check_and_store(
    ctx: &WriterContext,
    head: &mut RoomHead,
    mut event: RemoteEvent,
    written: &mut Written,
    (existing, redacted_by): (Option<ShortEventId>, ShortEventId),
) -> ServiceResult<PduOutcome> {
    let store = &ctx.store;
    if event.history_pos.is_some() && !super::backfilled::fits(ctx, head)? {
        let reason = "the room holds events from before the history space".to_owned();
        return Ok(PduOutcome::Dropped(reason));
    }
    let version = head.version;
    let signed_by = |server: &str| event.signed_by.iter().any(|s| s == server);
    let auth_ctx = AuthContext {
        version,
        signed_by: &signed_by,
    };

    // Check 4: the auth events, then the rules against them.
    let auth_ids: Vec<String> = pdu::event_ids(&event.pdu, "auth_events")
        .map(str::to_owned)
        .collect();
    let mut auth_events = Vec::with_capacity(auth_ids.len());
    let mut missing = Vec::new();
    for id in &auth_ids {
        match store.state.find_event(id)? {
            Some(short) if !graph::is_out_of_band(store, short)? => {
                auth_events.push(head.event(store, short)?)
            }
            _ => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        return Ok(PduOutcome::MissingEvents(missing));
    }
    let mut edges = Edges {
        prev: Vec::new(),
        auth: auth_events.iter().map(|e| e.short).collect(),
    };
    let check_4 = check_4_of(ctx, head, &event, &auth_events, &auth_ctx)?;
    if event.outlier {
        if let Err(reason) = check_4 {
            to_store(&mut event, version, redacted_by);
            return reject(ctx, head, (existing, &event), edges, 0, reason);
        }
        to_store(&mut event, version, redacted_by);
        let short = store_without_place(
            ctx,
            head,
            (existing, &event),
            edges,
            EventStatus::Outlier,
            (0, 0),
            store.db.batch(),
        )?;
        tracing::debug!(event = %event.event_id, short, "outlier stored");
        return Ok(PduOutcome::Outlier);
    }

    // The state before the event: after its prev events, or as given.
    let prev_ids: Vec<String> = pdu::event_ids(&event.pdu, "prev_events")
        .map(str::to_owned)
        .collect();
    let given = event.given_state.is_some();
    let mut gap = false;
    // Prev events soft-failed or rejected here with a state of ours (see
    // [`graph::prevs_before_failed`]), noted as their records are read.
    let mut failed_prevs: Vec<ShortEventId> = Vec::new();
    let mut batch = store.db.batch();
    // A resolved state before the event saved in this batch (not readable until it is
    // written): `(the first prev's snapshot, the changes from it)`, so that the state
    // after the event is saved on that written snapshot instead.
    let mut unwritten_before: Option<(ShortStateHash, Vec<StateChange>)> = None;
    // Taken, not copied (a room's whole state); `accept` only asks whether it was given.
    let (state_before, before) = if let Some((hash, map)) = event.given_state.take() {
        for id in &prev_ids {
            // Edges to this room's events, held with a place or as outliers (the state
            // the join took): one placed later is not a forward extremity.
            let Some(short) = store.state.find_event(id)? else {
                continue;
            };
            let facts = head.facts(store, short)?;
            let held = matches!(
                facts.status,
                Some(EventStatus::Accepted | EventStatus::SoftFailed | EventStatus::Outlier)
            );
            if held && facts.room == head.short {
                edges.prev.push(short);
            }
        }
        (hash, Before::Map(map))
    } else {
        let mut snapshots: Vec<ShortStateHash> = Vec::with_capacity(prev_ids.len());
        // A prev event without a state of ours takes the state after it as told, if any:
        // the event comes with a gap before it.
        let mut unplaced = |id: &String, snapshots: &mut Vec<ShortStateHash>| match event
            .gap_states
            .iter()
            .find(|(prev, _)| prev == id)
        {
            Some((_, told)) => {
                gap = true;
                snapshots.push(*told)
            }
            None => missing.push(id.clone()),
        };
        for id in &prev_ids {
            let Some(short) = store.state.find_event(id)? else {
                unplaced(id, &mut snapshots);
                continue;
            };
            let facts = head.facts(store, short)?;
            match facts.status {
                // Whatever it is held as (an out-of-band invite of another room, too).
                _ if facts.room != head.short => {
                    let reason = format!("prev event {id} belongs to another room");
                    // Judged without a state: no edges to what it claims to build on.
                    edges.prev.clear();
                    to_store(&mut event, version, redacted_by);
                    return reject(ctx, head, (existing, &event), edges, 0, reason);
                }
                Some(EventStatus::Outlier | EventStatus::OutOfBand) => unplaced(id, &mut snapshots),
                // The state after a rejected event is the state before it, when known
                // (an outlier rejected on its auth events has none).
                Some(EventStatus::Rejected { .. }) if facts.state_before == 0 => {
                    unplaced(id, &mut snapshots)
                }
                Some(EventStatus::Rejected { .. }) => {
                    failed_prevs.push(short);
                    snapshots.push(facts.state_before)
                }
                Some(EventStatus::SoftFailed) => {
                    if facts.state_before != 0 {
                        failed_prevs.push(short);
                    }
                    snapshots.push(facts.state_after)
                }
                _ => snapshots.push(facts.state_after),
            }
            edges.prev.push(short);
        }
        if !missing.is_empty() {
            return Ok(PduOutcome::MissingEvents(missing));
        }
        snapshots.sort_unstable();
        snapshots.dedup();
        // A live event on the room's newest events reads the head's state (no copy).
        match snapshots.as_slice() {
            [] => (0, Before::Map(StateMap::default())),
            [one] if *one == head.record.state => (*one, Before::Current),
            [one] => (*one, Before::Map(store.state.load(*one)?)),
            [first, ..] => {
                let resolved = resolution::resolve_snapshots(store, version, &snapshots)?;
                let base = store.state.load(*first)?;
                let changes = state_changes(&base, &resolved);
                let id = if changes.is_empty() {
                    *first
                } else {
                    let id = store.state.save(Some(*first), &changes, &mut batch)?;
                    unwritten_before = Some((*first, changes));
                    id
                };
                (id, Before::Map(resolved))
            }
        }
    };

    // Check 4's verdict, now that the state before the event is known: a rejected event
    // keeps it, so that events built on it are judged on the state after it (the state
    // before it).
    if let Err(reason) = check_4 {
        to_store(&mut event, version, redacted_by);
        return reject_with(
            ctx,
            head,
            (existing, &event),
            edges,
            batch,
            state_before,
            reason,
        );
    }

    // Check 5: the state before it.
    let before_shorts = auth_shorts_of(store, version, &event.pdu, before.map(head))?;
    let before_shorts = with_partial_members(head, before_shorts, &auth_events);
    let before_auth = auth_state_from(store, head, before_shorts)?;
    if let Err(e) = auth_rules::check(&auth_ctx, &event.pdu, &before_auth) {
        let reason = format!("not allowed by the state before it: {e}");
        to_store(&mut event, version, redacted_by);
        return reject_with(
            ctx,
            head,
            (existing, &event),
            edges,
            batch,
            state_before,
            reason,
        );
    }
    let short =
        existing.unwrap_or_else(|| store.state.intern_new_event(&event.event_id, &mut batch));
    let fresh = existing.is_none();
    let kind = event.pdu.get("type").and_then(Value::as_str).unwrap_or("");
    let state_key = event.pdu.get("state_key").and_then(Value::as_str);
    let own_key = match state_key {
        Some(key) => Some(store.state.state_key(kind, key)?),
        None => None,
    };
    let state_after = match (own_key, unwritten_before) {
        (Some(key), Some((first, mut changes))) => {
            changes.retain(|(k, _)| *k != key);
            changes.push((key, Some(short)));
            store.state.save(Some(first), &changes, &mut batch)?
        }
        (Some(key), None) => store.state.save(
            (state_before != 0).then_some(state_before),
            &[(key, Some(short))],
            &mut batch,
        )?,
        (None, _) => state_before,
    };

    if let Some(pos) = event.history_pos {
        let before_map = before.map(head);
        let history = super::backfilled::History {
            before: state_before,
            after: state_after,
            replaces: own_key
                .and_then(|k| before_map.get(&k).copied())
                .unwrap_or(0),
            restricted_before: history_restricted(store, before_map)?,
            redacted_by,
            // Read before the event is stored redacted: a redaction redacted in turn
            // keeps its own target only in rooms v11 and later.
            redaction: match pdu::redaction_target(&event.pdu, version) {
                Some(target) => {
                    let levels = levels_in(store, version, before_map)?;
                    let power = has_power_to_redact(&event.pdu, &levels)
                        && has_power_to_redact(
                            &event.pdu,
                            &levels_among(store, head, version, &auth_events)?,
                        );
                    Some((target.to_owned(), power))
                }
                None => None,
            },
            pos,
        };
        to_store(&mut event, version, redacted_by);
        let event_ref = (short, &event.pdu, event.event_id.as_str());
        return super::backfilled::place(ctx, head, event_ref, edges, batch, history);
    }

    // Check 6: the room's current state.
    if state_before != head.record.state && !given {
        let current_shorts = auth_shorts_of(store, version, &event.pdu, &head.state)?;
        let current_shorts = with_partial_members(head, current_shorts, &auth_events);
        let current_auth = auth_state_from(store, head, current_shorts)?;
        if let Err(e) = auth_rules::check(&auth_ctx, &event.pdu, &current_auth) {
            let reason = format!("not allowed by the room's current state: {e}");
            let graph_record = GraphRecord {
                depth: depth_of(&event.pdu),
                prev: edges.prev,
                auth: edges.auth,
                status: EventStatus::SoftFailed,
            };
            let meta = EventMeta {
                room: head.short,
                pos: 0,
                state_before,
                state_after,
                replaces: 0,
                redacted_by,
            };
            let state_key = auth_index::state_key_of(store, &event.pdu)?;
            graph::write(&mut batch, short, &graph_record, state_key);
            to_store(&mut event, version, redacted_by);
            put_event(&mut batch, (short, &event.event_id), &event.pdu, &meta);
            store.db.write_relaxed(batch)?;
            tracing::info!(server = %ctx.server_name, event = %event.event_id, room = %head.record.room_id, "soft-failed: {reason}");
            return Ok(PduOutcome::SoftFailed(reason));
        }
    }

    // Read before the event is stored redacted (a redaction redacted in turn keeps its
    // own target only in rooms v11 and later), with whether its sender may redact by
    // power: by its auth events, in the state before it and in the room's current state
    // (see [`redact_or_wait`]).
    let redacts = match pdu::redaction_target(&event.pdu, version) {
        Some(target) => {
            let before_levels = levels_in(store, version, before.map(head))?;
            let power = has_power_to_redact(&event.pdu, &before_levels)
                && has_power_to_redact(&event.pdu, &*head.power_levels(store)?)
                && has_power_to_redact(
                    &event.pdu,
                    &levels_among(store, head, version, &auth_events)?,
                );
            Some((target.to_owned(), power))
        }
        None => None,
    };
    let states = AcceptedStates {
        before: state_before,
        after: state_after,
        before_map: before,
        own_key,
        given,
        gap,
        redacts,
        failed_prevs,
        fresh,
    };
    to_store(&mut event, version, redacted_by);
    accept(ctx, head, (short, &event), edges, batch, states, written)?;
    Ok(PduOutcome::Accepted)
}

/// The power levels `state` sets.
fn levels_in(
    store: &EventStore,
    version: RoomVersion,
    state: &StateMap,
) -> ServiceResult<PowerLevels> {
    let event_of = |kind: &str| -> ServiceResult<Option<StoredEvent>> {
        let Some(key) = store.state.find_state_key(kind, "")? else {
            return Ok(None);
        };
        state.get(&key).map(|&short| store.event(short)).transpose()
    };
    let create = event_of("m.room.create")?;
    let levels = event_of("m.room.power_levels")?;
    Ok(PowerLevels::new(
        version,
        create.as_ref().map(|e| e.pdu()),
        levels.as_ref().map(|e| e.pdu()),
    ))
}

/// The power levels among an event's auth events (the create event from the room's
/// state in rooms v12, where it is not among them).
fn levels_among(
    store: &EventStore,
    head: &mut RoomHead,
    version: RoomVersion,
    auth_events: &[Arc<StoredEvent>],
) -> ServiceResult<PowerLevels> {
    let of = |kind: &str| {
        auth_events
            .iter()
            .find(|e| e.kind() == kind && e.state_key() == Some(""))
            .cloned()
    };
    let create = match of("m.room.create") {
        Some(create) => Some(create),
        None => head.state_event(store, "m.room.create", "")?,
    };
    let levels = of("m.room.power_levels");
    Ok(PowerLevels::new(
        version,
        create.as_ref().map(|e| e.pdu()),
        levels.as_ref().map(|e| e.pdu()),
    ))
}

/// Whether `state` holds a history visibility of `joined` or `invited`.
fn history_restricted(store: &EventStore, state: &StateMap) -> ServiceResult<bool> {
    let Some(key) = store
        .state
        .find_state_key("m.room.history_visibility", "")?
    else {
        return Ok(false);
    };
    let Some(&short) = state.get(&key) else {
        return Ok(false);
    };
    let event = store.event(short)?;
    Ok(matches!(
        event
            .content()
            .get("history_visibility")
            .and_then(Value::as_str),
        Some("invited" | "joined")
    ))
}

/// Check 4: the event's auth events are of its room and not rejected, they are the ones
/// its type needs, and the auth rules allow it against them; `Err(reason)` otherwise.
fn check_4_of(
    ctx: &WriterContext,
    head: &mut RoomHead,
    event: &RemoteEvent,
    auth_events: &[Arc<StoredEvent>],
    auth_ctx: &AuthContext<'_>,
) -> ServiceResult<Result<(), String>> {
    let store = &ctx.store;
    let mut auth_state = CachedAuthState::default();
    for auth in auth_events {
        if auth.meta.room != head.short {
            return Ok(Err(format!(
                "auth event {} belongs to another room",
                auth.event_id
            )));
        }
        if let Some(EventStatus::Rejected { .. }) = head.facts(store, auth.short)?.status {
            return Ok(Err(format!("auth event {} was rejected", auth.event_id)));
        }
        auth_state.insert(state_pair(auth.pdu()), Arc::clone(auth));
    }
    let auth_pdus: Vec<&Value> = auth_events.iter().map(|e| e.pdu()).collect();
    if let Err(e) = auth_rules::check_auth_events(auth_ctx.version, &event.pdu, &auth_pdus) {
        return Ok(Err(e.0));
    }
    if auth_ctx.version.room_id_is_create_event_hash() {
        // From v12 the create event is the room id's, not among the auth events.
        if let Some(create) = head.state_event(store, "m.room.create", "")? {
            auth_state.insert(state_pair(create.pdu()), create);
        }
    }
    if let Err(e) = auth_rules::check(auth_ctx, &event.pdu, &auth_state) {
        return Ok(Err(format!("not allowed by its auth events: {e}")));
    }
    Ok(Ok(()))
}

/// `(type, state_key)` of an event (`""` for a missing key).
fn state_pair(pdu: &Value) -> (String, String) {
    let field = |k: &str| pdu.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    (field("type"), field("state_key"))
}

fn depth_of(pdu: &Value) -> u64 {
    pdu.get("depth").and_then(Value::as_u64).unwrap_or(0)
}

/// The state before an event: the room's current state (the head's), or another.
enum Before {
    Current,
    Map(StateMap),
}

impl Before {
    fn map<'a>(&'a self, head: &'a RoomHead) -> &'a StateMap {
        match self {
            Before::Current => &head.state,
            Before::Map(map) => map,
        }
    }
}

/// What the auth rules read of `state` for `event`: the events its auth event selection
/// names, and the create event, as `((type, state_key), event)`.
fn auth_shorts_of(
    store: &EventStore,
    version: RoomVersion,
    event: &Value,
    state: &StateMap,
) -> ServiceResult<Vec<((String, String), ShortEventId)>> {
    let mut keys = auth_rules::auth_event_keys(version, event);
    keys.push(("m.room.create".into(), String::new()));
    let mut out = Vec::with_capacity(keys.len());
    for (kind, key) in keys {
        let Some(short_key) = store.state.find_state_key(&kind, &key)? else {
            continue;
        };
        if let Some(&short) = state.get(&short_key) {
            out.push(((kind, key), short));
        }
    }
    Ok(out)
}

/// While the room's state is partial (our join with `omit_members`), the member events
/// the auth rules need and the state lacks are its members we do not know yet: they are
/// taken from the event's auth events, which check 4 accepted. Once the member list is
/// in, the event is checked again against the whole state (the writer's
/// `partial_state` module).
fn with_partial_members(
    head: &RoomHead,
    mut shorts: Vec<((String, String), ShortEventId)>,
    auth_events: &[Arc<StoredEvent>],
) -> Vec<((String, String), ShortEventId)> {
    if head.record.partial_state.is_none() {
        return shorts;
    }
    for event in auth_events.iter().filter(|e| e.kind() == "m.room.member") {
        let Some(user) = event.state_key() else {
            continue;
        };
        let known = shorts
            .iter()
            .any(|((kind, key), _)| kind == "m.room.member" && key == user);
        if !known {
            shorts.push((("m.room.member".to_owned(), user.to_owned()), event.short));
        }
    }
    shorts
}

/// The auth state of [`auth_shorts_of`], parsed events from the head's cache.
fn auth_state_from(
    store: &EventStore,
    head: &mut RoomHead,
    shorts: Vec<((String, String), ShortEventId)>,
) -> ServiceResult<CachedAuthState> {
    let mut out = CachedAuthState::default();
    for (pair, short) in shorts {
        out.insert(pair, head.event(store, short)?);
    }
    Ok(out)
}

/// One key of a state set to an event or removed.
pub(super) type StateChange = (ShortStateKey, Option<ShortEventId>);

/// The changes that turn `from` into `to`.
pub(super) fn state_changes(from: &StateMap, to: &StateMap) -> Vec<StateChange> {
    let mut changes: Vec<_> = to
        .iter()
        .filter(|(k, e)| from.get(k) != Some(e))
        .map(|(k, e)| (*k, Some(*e)))
        .collect();
    changes.extend(
        from.keys()
            .filter(|k| !to.contains_key(k))
            .map(|k| (*k, None)),
    );
    changes.sort_unstable();
    changes
}

/// Stores a rejected event (so that it is not fetched again) with the state before it,
/// when known.
fn reject(
    ctx: &WriterContext,
    head: &RoomHead,
    event: (Option<ShortEventId>, &RemoteEvent),
    edges: Edges,
    state_before: ShortStateHash,
    reason: String,
) -> ServiceResult<PduOutcome> {
    let batch = ctx.store.db.batch();
    reject_with(ctx, head, event, edges, batch, state_before, reason)
}

fn reject_with(
    ctx: &WriterContext,
    head: &RoomHead,
    (existing, event): (Option<ShortEventId>, &RemoteEvent),
    edges: Edges,
    batch: crate::storage::Batch<'_>,
    state_before: ShortStateHash,
    reason: String,
) -> ServiceResult<PduOutcome> {
    tracing::info!(event = %event.event_id, room = %head.record.room_id, "rejected: {reason}");
    let status = EventStatus::Rejected {
        reason: reason.clone(),
    };
    store_without_place(
        ctx,
        head,
        (existing, event),
        edges,
        status,
        (state_before, state_before),
        batch,
    )?;
    Ok(PduOutcome::Rejected(reason))
}

/// Stores an event with a status but no timeline place, in `batch` (with what the caller
/// already put there); answers its short id.
fn store_without_place(
    ctx: &WriterContext,
    head: &RoomHead,
    (existing, event): (Option<ShortEventId>, &RemoteEvent),
    edges: Edges,
    status: EventStatus,
    states: (ShortStateHash, ShortStateHash),
    mut batch: crate::storage::Batch<'_>,
) -> ServiceResult<ShortEventId> {
    let short = existing.unwrap_or_else(|| {
        ctx.store
            .state
            .intern_new_event(&event.event_id, &mut batch)
    });
    let state_key = auth_index::state_key_of(&ctx.store, &event.pdu)?;
    put_without_place(
        &mut batch,
        head,
        (short, event),
        edges,
        (status, state_key),
        states,
    );
    ctx.store.db.write_relaxed(batch)?;
    Ok(short)
}

/// The rows of an event kept without a timeline place (position 0): outliers, rejected
/// and soft-failed events. A rejected event names no children: it never hides its prev
/// events from the extremities. `state_key` is the event's short state key, if it is a
/// state event (for the auth index).
pub(super) fn put_without_place(
    batch: &mut crate::storage::Batch<'_>,
    head: &RoomHead,
    (short, event): (ShortEventId, &RemoteEvent),
    edges: Edges,
    (status, state_key): (EventStatus, Option<ShortStateKey>),
    (state_before, state_after): (ShortStateHash, ShortStateHash),
) {
    let graph_record = GraphRecord {
        depth: depth_of(&event.pdu),
        prev: edges.prev,
        auth: edges.auth,
        status,
    };
    let meta = EventMeta {
        room: head.short,
        pos: 0,
        state_before,
        state_after,
        replaces: 0,
        redacted_by: event.redacted_by,
    };
    if matches!(
        graph_record.status,
        EventStatus::Rejected { .. } | EventStatus::Outlier | EventStatus::OutOfBand
    ) {
        // No child edges: only events with state and a place hide their prev events.
        auth_index::note_children(batch, short, &graph_record.auth, state_key);
        batch.put(
            Table::ShorteventidGraph,
            short.to_be_bytes(),
            encode(&graph_record),
        );
    } else {
        graph::write(batch, short, &graph_record, state_key);
    }
    put_event(batch, (short, &event.event_id), &event.pdu, &meta);
}

/// The states of an event being accepted.
struct AcceptedStates {
    /// The snapshot before it.
    before: ShortStateHash,
    /// The snapshot after it (written in its batch).
    after: ShortStateHash,
    /// The state before it, whole.
    before_map: Before,
    /// Its state key, for a state event.
    own_key: Option<ShortStateKey>,
    /// The state before it was given (our join through another server): the room
    /// starts afresh from it.
    given: bool,
    /// Some of its prev events are not held: their state was told.
    gap: bool,
    /// For a redaction, the event it redacts, and whether its sender may redact by power.
    redacts: Option<(String, bool)>,
    /// Its prev events soft-failed or rejected here with a state of ours.
    failed_prevs: Vec<ShortEventId>,
    /// Its short id is new: no event held names it as a prev event by short id.
    fresh: bool,
}

/// Stores an accepted event: its timeline place, the forward extremities, the room's new
/// current state and what follows from it (membership records, counts), relations,
/// redactions and the new-event hooks, in one batch.
fn accept(
    ctx: &WriterContext,
    head: &mut RoomHead,
    (short, event): (ShortEventId, &RemoteEvent),
    edges: Edges,
    mut batch: crate::storage::Batch<'_>,
    states: AcceptedStates,
    written: &mut Written,
) -> ServiceResult<()> {
    let AcceptedStates {
        before: state_before,
        after: state_after,
        before_map,
        own_key,
        given,
        gap,
        redacts,
        failed_prevs,
        fresh,
    } = states;
    let store = &ctx.store;
    let pdu = &event.pdu;
    let event_id = &event.event_id;
    let prev_ids: Vec<String> = pdu::event_ids(pdu, "prev_events")
        .map(str::to_owned)
        .collect();
    let has_children =
        graph::has_accepted_child(store, &mut batch, (short, event_id), head.short, fresh)?;
    // Our join through another server starts the room afresh: what we held before (a
    // room we had left) is not built on.
    let mut extremities = if given {
        vec![event_id.clone()]
    } else {
        let mut next =
            graph::next_extremities(&head.record.extremities, &prev_ids, event_id, has_children);
        let dangling = graph::prevs_before_failed(store, failed_prevs)?;
        if next.iter().any(|e| !dangling.contains(e)) {
            next.retain(|e| !dangling.contains(e));
        }
        next
    };
    let mut left_out = false;
    if extremities.len() > graph::MAX_EXTREMITIES {
        let before = head.record.extremities.len();
        extremities = graph::cap_extremities(extremities, before, event_id);
        if !extremities.contains(event_id) {
            left_out = true;
            tracing::info!(room = %head.record.room_id, event = %event_id, "the room is at its cap of forward extremities: a new fork does not become one");
        }
    }
    if extremities.is_empty() {
        // Never a room without extremities (its next local event would have no prev
        // events): the event itself stands.
        extremities.push(event_id.clone());
    }

    // The room's current state: the resolution of the states at the extremities.
    let (current, changes) = if left_out {
        // A fork left out at the cap takes no part in the room's state either (until an
        // event built on it merges it).
        (head.record.state, Vec::new())
    } else if extremities == [event_id.clone()] && state_before == head.record.state {
        let changes = own_key.map(|k| vec![(k, Some(short))]).unwrap_or_default();
        (state_after, changes)
    } else {
        let mut after_map = match before_map {
            Before::Current => head.state.clone(),
            Before::Map(map) => map,
        };
        if let Some(key) = own_key {
            after_map.insert(key, short);
        }
        // The other extremities' states; the room's current one is the head's, not read.
        let mut loaded = Vec::new();
        let mut holds_current = false;
        let mut seen = vec![state_after];
        for id in extremities.iter().filter(|id| *id != event_id) {
            if let Some(other) = store.state.find_event(id)? {
                let snapshot = store.meta(other)?.state_after;
                if !seen.contains(&snapshot) {
                    seen.push(snapshot);
                    if snapshot == head.record.state {
                        holds_current = true;
                    } else {
                        loaded.push(store.state.load(snapshot)?);
                    }
                }
            }
        }
        let resolved = if seen.len() == 1 {
            after_map
        } else {
            let mut maps = vec![&after_map];
            if holds_current {
                maps.push(&head.state);
            }
            maps.extend(&loaded);
            let unwritten = (short, event_id.as_str(), pdu);
            resolution::resolve_maps(store, head.version, &maps, Some(unwritten))?
        };
        let changes = state_changes(&head.state, &resolved);
        let current = if extremities == [event_id.clone()] {
            state_after
        } else if changes.is_empty() {
            head.record.state
        } else {
            store
                .state
                .save(Some(head.record.state), &changes, &mut batch)?
        };
        (current, changes)
    };

    let ticket = store.stream.allocate()?;
    let pos = ticket.pos();
    let graph_record = GraphRecord {
        depth: depth_of(pdu),
        prev: edges.prev,
        auth: edges.auth,
        status: EventStatus::Accepted,
    };
    graph::write(&mut batch, short, &graph_record, own_key);
    graph::note_unknown_prevs(store, &mut batch, &prev_ids, short)?;
    stream_state::note_current(&mut batch, short, current, state_after);
    if gap {
        stream_state::note_gap(&mut batch, head.short, pos);
    }
    let replaces = own_key
        .and_then(|k| head.state.get(&k).copied())
        .unwrap_or(0);
    let meta = EventMeta {
        room: head.short,
        pos,
        state_before,
        state_after,
        replaces,
        redacted_by: event.redacted_by,
    };
    put_event(&mut batch, (short, event_id), pdu, &meta);
    put_timeline_place(&mut batch, (short, event_id), pdu, &meta);

    let mut record = head.record.clone();
    let mut member = None;
    let mut member_changes: Vec<(String, Option<Value>)> = Vec::new();
    let mut replaced: Vec<Replaced> = Vec::new();
    for (key, value) in &changes {
        let (kind, state_key) = store.state.state_key_of(*key)?;
        let stored;
        let (changed_pdu, changed_id) = match value {
            Some(e) if *e == short => (Some(pdu), event_id.as_str()),
            Some(e) => {
                stored = store.event(*e)?;
                (Some(stored.pdu()), stored.event_id.as_str())
            }
            None => (None, ""),
        };
        if let Some(changed_pdu) = changed_pdu {
            note_history_visibility(&mut record, changed_pdu);
        }
        if kind != "m.room.member" {
            continue;
        }
        if value != &Some(short) {
            replaced.push((state_key.clone(), head.state.get(key).copied(), *value));
        }
        member_changes.push((state_key.clone(), changed_pdu.cloned()));
        // A member event gone from the state (a state reset) leaves the user out.
        let membership = changed_pdu.map_or("leave", membership_of).to_owned();
        put_membership(
            ctx,
            &mut batch,
            &mut record,
            (&state_key, &membership, changed_id),
            pos,
        )?;
        if !given {
            // (Our own join through another server brings the whole state before it,
            // judged against the members of before: not a leave.)
            super::partial_state::end_if_last_left(
                store,
                head,
                (&mut record, &ctx.server_name),
                (&state_key, &membership),
            )?;
        }
        if value == &Some(short) {
            member = Some((state_key, membership));
        }
    }

    if let Some((rel_type, parent_id)) = relation_of(pdu) {
        let child = crate::services::rooms::aggregates::Child {
            short,
            event_id,
            pdu,
        };
        index_relation(store, head, &mut batch, rel_type, parent_id, &child, pos)?;
    }
    adopt_pending_children(store, head, &mut batch, (short, event_id, pdu))?;
    let mut redacted = None;
    if let Some((target, power)) = &redacts {
        redacted = redact_or_wait(ctx, head, &mut batch, (short, pdu), target, *power)?;
    }

    record.extremities = extremities;
    record.depth = record.depth.max(graph_record.depth);
    record.state = current;
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
        event.redacted_by == 0,
        &mut batch,
    )?;
    let mut destinations = BTreeSet::new();
    if event.forward {
        // The servers in the room before the event, but its own (the event is a
        // membership of its sender, so the servers after it are those, or those and its
        // own).
        destinations = head.remote_servers(store, &ctx.server_name)?.clone();
        let sender_server = pdu
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| s.split_once(':'))
            .map(|(_, server)| server);
        destinations.retain(|d| Some(d.as_str()) != sender_server);
        queue_for(&mut batch, &destinations, pos, event_id);
    }
    // Servers whose members this event brought into our state (a state reset on our
    // side undone, or a server that joined through another one, new to us) may have
    // missed what we sent while we did not count them: our own events at the room's
    // forward extremities go to them, and they fetch the rest.
    let returning = if given {
        BTreeSet::new()
    } else {
        returning_servers(head, store, &ctx.server_name, &member_changes)?
    };
    // Servers this resolution put out of the room without an event about their members
    // (a state reset) get the room's forward extremities they may see, whoever made them,
    // and may read what we hold now for a while: the other branch that put them out is in
    // it, and nothing else would let them compute the same state.
    let mut reset = if given || head.record.partial_state.is_some() {
        BTreeSet::new()
    } else {
        // A best effort: a read failing here leaves the event's write alone.
        reset_servers(head, store, &ctx.server_name, (&member_changes, &replaced))
            .unwrap_or_else(|e| {
                tracing::warn!(room = %head.record.room_id, error = %e.message, "could not tell which servers a resolution put out");
                BTreeSet::new()
            })
    };
    if !reset.is_empty() && !ctx.reset_servers.has_room() {
        reset.clear();
    }
    if !reset.is_empty() {
        let mut sent = Vec::new();
        for id in &record.extremities {
            // (The written event's id is not in the tables until its batch is.)
            let (extremity_pos, before) = if id == event_id {
                (pos, state_before)
            } else {
                match store.state.find_event(id)? {
                    Some(extremity) => {
                        let meta = store.event(extremity)?.meta;
                        (meta.pos, meta.state_before)
                    }
                    None => continue,
                }
            };
            if extremity_pos == 0 {
                continue;
            }
            let mut may_see = BTreeSet::new();
            for server in &reset {
                if server_may_see(store, server, before, Member::Yes)? {
                    may_see.insert(server.clone());
                }
            }
            queue_for(&mut batch, &may_see, extremity_pos, id);
            sent.push((may_see, id.as_str()));
        }
        tracing::info!(server = %ctx.server_name, room = %head.record.room_id, event = %event_id, servers = ?reset, events = ?sent, "servers a state resolution put out of the room get its latest events");
    }
    if !returning.is_empty() {
        for id in &record.extremities {
            let Some(own) = store.state.find_event(id)? else {
                continue;
            };
            let own_event = store.event(own)?;
            let ours = own_event
                .sender()
                .split_once(':')
                .is_some_and(|(_, server)| server == ctx.server_name);
            if ours && own_event.meta.pos != 0 {
                queue_for(&mut batch, &returning, own_event.meta.pos, id);
            }
        }
        tracing::info!(room = %head.record.room_id, servers = ?returning, "servers back in the room's state get our latest events");
        destinations.extend(returning);
    }
    store.db.write_relaxed(batch)?;
    store.state.remember_written_event(event_id, short);
    head.wrote_facts(short, EventFacts::accepted(&meta));
    let highest_short = store.state.highest_short();
    for server in &reset {
        ctx.reset_servers
            .grant(&head.record.room_id, server, (pos, highest_short));
    }
    destinations.extend(reset);
    written.destinations.extend(destinations);
    written.changes.push((
        ticket,
        StreamChange::RoomEvent {
            room: head.short,
            member,
        },
    ));

    head.record = record;
    head.extremities = None;
    for (key, value) in changes {
        let old = match value {
            Some(e) => head.state.insert(key, e),
            None => head.state.remove(&key),
        };
        if let Some(old) = old {
            head.cache.remove(&old);
        }
    }
    for (user, pdu) in &member_changes {
        head.member_changed(user, pdu.as_ref(), &ctx.server_name);
    }
    Ok(())
}

/// The other servers that have a joined member in the room's state after
/// `member_changes` and had none before: brought back by a resolution, or new to us. The
/// sender's server counts too: a server that joined through another resident server
/// holds the state that server gave it, not our events it had not received yet (ours
/// went to the servers we knew in the room), and nothing else would tell it of them
/// until our next event.
fn returning_servers(
    head: &mut RoomHead,
    store: &EventStore,
    server_name: &str,
    member_changes: &[(String, Option<Value>)],
) -> ServiceResult<BTreeSet<String>> {
    let mut joined: BTreeSet<String> = BTreeSet::new();
    for (user, changed) in member_changes {
        let Some((_, server)) = user.split_once(':') else {
            continue;
        };
        if server == server_name {
            continue;
        }
        if changed.as_ref().is_some_and(|p| membership_of(p) == "join") {
            joined.insert(server.to_owned());
        }
    }
    if joined.is_empty() {
        return Ok(joined);
    }
    // The head still holds the state before the event.
    let before = head.remote_servers(store, server_name)?;
    joined.retain(|s| !before.contains(s));
    Ok(joined)
}

/// The other servers all of whose joined members the state after `member_changes` no
/// longer holds as joined, when no event about them did it: each one's member event was
/// replaced by the resolution (`replaced`: user, before, after; not by the written event,
/// such as a leave or a kick the server is sent anyway) with an older one of the same
/// user, or with none ([`rolled_back`]), never a ban (a server kept out on purpose, even by
/// an old ban the resolution brought back); and no member of the server newly joined.
/// See [`reset_out`](crate::services::rooms::reset_out).
fn reset_servers(
    head: &mut RoomHead,
    store: &EventStore,
    server_name: &str,
    (member_changes, replaced): (&[(String, Option<Value>)], &[Replaced]),
) -> ServiceResult<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    if replaced.is_empty() {
        return Ok(out);
    }
    head.remote_servers(store, server_name)?;
    let Some(joined) = head.remote_servers.as_ref() else {
        return Ok(out);
    };
    let mut lost: HashMap<&str, usize> = HashMap::new();
    let mut kept: HashSet<&str> = HashSet::new();
    for (user, changed) in member_changes {
        let Some((_, server)) = user.split_once(':') else {
            continue;
        };
        if server == server_name {
            continue;
        }
        let now = changed.as_ref().map_or("leave", |p| membership_of(p));
        if now == "join" {
            kept.insert(server);
            continue;
        }
        if !joined.users.contains(user) {
            continue;
        }
        let rollback = match replaced.iter().find(|(u, _, _)| u == user) {
            Some((_, Some(before), after)) => now != "ban" && rolled_back(store, *before, *after)?,
            _ => false,
        };
        if !rollback {
            kept.insert(server);
            continue;
        }
        *lost.entry(server).or_default() += 1;
    }
    for (server, count) in lost {
        if !kept.contains(server) && joined.per_server.get(server) == Some(&count) {
            out.insert(server.to_owned());
        }
    }
    Ok(out)
}

/// A member event the resolution (not the written event) replaced: the user, the event
/// before, the one after (`None`: none).
type Replaced = (String, Option<ShortEventId>, Option<ShortEventId>);

/// Member events of one user followed back at most, from the one replaced.
const ROLLBACK_WALK: usize = 16;

/// Whether `after` (`None`: no member event) is the user's state from before `before`:
/// none, or one of the user's earlier member events, which `before` reaches through
/// the user's member events in its auth events (each names the one it followed).
fn rolled_back(
    store: &EventStore,
    before: ShortEventId,
    after: Option<ShortEventId>,
) -> ServiceResult<bool> {
    let Some(after) = after else {
        return Ok(true);
    };
    let user = store.event(before)?.state_key().map(str::to_owned);
    let mut current = before;
    for _ in 0..ROLLBACK_WALK {
        let Some(record) = graph::record(store, current)? else {
            return Ok(false);
        };
        if record.auth.contains(&after) {
            return Ok(true);
        }
        let mut previous = None;
        for auth in record.auth {
            let event = store.event(auth)?;
            if event.kind() == "m.room.member" && event.state_key().map(str::to_owned) == user {
                previous = Some(auth);
                break;
            }
        }
        match previous {
            Some(p) => current = p,
            None => return Ok(false),
        }
    }
    Ok(false)
}

/// Applies the redaction `short` (`pdu`) to the event `target` if it may, answering
/// the target as it was; or, when the target is not held yet, keeps it waiting for it
/// (see the writer's `redactions`).
///
/// Spec: room versions 3 and later, "Handling redactions": a redaction takes effect when
/// its sender is of the same server as the redacted event's sender, or has the power to
/// redact; otherwise it is kept without effect. In rooms v1 and v2 the auth rules judged
/// it (rule 11); their other way, both event ids naming one server, also counts here.
/// `power`: whether the sender has the power to redact, as the caller judged it. The spec
/// names no state to judge it by; like Synapse, which rechecks a redaction against each
/// state it checks the event against, a redaction needs the power by the power levels
/// among its auth events and in the state before it (where its server made it), and a
/// live one also in the room's current state when it comes (so neither a fork from
/// before a promotion nor one from before a demotion gives it).
pub(super) fn redact_or_wait(
    ctx: &WriterContext,
    head: &mut RoomHead,
    batch: &mut crate::storage::Batch<'_>,
    (short, pdu): (ShortEventId, &Value),
    target: &str,
    power: bool,
) -> ServiceResult<Option<StoredEvent>> {
    let store = &ctx.store;
    // In rooms v1 and v2 the sender picks the event id: a redaction naming itself
    // redacts nothing (its held outlier copy is no target, nor is it waited for). From
    // v3 the id is the event's hash, and an `event_id` field it carries means nothing.
    if !head.version.event_ids_are_reference_hashes()
        && pdu.get("event_id").and_then(Value::as_str) == Some(target)
    {
        return Ok(None);
    }
    let Some(held) = store.event_by_id(target)? else {
        super::redactions::wait_for_target(store, head, batch, target, (short, power))?;
        return Ok(None);
    };
    if power || same_origin(head.version, pdu, (held.sender(), &held.event_id)) {
        return apply_redaction(store, head, batch, target, short);
    }
    Ok(None)
}

/// Whether a redaction and the event it redacts come from one server (see
/// [`redact_or_wait`]): their senders', or in rooms v1 and v2 their event ids'.
pub(super) fn same_origin(
    version: RoomVersion,
    redaction: &Value,
    (target_sender, target_id): (&str, &str),
) -> bool {
    let sender = redaction
        .get("sender")
        .and_then(Value::as_str)
        .unwrap_or("");
    let server_of = |user: &str| user.split_once(':').map(|(_, s)| s.to_owned());
    if server_of(sender).is_some() && server_of(sender) == server_of(target_sender) {
        return true;
    }
    // Rooms v1 and v2: auth rule 11 allowed it, by power or by both event ids naming
    // the same server; the latter holds here too.
    if !version.event_ids_are_reference_hashes() {
        let own = redaction.get("event_id").and_then(Value::as_str);
        let own_server = own.and_then(crate::core::event_hashes::event_id_server);
        if own_server.is_some()
            && own_server == crate::core::event_hashes::event_id_server(target_id)
        {
            return true;
        }
    }
    false
}

/// Whether the redaction's sender has the power to redact others' events by `levels`.
fn has_power_to_redact(redaction: &Value, levels: &PowerLevels) -> bool {
    let sender = redaction
        .get("sender")
        .and_then(Value::as_str)
        .unwrap_or("");
    levels.user(sender) >= i128::from(levels.redact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::rooms::event_store::open_temp_store;
    use serde_json::json;

    /// Stores a member event of `user` naming `auth` as its auth events; its short id.
    fn member(store: &EventStore, id: &str, user: &str, auth: &[ShortEventId]) -> ShortEventId {
        let mut batch = store.db.batch();
        let short = store.state.intern_new_event(id, &mut batch);
        let pdu = json!({"type": "m.room.member", "state_key": user, "sender": user,
                         "content": {"membership": "join"}});
        let meta = EventMeta {
            room: 1,
            pos: 0,
            state_before: 0,
            state_after: 0,
            replaces: 0,
            redacted_by: 0,
        };
        put_event(&mut batch, (short, id), &pdu, &meta);
        let record = GraphRecord {
            depth: 1,
            prev: Vec::new(),
            auth: auth.to_vec(),
            status: EventStatus::Accepted,
        };
        graph::write(&mut batch, short, &record, None);
        store.db.write_relaxed(batch).unwrap();
        short
    }

    #[test]
    fn a_member_event_replaced_by_an_earlier_one_of_the_user_or_by_none_is_rolled_back() {
        let (_dir, _db, store) = open_temp_store();
        let carol = "@carol:c";
        let other = member(&store, "$other", "@alice:a", &[]);
        let first = member(&store, "$first", carol, &[other]);
        let left = member(&store, "$left", carol, &[other, first]);
        let again = member(&store, "$again", carol, &[other, left]);
        // Back to her first join, two member events before, or to none at all.
        assert!(rolled_back(&store, again, Some(first)).unwrap());
        assert!(rolled_back(&store, again, Some(left)).unwrap());
        assert!(rolled_back(&store, again, None).unwrap());
        // An event of another branch (a kick or ban that did not follow her join) is an
        // event about her, not a rollback.
        let kick = member(&store, "$kick", carol, &[other, first]);
        assert!(!rolled_back(&store, again, Some(kick)).unwrap());
    }
}

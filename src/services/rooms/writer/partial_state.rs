//! A room joined with a partial state (MSC3706, spec v1.6 `send_join?omit_members=true`),
//! inside its writer: marked when the join is taken in, completed when the member list
//! arrives.
//!
//! While the mark is set the room is usable: our events go to the servers the resident
//! server named (`servers_in_room`, held in the room's remote servers), and events from
//! other servers are checked against the state with the members we lack taken from their
//! own auth events (see `remote_event`). The completion (the resync, MSC3902) takes the
//! state before our join as another server gives it (`GET /state` at our join) and:
//! - takes its events in as outliers after check 4;
//! - adds the member events the partial state lacked to the state before and after every
//!   event of the room since our join (and to the room's current state), under keys no
//!   later event set: the events of the timeline's span, and those first stored in the
//!   window without a place (soft-failed, or rejected on arrival), which another server
//!   may build on (not history from before the join backfilled meanwhile);
//! - checks every other server's event of that span, and the soft-failed ones, again
//!   against the whole state before it: one the rules now refuse is rejected (out of the
//!   timeline; a refused state event gives its key back to the state before it, under its
//!   own key only, in the states of the events after it and in the current state, so
//!   that an event built on one of them does not bring it back; the events are taken in
//!   the order they were stored, and one held since before our join but placed in the
//!   window, fetched as an outlier first, may come before an event it was built on and
//!   keep the refused one);
//! - counts the members (their membership records) and tells our members' clients the
//!   room anew: their next `/sync` carries the room's whole state, as after a join.

use std::collections::HashMap;

use super::head::{membership_of, RoomHead};
use super::persist::put_membership;
use super::remote_event::{state_changes, RemoteEvent};
use super::remote_join::{state_of, take_in_outliers};
use super::{WriterContext, Written};
use crate::core::auth_rules::{self, AuthContext};
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::rooms::event_store::{
    membership_key, pdu_key, timeline_key, timeline_value, EventStore,
};
use crate::services::rooms::graph::{self, EventStatus};
use crate::services::rooms::records::{MembershipRecord, PartialState};
use crate::services::rooms::state_store::{ShortEventId, ShortStateHash, ShortStateKey, StateMap};
use crate::services::rooms::stream_state;
use crate::services::stream::StreamChange;
use crate::storage::{keys, Table};

/// The whole state before our join, from the resync: checked for format, signatures and
/// hashes.
pub struct FullState {
    /// The join the state was asked for (the state before it).
    pub join_event: String,
    /// The state events and their auth chain, in any order, each once.
    pub events: Vec<RemoteEvent>,
    /// The ids of the state events (the state before our join).
    pub state_ids: Vec<String>,
}

/// What the completion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The room's state is whole: this many member events were added, and this many
    /// events of the span were refused by the whole state.
    Completed {
        /// Member events added to the state.
        added: usize,
        /// Events since the join that the whole state refused.
        refused: usize,
    },
    /// The room was not (or no longer) partial: nothing changed.
    NotPartial,
}

/// Marks the room of `head` partial for our join `join_event` (when the resident server
/// left the members out and named `servers` as in the room), or not partial (`None`).
/// The mark is written with the join's record.
pub(super) fn begin(head: &mut RoomHead, join_event: &str, servers: Option<Vec<String>>) {
    head.record.partial_state = servers.map(|servers| PartialState {
        join_event: join_event.to_owned(),
        servers,
    });
    head.remote_servers = None;
}

/// Ends the partial state of a room our last member leaves (`user` of `server_name`
/// now `membership`): nobody would answer its resync (a server asked for a room's state
/// wants a member of ours in it), and a later join starts afresh.
pub(super) fn end_if_last_left(
    store: &EventStore,
    head: &mut RoomHead,
    (record, server_name): (&mut crate::services::rooms::records::RoomRecord, &str),
    (user, membership): (&str, &str),
) -> ServiceResult<()> {
    let ours = user
        .split_once(':')
        .is_some_and(|(_, server)| server == server_name);
    if record.partial_state.is_none() || !ours || membership == "join" {
        return Ok(());
    }
    let others = head
        .local_members(store, server_name)?
        .iter()
        .any(|m| m.user_id != user);
    if !others {
        record.partial_state = None;
        head.remote_servers = None;
    }
    Ok(())
}

/// Completes the partial state of `room_id` with `full`. Everything it changes in the
/// room is written in one batch, the mark's removal with it: a crash before leaves the
/// room partial, to be completed again from the start (what is left from the attempt,
/// snapshots saved on the way and the answer's events as outliers, is unused or
/// harmless).
pub(super) fn complete(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    full: FullState,
    written: &mut Written,
) -> ServiceResult<Completion> {
    let store = &ctx.store;
    if head.is_none() {
        *head = Some(RoomHead::load(store, room_id)?);
    }
    let Some(head) = head.as_mut() else {
        return Err(ServiceError::internal("the room's head is not loaded"));
    };
    // Only the partial state of the join the state was asked for (not one of a later
    // join, nor a room left meanwhile).
    let partial = match &head.record.partial_state {
        Some(partial) if partial.join_event == full.join_event => partial.clone(),
        _ => return Ok(Completion::NotPartial),
    };
    let join = store
        .state
        .find_event(&partial.join_event)?
        .ok_or_else(|| ServiceError::internal("a partial room's join is not stored"))?;
    let join_meta = store.meta(join)?;
    // Read before the answer's events are stored (as outliers, none of them wanted).
    let join_depth = graph::record(store, join)?.map_or(0, |r| r.depth);
    let unplaced = unplaced_since(store, head.short, (join, join_depth))?;

    take_in_outliers(ctx, room_id, head, full.events, written)?;
    let whole: StateMap = state_of(store, &full.state_ids)?
        .into_iter()
        .filter_map(|(key, short)| short.map(|s| (key, s)))
        .collect();
    let before_join = store.state.load(join_meta.state_before)?;
    let create_key = store.state.state_key("m.room.create", "")?;
    if whole.get(&create_key) != before_join.get(&create_key) || whole.is_empty() {
        return Err(ServiceError::remote_failed(
            "The state the server gave is not of the room we joined (another create event)",
        ));
    }
    // What the partial state lacked: the member events left out. Only member keys are
    // taken (the only ones a resident server may omit), so a server answering the
    // resync cannot add other state.
    let mut missing: Vec<(ShortStateKey, Option<ShortEventId>)> = Vec::new();
    for (key, event) in &whole {
        if before_join.contains_key(key) {
            continue;
        }
        if store.state.state_key_of(*key)?.0 == "m.room.member" {
            missing.push((*key, Some(*event)));
        }
    }
    let mut batch = store.db.batch();
    let mut fill = Filler {
        store,
        partial: (join_meta.state_before, &before_join),
        missing: &missing,
        filled_base: None,
        done: HashMap::new(),
        refused: Vec::new(),
    };
    let span = span_since(store, head.short, join_meta.pos)?;
    let version = head.version;
    let mut refused: Vec<(ShortEventId, Option<ShortStateKey>, ShortStateHash)> = Vec::new();
    for item in in_arrival_order(span, unplaced) {
        let (short, pos) = match item {
            WindowEvent::Placed { pos, short } => (short, Some(pos)),
            WindowEvent::Unplaced(short) => (short, None),
        };
        let mut meta = store.meta(short)?;
        let (before, after) = (
            fill.filled(meta.state_before)?,
            fill.filled(meta.state_after)?,
        );
        let event = store.event(short)?;
        let remote = event
            .sender()
            .split_once(':')
            .is_none_or(|(_, s)| s != ctx.server_name);
        // Placed events and soft-failed ones are judged again; an event rejected on
        // arrival stays rejected (its states are filled all the same: another server
        // may build on it).
        let judged = match pos {
            Some(_) => true,
            None => matches!(
                graph::record(store, short)?.map(|r| r.status),
                Some(EventStatus::SoftFailed)
            ),
        };
        let mut refusal = None;
        if remote && short != join && judged {
            refusal = recheck(store, version, event.pdu(), before)?.err();
        }
        meta.state_before = before;
        meta.state_after = after;
        if let Some(reason) = refusal {
            tracing::info!(room = %room_id, event = %event.event_id, "accepted on a partial state, refused by the whole state: {reason}");
            let own_key = match event.state_key() {
                Some(key) => Some(store.state.state_key(event.kind(), key)?),
                None => None,
            };
            refused.push((short, own_key, before));
            // The events after it that passed were placed on a state holding it: their
            // states give its key back to the state before it from now on.
            if let Some(key) = own_key {
                fill.refuse(key, short, before);
            }
            let mut record = graph::record(store, short)?.ok_or_else(|| {
                ServiceError::internal("an event of the span has no graph record")
            })?;
            record.status = EventStatus::Rejected {
                reason: format!("not allowed by the whole state before it: {reason}"),
            };
            graph::write(
                &mut batch,
                short,
                &record,
                crate::services::rooms::auth_index::state_key_of(store, event.pdu())?,
            );
            match pos {
                // Out of the timeline, as events rejected on arrival are.
                Some(pos) => batch.delete(
                    Table::ShortroomidPosShorteventid,
                    timeline_key(head.short, pos),
                ),
                // As stored when rejected on arrival: the state after it is the state
                // before it.
                None => meta.state_after = before,
            }
            meta.pos = 0;
        } else if let Some(pos) = pos {
            batch.put(
                Table::ShortroomidPosShorteventid,
                timeline_key(head.short, pos),
                timeline_value(short, &meta, &event.event_id),
            );
        }
        batch.put(
            Table::ShorteventidMeta,
            short.to_be_bytes(),
            meta.encode_with_id(&event.event_id),
        );
        if pos.is_none() {
            continue;
        }
        let current = stream_state::current_after(store, short, after)?;
        if current != after {
            let current = fill.filled(current)?;
            if current == meta.state_after {
                batch.delete(Table::ShorteventidCurrentstate, short.to_be_bytes());
            } else {
                stream_state::note_current(&mut batch, short, current, meta.state_after);
            }
        }
    }

    // The room's current state, whole.
    let mut now = store.state.load(head.record.state)?;
    let mut added = 0;
    for (key, event) in &missing {
        if let (false, Some(event)) = (now.contains_key(key), event) {
            now.insert(*key, *event);
            added += 1;
        }
    }
    // Newest first: of two refused events of one key, the older one's state before
    // stands.
    for (short, own_key, before) in refused.iter().rev() {
        let Some(key) = own_key else { continue };
        if now.get(key) == Some(short) {
            match store.state.get(*before, *key)? {
                Some(earlier) => now.insert(*key, earlier),
                None => now.remove(key),
            };
        }
    }
    let changes = state_changes(&head.state, &now);
    let snapshot = if changes.is_empty() {
        head.record.state
    } else {
        // Saved in a batch of its own (its parent is read); unused if the batch below
        // never lands.
        let mut own = store.db.batch();
        let id = store
            .state
            .save(Some(head.record.state), &changes, &mut own)?;
        store.db.write_relaxed(own)?;
        id
    };
    let ticket = store.stream.allocate()?;
    let pos = ticket.pos();
    let mut record = head.record.clone();
    let mut member_changes = Vec::new();
    for (key, value) in &changes {
        let (kind, user) = store.state.state_key_of(*key)?;
        if kind != "m.room.member" {
            continue;
        }
        let event = value.map(|e| store.event(e)).transpose()?;
        let membership = event.as_ref().map_or("leave", |e| membership_of(e.pdu()));
        let event_id = event.as_ref().map_or("", |e| e.event_id.as_str());
        put_membership(
            ctx,
            &mut batch,
            &mut record,
            (&user, membership, event_id),
            pos,
        )?;
        member_changes.push((user, event.map(|e| e.pdu().clone())));
    }
    // Our members see the room anew: their next sync is as after a join (the whole state).
    for member in head.local_members(store, &ctx.server_name)?.to_vec() {
        let key = membership_key(&member.user_id, room_id);
        let Some(bytes) = store.db.get(Table::UseridRoomidMembership, &key)? else {
            continue;
        };
        let mut entry: MembershipRecord = decode(Table::UseridRoomidMembership, &bytes)?;
        if entry.membership == "join" {
            entry.joined_at = pos;
            batch.put(Table::UseridRoomidMembership, &key, encode(&entry));
        }
    }
    // A refused event is no forward extremity (there is always one: our join at least).
    if !refused.is_empty() {
        let refused_ids = store
            .state
            .event_ids_of(&refused.iter().map(|r| r.0).collect::<Vec<_>>())?;
        record.extremities.retain(|e| !refused_ids.contains(e));
        if record.extremities.is_empty() {
            record.extremities.push(partial.join_event.clone());
        }
    }
    record.state = snapshot;
    record.partial_state = None;
    record.last_pos = pos;
    batch.put(
        Table::PosShortroomid,
        pos.to_be_bytes(),
        head.short.to_be_bytes(),
    );
    batch.put(
        Table::ShortroomidRoom,
        head.short.to_be_bytes(),
        encode(&record),
    );
    store.db.write_relaxed(batch)?;
    written.changes.push((
        ticket,
        StreamChange::RoomEvent {
            room: head.short,
            member: None,
        },
    ));
    head.record = record;
    head.state = now;
    head.cache.clear();
    head.extremities = None;
    head.remote_servers = None;
    for (user, pdu) in &member_changes {
        head.member_changed(user, pdu.as_ref(), &ctx.server_name);
    }
    tracing::info!(room = %room_id, added, refused = refused.len(), "the room's partial state is complete");
    Ok(Completion::Completed {
        added,
        refused: refused.len(),
    })
}

/// The events of the room's timeline from `from` on: `(position, short id)`.
fn span_since(store: &EventStore, room: u64, from: u64) -> ServiceResult<Vec<(u64, ShortEventId)>> {
    let mut out = Vec::new();
    let (start, end) = (timeline_key(room, from), timeline_key(room, u64::MAX));
    for entry in store
        .db
        .scan_range(Table::ShortroomidPosShorteventid, &start, &end, false)
    {
        let (key, value) = entry?;
        let pos = key.get(8..).and_then(keys::read_u64);
        let short = crate::services::rooms::event_store::read_timeline_value(&value);
        if let (Some(pos), Some((short, _))) = (pos, short) {
            out.push((pos, short));
        }
    }
    Ok(out)
}

/// The room's events first stored after our join (`join`, at `depth`) that have a state
/// of ours but no timeline place: soft-failed, or rejected on arrival with the state
/// before them. In short id order (the order they were stored in). Events of the
/// history before the join, backfilled meanwhile (less deep than it), keep their states.
fn unplaced_since(
    store: &EventStore,
    room: u64,
    (join, depth): (ShortEventId, u64),
) -> ServiceResult<Vec<ShortEventId>> {
    let mut out = Vec::new();
    let (start, end) = (
        pdu_key(room, join.saturating_add(1)),
        pdu_key(room, u64::MAX),
    );
    for entry in store
        .db
        .scan_range(Table::ShortroomidShorteventidPdu, &start, &end, false)
    {
        let (key, _) = entry?;
        let Some(short) = key.get(8..).and_then(keys::read_u64) else {
            continue;
        };
        let meta = store.meta(short)?;
        if meta.pos == 0
            && meta.state_before != 0
            && graph::record(store, short)?.is_some_and(|r| r.depth > depth)
        {
            out.push(short);
        }
    }
    Ok(out)
}

/// An event of the partial window: placed in the timeline, or kept without a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowEvent {
    Placed { pos: u64, short: ShortEventId },
    Unplaced(ShortEventId),
}

/// The span's events in timeline order with the unplaced ones (by short id) merged in
/// before the first placed event stored after them: an event comes before the events
/// built on it, which were stored after it.
fn in_arrival_order(
    span: Vec<(u64, ShortEventId)>,
    unplaced: Vec<ShortEventId>,
) -> Vec<WindowEvent> {
    let mut out = Vec::with_capacity(span.len() + unplaced.len());
    let mut unplaced = unplaced.into_iter().peekable();
    for (pos, short) in span {
        while let Some(earlier) = unplaced.next_if(|u| *u < short) {
            out.push(WindowEvent::Unplaced(earlier));
        }
        out.push(WindowEvent::Placed { pos, short });
    }
    out.extend(unplaced.map(WindowEvent::Unplaced));
    out
}

/// Each partial snapshot of the span with the missing member events added under keys it
/// does not have, saved once. The join's partial state before it, filled, is saved once
/// as a base; any other snapshot is saved as its difference from that partial state, on
/// the filled base (the span's changes are few; the members, many).
struct Filler<'a> {
    store: &'a EventStore,
    /// The join's state before it, as the partial state held it (id and map).
    partial: (ShortStateHash, &'a StateMap),
    missing: &'a [(ShortStateKey, Option<ShortEventId>)],
    filled_base: Option<ShortStateHash>,
    done: HashMap<ShortStateHash, ShortStateHash>,
    /// State events of the span refused by the whole state (key, event, the filled state
    /// before it), in span order.
    refused: Vec<(ShortStateKey, ShortEventId, ShortStateHash)>,
}

impl Filler<'_> {
    /// `event`, of `key`, was refused: a snapshot filled from now on that holds it holds
    /// instead what the state before it (`before`, filled) holds under `key`.
    fn refuse(&mut self, key: ShortStateKey, event: ShortEventId, before: ShortStateHash) {
        self.refused.push((key, event, before));
        // Snapshots filled before hold it as they were; those asked for again are
        // filled anew.
        let base = self.partial.0;
        self.done.retain(|snapshot, _| *snapshot == base);
    }

    fn filled(&mut self, snapshot: ShortStateHash) -> ServiceResult<ShortStateHash> {
        if snapshot == 0 {
            return Ok(0);
        }
        if let Some(done) = self.done.get(&snapshot) {
            return Ok(*done);
        }
        let base = match self.filled_base {
            Some(base) => base,
            None => {
                let base = self.save(Some(self.partial.0), self.missing)?;
                self.filled_base = Some(base);
                self.done.insert(self.partial.0, base);
                base
            }
        };
        if snapshot == self.partial.0 {
            return Ok(base);
        }
        // What the span changed since the join: set, or gone (a key the join's state had
        // and this one does not).
        let map = self.store.state.load(snapshot)?;
        let mut changes = state_changes(self.partial.1, &map);
        for (key, value) in &mut changes {
            // Newest first: a refused event's state before is filled with the older
            // refusals already undone.
            for (refused_key, event, before) in self.refused.iter().rev() {
                if key == refused_key && *value == Some(*event) {
                    *value = self.store.state.get(*before, *key)?;
                }
            }
        }
        let filled = self.save(Some(base), &changes)?;
        self.done.insert(snapshot, filled);
        Ok(filled)
    }

    /// `changes` on `parent`, saved in a batch of its own (a later snapshot is saved on
    /// it, and the store reads the parent).
    fn save(
        &self,
        parent: Option<ShortStateHash>,
        changes: &[(ShortStateKey, Option<ShortEventId>)],
    ) -> ServiceResult<ShortStateHash> {
        let Some(parent) = parent else {
            return Err(ServiceError::internal(
                "a partial snapshot without a parent",
            ));
        };
        if changes.is_empty() {
            return Ok(parent);
        }
        let mut batch = self.store.db.batch();
        let id = self.store.state.save(Some(parent), changes, &mut batch)?;
        self.store.db.write_relaxed(batch)?;
        Ok(id)
    }
}

/// Checks 5 again: the auth rules for `event` against the whole state `before` it.
fn recheck(
    store: &EventStore,
    version: crate::core::RoomVersion,
    event: &serde_json::Value,
    before: ShortStateHash,
) -> ServiceResult<Result<(), String>> {
    let mut keys = auth_rules::auth_event_keys(version, event);
    keys.push(("m.room.create".into(), String::new()));
    let mut auth = super::local_event::CachedAuthState::default();
    for (kind, key) in keys {
        let Some(short_key) = store.state.find_state_key(&kind, &key)? else {
            continue;
        };
        if let Some(short) = store.state.get(before, short_key)? {
            auth.insert((kind, key), std::sync::Arc::new(store.event(short)?));
        }
    }
    // The rules' signature conditions (a restricted join's authorising server) do not
    // depend on the state: check 4 held them against the signatures verified when the
    // event came, which are the ones it keeps.
    let signed = |server: &str| {
        event
            .get("signatures")
            .and_then(|s| s.get(server))
            .is_some()
    };
    let ctx = AuthContext {
        version,
        signed_by: &signed,
    };
    Ok(auth_rules::check(&ctx, event, &auth).map_err(|e| e.0))
}

#[cfg(test)]
mod tests {
    use super::{in_arrival_order, WindowEvent};

    #[test]
    fn unplaced_events_come_before_the_first_placed_event_stored_after_them() {
        let span = vec![(10, 5), (11, 8), (12, 3), (13, 9)];
        let order = in_arrival_order(span, vec![4, 6, 7, 12]);
        assert_eq!(
            order,
            vec![
                WindowEvent::Unplaced(4),
                WindowEvent::Placed { pos: 10, short: 5 },
                WindowEvent::Unplaced(6),
                WindowEvent::Unplaced(7),
                WindowEvent::Placed { pos: 11, short: 8 },
                // Placed in the window, stored before it: the span's order stands.
                WindowEvent::Placed { pos: 12, short: 3 },
                WindowEvent::Placed { pos: 13, short: 9 },
                WindowEvent::Unplaced(12),
            ]
        );
        assert!(in_arrival_order(Vec::new(), Vec::new()).is_empty());
    }
}

//! Persisting an event: the one write batch that stores its PDU and metadata, gives it a
//! place in the timeline and the stream, moves the room's head and state snapshot,
//! membership records and counts, queues it for other servers and runs the new-event
//! hooks.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::core::pdu::{self, BuiltPdu};
use crate::services::error::ServiceResult;
use crate::services::outbox::Outbox;
use crate::services::records::{decode, encode};
use crate::services::rooms::aggregates::Child;
use crate::services::rooms::event_store::{
    membership_key, pdu_key, timeline_key, timeline_value, StoredEvent,
};
use crate::services::rooms::graph;
use crate::services::rooms::records::{EventMeta, MembershipRecord, RoomRecord};
use crate::services::rooms::state_store::ShortEventId;
use crate::services::stream::StreamChange;
use crate::storage::{keys, Batch, Table};
use serde_json::Value;

use super::head::{membership_of, EventFacts, RoomHead};
use super::redactions::apply_redaction;
use super::relations::{index_relation, relation_of, thread_key};
use super::{NewEvent, TxnRef, WriterContext, Written};

/// Runs the new-event hooks inside the event's batch.
pub(super) fn run_hooks(
    ctx: &WriterContext,
    head: &mut RoomHead,
    (pdu, short, pos): (&Value, ShortEventId, u64),
    redacted: Option<&StoredEvent>,
    news: bool,
    batch: &mut Batch<'_>,
) -> ServiceResult<()> {
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
    // Read first: the first call of a head reads the state's members once for both sets.
    head.local_members(store, &ctx.server_name)?;
    // Whom the redacted event may have notified: the local users who were members then
    // (each keeps a member event in the state, joined now or not; a state reset since
    // may have dropped one), with the invited or knocking ones (deleting an entry they
    // never had costs a tombstone).
    let redacted_for: Vec<String> = match redacted {
        Some(_) => head
            .local_member_users(store, &ctx.server_name)?
            .iter()
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let local_members = head.local_members(store, &ctx.server_name)?;
    let invited = invited_local_user(pdu, &ctx.server_name);
    let event = NewEvent {
        room_id: &room_id,
        room,
        pos,
        pdu,
        short,
        local_members,
        invited,
        joined_count,
        power_levels: &power_levels,
        notification_levels,
        redacted,
        redacted_for: &redacted_for,
        news,
    };
    for hook in &ctx.hooks {
        hook.new_event(&event, batch)?;
    }
    Ok(())
}

/// The local user an invite event invites, if it is one.
fn invited_local_user<'p>(pdu: &'p Value, server_name: &str) -> Option<&'p str> {
    if pdu.get("type").and_then(Value::as_str) != Some("m.room.member")
        || membership_of(pdu) != "invite"
    {
        return None;
    }
    pdu.get("state_key").and_then(Value::as_str).filter(|user| {
        user.split_once(':')
            .is_some_and(|(_, server)| server == server_name)
    })
}

/// Writes `built` (already authorized) as the room's newest event, in one batch.
pub(super) fn write_event(
    ctx: &WriterContext,
    head: &mut RoomHead,
    built: BuiltPdu,
    txn: Option<TxnRef>,
    mut batch: Batch<'_>,
    written: &mut Written,
    edges: Edges,
) -> ServiceResult<String> {
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
        crate::services::rooms::auth_index::state_key_of(store, pdu)?,
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
    put_event(&mut batch, (short, &event_id), pdu, &meta);
    put_timeline_place(&mut batch, (short, &event_id), pdu, &meta);

    let mut record = head.record.clone();
    note_history_visibility(&mut record, pdu);
    let mut member = None;
    if kind == "m.room.member" {
        if let Some(user) = state_key {
            let membership = membership_of(pdu);
            put_membership(
                ctx,
                &mut batch,
                &mut record,
                (user, membership, &event_id),
                pos,
            )?;
            member = Some((user.to_owned(), membership.to_owned()));
            super::partial_state::end_if_last_left(
                store,
                head,
                (&mut record, &ctx.server_name),
                (user, membership),
            )?;
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
    if let Some(target) = pdu::redaction_target(pdu, head.version) {
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
        true,
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
    store.state.remember_written_event(&event_id, short);
    head.wrote_facts(short, EventFacts::accepted(&meta));
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
pub(super) fn queue_for(
    batch: &mut Batch<'_>,
    destinations: &BTreeSet<String>,
    pos: u64,
    event_id: &str,
) {
    for destination in destinations {
        let (table, key, value) = Outbox::queue_pdu(destination, pos, event_id);
        if let Some(value) = value {
            batch.put(table, key, value);
        }
    }
}

/// The PDU and metadata rows of event `short` (`event_id`).
pub(super) fn put_event(
    batch: &mut Batch<'_>,
    (short, event_id): (ShortEventId, &str),
    pdu: &Value,
    meta: &EventMeta,
) {
    batch.put(
        Table::ShortroomidShorteventidPdu,
        pdu_key(meta.room, short),
        encode(pdu),
    );
    batch.put(
        Table::ShorteventidMeta,
        short.to_be_bytes(),
        meta.encode_with_id(event_id),
    );
}

/// The rows that give event `short` (`event_id`, with `meta`) its place `meta.pos` in
/// the room's timeline and the stream, and in the timestamp index.
pub(super) fn put_timeline_place(
    batch: &mut Batch<'_>,
    (short, event_id): (ShortEventId, &str),
    pdu: &Value,
    meta: &EventMeta,
) {
    let (room, pos) = (meta.room, meta.pos);
    batch.put(
        Table::ShortroomidPosShorteventid,
        timeline_key(room, pos),
        timeline_value(short, meta, event_id),
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
pub(super) fn note_history_visibility(record: &mut RoomRecord, pdu: &Value) {
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

/// A user's membership record after `(user, membership, event id)` became the room's
/// current member event at `pos`, and the room's member counts. A ban or leave (the
/// event's own, or one a resolution brought) takes back a reset grant of the user's
/// server ([`crate::services::rooms::reset_out`]).
pub(super) fn put_membership(
    ctx: &WriterContext,
    batch: &mut Batch<'_>,
    record: &mut RoomRecord,
    (user, membership, event_id): (&str, &str, &str),
    pos: u64,
) -> ServiceResult<()> {
    let store = &ctx.store;
    if matches!(membership, "ban" | "leave") {
        if let Some((_, server)) = user.split_once(':') {
            ctx.reset_servers.revoke(&record.room_id, server);
        }
    }
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

/// The short ids of a new event's prev and auth events, known to the code that built it.
#[derive(Default)]
pub(super) struct Edges {
    pub(super) prev: Vec<ShortEventId>,
    pub(super) auth: Vec<ShortEventId>,
}

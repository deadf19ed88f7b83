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
//!   later event set;
//! - checks every other server's event of that span again against the whole state before
//!   it: one the rules now refuse is rejected (out of the timeline; a state event of
//!   the current state gives its key back to the state before it);
//! - counts the members (their membership records) and tells our members' clients the
//!   room anew: their next `/sync` carries the room's whole state, as after a join.

use std::collections::HashMap;

use super::head::{membership_of, RoomHead};
use super::persist::put_membership;
use super::remote_event::RemoteEvent;
use super::remote_join::{state_of, take_in_outliers};
use super::{WriterContext, Written};
use crate::core::auth_rules::{self, AuthContext};
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::services::rooms::event_store::{
    membership_key, timeline_key, timeline_value, EventStore,
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

/// Completes the partial state of `room_id` with `full`.
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
    let Some(partial) = head.record.partial_state.clone() else {
        return Ok(Completion::NotPartial);
    };
    let join = store
        .state
        .find_event(&partial.join_event)?
        .ok_or_else(|| ServiceError::internal("a partial room's join is not stored"))?;
    let join_meta = store.meta(join)?;

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
    // What the partial state lacked: keys it did not have at all (the members left out).
    let missing: Vec<(ShortStateKey, ShortEventId)> = whole
        .iter()
        .filter(|(key, _)| !before_join.contains_key(key))
        .map(|(k, e)| (*k, *e))
        .collect();

    let mut fill = Filler {
        store,
        missing: &missing,
        done: HashMap::new(),
    };
    let span = span_since(store, head.short, join_meta.pos)?;
    let version = head.version;
    let mut refused: Vec<(ShortEventId, Option<ShortStateKey>, ShortStateHash)> = Vec::new();
    for (pos, short) in span {
        let meta = store.meta(short)?;
        let (before, after) = (
            fill.filled(meta.state_before)?,
            fill.filled(meta.state_after)?,
        );
        let event = store.event(short)?;
        let mut batch = store.db.batch();
        let remote = event
            .sender()
            .split_once(':')
            .is_none_or(|(_, s)| s != ctx.server_name);
        if remote && short != join {
            if let Err(reason) = recheck(store, version, event.pdu(), before)? {
                tracing::info!(room = %room_id, event = %event.event_id, "accepted on a partial state, refused by the whole state: {reason}");
                let own_key = match event.state_key() {
                    Some(key) => Some(store.state.state_key(event.kind(), key)?),
                    None => None,
                };
                refused.push((short, own_key, before));
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
                batch.delete(
                    Table::ShortroomidPosShorteventid,
                    timeline_key(head.short, pos),
                );
            }
        }
        let mut meta = meta;
        meta.state_before = before;
        meta.state_after = after;
        batch.put(
            Table::ShorteventidMeta,
            short.to_be_bytes(),
            meta.encode_with_id(&event.event_id),
        );
        if !refused.iter().any(|(r, _, _)| *r == short) {
            batch.put(
                Table::ShortroomidPosShorteventid,
                timeline_key(head.short, pos),
                timeline_value(short, &meta, &event.event_id),
            );
        }
        let current = stream_state::current_after(store, short, after)?;
        if current != after {
            stream_state::note_current(&mut batch, short, fill.filled(current)?, after);
        }
        store.db.write_relaxed(batch)?;
    }

    // The room's current state, whole.
    let mut now = store.state.load(head.record.state)?;
    let mut added = 0;
    for (key, event) in &missing {
        if !now.contains_key(key) {
            now.insert(*key, *event);
            added += 1;
        }
    }
    for (short, own_key, before) in &refused {
        let Some(key) = own_key else { continue };
        if now.get(key) == Some(short) {
            match store.state.load(*before)?.get(key) {
                Some(earlier) => now.insert(*key, *earlier),
                None => now.remove(key),
            };
        }
    }
    let changes: Vec<(ShortStateKey, Option<ShortEventId>)> = {
        let old = &head.state;
        let mut changes: Vec<_> = now
            .iter()
            .filter(|(k, e)| old.get(k) != Some(e))
            .map(|(k, e)| (*k, Some(*e)))
            .collect();
        changes.extend(
            old.keys()
                .filter(|k| !now.contains_key(k))
                .map(|k| (*k, None)),
        );
        changes
    };
    let mut batch = store.db.batch();
    let snapshot = if changes.is_empty() {
        head.record.state
    } else {
        store
            .state
            .save(Some(head.record.state), &changes, &mut batch)?
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
            store,
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
    record.state = snapshot;
    record.partial_state = None;
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

/// Each partial snapshot with the missing entries added (under keys it does not have),
/// saved once.
struct Filler<'a> {
    store: &'a EventStore,
    missing: &'a [(ShortStateKey, ShortEventId)],
    done: HashMap<ShortStateHash, ShortStateHash>,
}

impl Filler<'_> {
    fn filled(&mut self, snapshot: ShortStateHash) -> ServiceResult<ShortStateHash> {
        if snapshot == 0 {
            return Ok(0);
        }
        if let Some(done) = self.done.get(&snapshot) {
            return Ok(*done);
        }
        let map = self.store.state.load(snapshot)?;
        let adds: Vec<(ShortStateKey, Option<ShortEventId>)> = self
            .missing
            .iter()
            .filter(|(key, _)| !map.contains_key(key))
            .map(|(k, e)| (*k, Some(*e)))
            .collect();
        let filled = if adds.is_empty() {
            snapshot
        } else {
            // Saved in a batch of its own: a later snapshot may be saved on it.
            let mut batch = self.store.db.batch();
            let id = self.store.state.save(Some(snapshot), &adds, &mut batch)?;
            self.store.db.write_relaxed(batch)?;
            id
        };
        self.done.insert(snapshot, filled);
        Ok(filled)
    }
}

/// Checks 5 again: the auth rules for `event` against the whole state `before` it.
fn recheck(
    store: &EventStore,
    version: crate::core::RoomVersion,
    event: &serde_json::Value,
    before: ShortStateHash,
) -> ServiceResult<Result<(), String>> {
    let state = store.state.load(before)?;
    let mut keys = auth_rules::auth_event_keys(version, event);
    keys.push(("m.room.create".into(), String::new()));
    let mut auth = super::local_event::CachedAuthState::default();
    for (kind, key) in keys {
        let Some(short_key) = store.state.find_state_key(&kind, &key)? else {
            continue;
        };
        if let Some(&short) = state.get(&short_key) {
            auth.0
                .insert((kind, key), std::sync::Arc::new(store.event(short)?));
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

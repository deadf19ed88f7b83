//! Building local events: a new room's create event, and each event our users send,
//! built on the room's head (prev events from the extremities, auth events by the
//! selection algorithm, depth), signed, and checked against the auth rules.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::auth_rules::{self, AuthContext, AuthState};
use crate::core::event_hashes;
use crate::core::pdu::{self, BuiltPdu, PduTemplate};
use crate::core::power_levels::PowerLevels;
use crate::core::RoomVersion;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::now_ms;
use crate::services::rooms::event_store::StoredEvent;
use crate::services::rooms::graph;
use crate::services::rooms::guests;
use crate::services::rooms::records::RoomRecord;
use crate::storage::Table;
use serde_json::{json, Value};

use super::head::RoomHead;
use super::persist::{write_event, Edges};
use super::redactions::check_redaction;
use super::{forbidden, pdu_error, EventDraft, TxnRef, WriterContext, Written};

/// Writes a new room's create event.
pub(super) fn create_room(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    create: BuiltPdu,
    version: RoomVersion,
    written: &mut Written,
) -> ServiceResult<String> {
    let store = &ctx.store;
    if store.room_short(room_id)?.is_some() {
        return Err(ServiceError::new(
            ErrorKind::Invalid,
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
    let mut fresh = RoomHead::new_room(
        short_room,
        RoomRecord::new(room_id, version.as_str()),
        version,
    );
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
pub(super) fn append(
    ctx: &WriterContext,
    head: &mut RoomHead,
    draft: EventDraft,
    written: &mut Written,
) -> ServiceResult<String> {
    let store = &ctx.store;
    if let Some(txn) = &draft.txn {
        if let Some(existing) = store.db.get(Table::TxnidEventid, &txn.key)? {
            return String::from_utf8(existing)
                .map_err(|_| ServiceError::internal("corrupt transaction record"));
        }
    }
    let (built, txn, edges) = build(ctx, head, draft)?;
    write_event(ctx, head, built, txn, store.db.batch(), written, edges)
}

/// Builds and signs one event on the room's head and checks it against the auth rules
/// (the state before it is the current state).
pub(super) fn build(
    ctx: &WriterContext,
    head: &mut RoomHead,
    mut draft: EventDraft,
) -> ServiceResult<(BuiltPdu, Option<TxnRef>, Edges)> {
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
            return Err(ServiceError::forbidden(
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
            auth_state.insert((kind, key), event);
        }
    }
    if let Some(create) = head.state_event(store, "m.room.create", "")? {
        auth_state.insert_if_absent(("m.room.create".into(), String::new()), create);
    }

    let (prev, depth) = graph::local_prev_events(head.extremities(store)?);
    let prev_events: Vec<String> = prev.iter().map(|e| e.id.clone()).collect();
    edges.prev = prev.iter().map(|e| e.short).collect();
    let txn = draft.txn.take();
    // Rooms v1 and v2 list each prev and auth event with its reference hash.
    let mut hashes: HashMap<String, [u8; 32]> = HashMap::new();
    if head.version.event_references_carry_hashes() {
        let prev_events = store.events(&edges.prev)?;
        let referenced = auth_state.0.iter().map(|(_, e)| &**e).chain(&prev_events);
        for event in referenced {
            let hash = event_hashes::reference_hash(event.pdu(), head.version)
                .map_err(ServiceError::internal)?;
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

/// The state the auth rules read, borrowed from the writer's cache of parsed state events
/// (no copy of a big power levels event per message). An event's auth state holds a
/// handful of events: a list searched in place answers the rules' many lookups without
/// building a key for each.
#[derive(Default)]
pub(super) struct CachedAuthState(Vec<((String, String), Arc<StoredEvent>)>);

impl CachedAuthState {
    /// Sets `(type, state_key)` to `event`, replacing what it held.
    pub(super) fn insert(&mut self, pair: (String, String), event: Arc<StoredEvent>) {
        match self.0.iter_mut().find(|(held, _)| *held == pair) {
            Some((_, held)) => *held = event,
            None => self.0.push((pair, event)),
        }
    }

    /// Sets `(type, state_key)` to `event` unless it holds one already.
    pub(super) fn insert_if_absent(&mut self, pair: (String, String), event: Arc<StoredEvent>) {
        if self.find(&pair.0, &pair.1).is_none() {
            self.0.push((pair, event));
        }
    }

    fn find(&self, event_type: &str, state_key: &str) -> Option<&Arc<StoredEvent>> {
        self.0
            .iter()
            .find(|((kind, key), _)| kind == event_type && key == state_key)
            .map(|(_, event)| event)
    }
}

impl AuthState for CachedAuthState {
    fn get(&self, event_type: &str, state_key: &str) -> Option<&Value> {
        self.find(event_type, state_key).map(|e| e.pdu())
    }

    /// Stored events are held under their ids.
    fn create_event_id(&self) -> Option<&str> {
        self.find("m.room.create", "").map(|e| e.event_id.as_str())
    }

    /// Kept parsed with the power levels event, which the head's cache shares.
    fn power_levels(&self, version: RoomVersion) -> Option<Arc<PowerLevels>> {
        let levels = self.find("m.room.power_levels", "")?;
        let create = self.find("m.room.create", "");
        Some(levels.power_levels(version, create.map(|e| &**e)))
    }
}

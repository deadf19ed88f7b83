//! Joins of other servers' users to our rooms: what a resident server answers.
//!
//! Spec: server-server API, "Joining Rooms": `GET /make_join/{roomId}/{userId}` (a join
//! event template built on the room's current state, checked against the auth rules
//! before it is handed out) and `PUT /v2/send_join/{roomId}/{eventId}` (the signed join
//! goes through the checks on receipt of a PDU; once accepted we pass it on to the other
//! servers in the room and answer the state before it and the auth chain of that state
//! and of the join). For a restricted room we choose a local member who may invite as
//! `join_authorised_via_users_server` and sign the join ourselves before it is kept.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::event_store::StoredEvent;
use super::graph;
use super::receive::{MissingSource, PduOutcome};
use super::state_store::{ShortEventId, StateMap};
use super::Rooms;
use crate::core::auth_rules::{self, AuthContext};
use crate::core::{event_hashes, pdu, RoomVersion, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::now_ms;

/// What `send_join` answers (the `200` body of v2; v1 wraps it).
#[derive(Debug)]
pub struct JoinAnswer {
    /// The state before the join (PDUs).
    pub state: Vec<Value>,
    /// The auth chain of the join and of that state (PDUs).
    pub auth_chain: Vec<Value>,
    /// The join as we keep it, when we added our signature (restricted joins).
    pub event: Option<Value>,
    /// Servers with joined members before the join.
    pub servers_in_room: Vec<String>,
    /// Member events were left out of `state` (the joining server asked with
    /// `omit_members`).
    pub members_omitted: bool,
}

impl JoinAnswer {
    /// The spec's JSON form.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "state": self.state,
            "auth_chain": self.auth_chain,
            "members_omitted": self.members_omitted,
            "servers_in_room": self.servers_in_room,
        });
        if let Some(event) = &self.event {
            body["event"] = event.clone();
        }
        body
    }
}

impl Rooms {
    /// `make_join`, `make_leave`, `make_knock`: a `membership` event template for `user`
    /// (of `origin`), if the room's version is among `supported` (the `ver` parameters;
    /// none means version 1; a leave does not ask) and the event would pass the auth
    /// rules on the current state.
    pub fn member_template(
        &self,
        origin: &str,
        room_id: &str,
        (user, membership): (&UserId, &str),
        supported: Option<&[String]>,
    ) -> ServiceResult<(RoomVersion, Value)> {
        if user.server_name() != origin {
            return Err(ServiceError::forbidden(
                "The user is not of the requesting server",
            ));
        }
        let room = self.known_room(room_id)?;
        self.check_server_acl(room_id, origin)?;
        if room.record.partial_state.is_some() {
            // Our state lacks the members: another resident server is to be asked.
            return Err(ServiceError::not_found(
                "This server's state of the room is partial (its member list is not in yet)",
            ));
        }
        let version = room.version;
        if let Some(supported) = supported {
            let supported_here = if supported.is_empty() {
                version.as_str() == "1"
            } else {
                supported.iter().any(|v| v == version.as_str())
            };
            let knock_refused = membership == "knock" && !version.has_knocking();
            if !supported_here || knock_refused {
                return Err(ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::IncompatibleRoomVersion,
                    format!(
                        "The room is of version {version}, which the asking server does not support"
                    ),
                )
                .with("room_version", version.as_str()));
            }
        }
        let state = self.store.state.load(room.record.state)?;
        if self.local_joined(&state)?.is_none() {
            return Err(ServiceError::not_found(
                "This server has no member in the room",
            ));
        }
        let mut content = Map::new();
        content.insert("membership".into(), json!(membership));
        if membership == "join" {
            if let Some(via) = self.restricted_join_authoriser(room_id, version, user)? {
                content.insert("join_authorised_via_users_server".into(), json!(via));
            }
        }
        let partial = json!({
            "type": "m.room.member",
            "sender": user.as_str(),
            "state_key": user.as_str(),
            "content": content,
        });
        let mut auth_events = Vec::new();
        let mut auth_state = HashMap::new();
        let mut referenced = Vec::new();
        for (kind, key) in auth_rules::auth_event_keys(version, &partial) {
            if let Some(event) = self.state_event_in(&state, &kind, &key)? {
                auth_events.push(event.event_id.clone());
                auth_state.insert((kind, key), event.pdu().clone());
                referenced.push(event);
            }
        }
        if let Some(create) = self.state_event_in(&state, "m.room.create", "")? {
            auth_state
                .entry(("m.room.create".to_owned(), String::new()))
                .or_insert_with(|| create.pdu().clone());
        }
        let extremities =
            graph::load_extremities(&self.store, &room.record.extremities, room.record.depth)?;
        let (prev, depth) = graph::local_prev_events(&extremities);
        let prev_ids: Vec<&str> = prev.iter().map(|e| e.id.as_str()).collect();
        // Rooms v1 and v2 list the reference hash of each.
        let mut hashes = HashMap::new();
        if version.event_references_carry_hashes() {
            let shorts: Vec<_> = prev.iter().map(|e| e.short).collect();
            referenced.extend(self.store.events(&shorts)?);
            for event in &referenced {
                let hash = event_hashes::reference_hash(event.pdu(), version)
                    .map_err(ServiceError::internal)?;
                hashes.insert(event.event_id.as_str(), hash);
            }
        }
        let hash_of = |id: &str| hashes.get(id).copied();
        let prev_events =
            pdu::references(version, &prev_ids, &hash_of).map_err(ServiceError::internal)?;
        let auth_events =
            pdu::references(version, &auth_events, &hash_of).map_err(ServiceError::internal)?;
        let template = json!({
            "room_id": room_id,
            "type": "m.room.member",
            "sender": user.as_str(),
            "state_key": user.as_str(),
            "content": content,
            "origin": origin,
            "origin_server_ts": now_ms(),
            "depth": depth,
            "prev_events": prev_events,
            "auth_events": auth_events,
        });
        // The asking server signs it; the rules are judged as if it had.
        let signed_by = |_: &str| true;
        let ctx = AuthContext {
            version,
            signed_by: &signed_by,
        };
        auth_rules::check(&ctx, &template, &auth_state).map_err(|e| {
            ServiceError::forbidden(format!("The {membership} would not be allowed: {e}"))
        })?;
        Ok((version, template))
    }

    /// `send_join`: receives `pdu` (the join with id `event_id` that `origin` signed)
    /// and answers the state before it and the auth chain.
    ///
    /// With `omit_members` (spec v1.6, `send_join` v2) the state leaves out member
    /// events but those of the room's heroes when it has neither a name nor a canonical
    /// alias (the joining server's clients name the room after them), and the auth chain
    /// leaves out what the state holds.
    pub async fn accept_remote_join(
        &self,
        origin: &str,
        (room_id, event_id): (&str, &str),
        pdu: Value,
        omit_members: bool,
        source: &dyn MissingSource,
    ) -> ServiceResult<JoinAnswer> {
        if self.is_partial(room_id)? {
            return Err(ServiceError::not_found(
                "This server's state of the room is partial (its member list is not in yet)",
            ));
        }
        let short = self
            .accept_remote_member(origin, (room_id, event_id), "join", pdu, source)
            .await?;
        let version = self.known_room(room_id)?.version;
        let kept = self.store.event(short)?.pdu().clone();
        // Ours only when we countersigned a restricted join.
        let signed_here = kept
            .get("signatures")
            .and_then(|s| s.get(self.server_name.as_str()))
            .is_some();
        let meta = self.store.meta(short)?;
        if meta.room != room_id_short(self, room_id)? {
            return Err(ServiceError::invalid_param("The event is of another room"));
        }
        let state_map = self.store.state.load(meta.state_before)?;
        let state_shorts: Vec<ShortEventId> = state_map.values().copied().collect();
        let state_events = self.store.events(&state_shorts)?;
        let mut servers: BTreeSet<String> = BTreeSet::new();
        servers.insert(self.server_name.as_str().to_owned());
        for event in &state_events {
            if event.kind() == "m.room.member"
                && event.content().get("membership").and_then(Value::as_str) == Some("join")
            {
                if let Some((_, server)) = event.state_key().and_then(|k| k.split_once(':')) {
                    servers.insert(server.to_owned());
                }
            }
        }
        let joining = kept.get("state_key").and_then(Value::as_str).unwrap_or("");
        let state_events = if omit_members {
            without_members(state_events, joining)
        } else {
            state_events
        };
        let mut roots: Vec<ShortEventId> = state_events.iter().map(|e| e.short).collect();
        roots.push(short);
        let mut chain = self.auth_chain(&roots)?;
        if version.room_id_is_create_event_hash() {
            // From v12 the create event is an auth event of every other without being
            // listed: it belongs to every auth chain.
            if let Some(create) = state_events.iter().find(|e| e.kind() == "m.room.create") {
                if !chain.contains(&create.short) {
                    chain.push(create.short);
                }
            }
        }
        if omit_members {
            let in_state: BTreeSet<ShortEventId> = state_events.iter().map(|e| e.short).collect();
            chain.retain(|e| !in_state.contains(e));
        }
        Ok(JoinAnswer {
            state: state_events.iter().map(|e| e.pdu().clone()).collect(),
            auth_chain: self
                .store
                .events(&chain)?
                .iter()
                .map(|e| e.pdu().clone())
                .collect(),
            event: signed_here.then_some(kept),
            servers_in_room: servers.into_iter().collect(),
            members_omitted: omit_members,
        })
    }

    /// `send_leave`: receives the leave with id `event_id` that `origin` signed.
    pub async fn accept_remote_leave(
        &self,
        origin: &str,
        (room_id, event_id): (&str, &str),
        pdu: Value,
        source: &dyn MissingSource,
    ) -> ServiceResult<()> {
        self.accept_remote_member(origin, (room_id, event_id), "leave", pdu, source)
            .await
            .map(|_| ())
    }

    /// `send_knock`: receives the knock with id `event_id` that `origin` signed; answers
    /// the room's state for the knocking user to see (full PDUs, as v1.16 asks).
    pub async fn accept_remote_knock(
        &self,
        origin: &str,
        (room_id, event_id): (&str, &str),
        pdu: Value,
        source: &dyn MissingSource,
    ) -> ServiceResult<Vec<Value>> {
        let short = self
            .accept_remote_member(origin, (room_id, event_id), "knock", pdu, source)
            .await?;
        let meta = self.store.meta(short)?;
        self.invite_room_state(meta.state_before, None)
    }

    /// The checks of a `send_join`, `send_leave` or `send_knock` and the receipt of its
    /// event; answers the event's short id once it is accepted.
    async fn accept_remote_member(
        &self,
        origin: &str,
        (room_id, event_id): (&str, &str),
        membership: &str,
        mut pdu: Value,
        source: &dyn MissingSource,
    ) -> ServiceResult<ShortEventId> {
        let room = self.known_room(room_id)?;
        self.check_server_acl(room_id, origin)?;
        let version = room.version;
        check_membership_pdu(origin, room_id, &pdu, membership)?;
        let computed = event_hashes::event_id(&pdu, version)
            .map_err(|e| ServiceError::bad_json(format!("The event cannot be hashed: {e:?}")))?;
        if computed != event_id {
            return Err(ServiceError::invalid_param(format!(
                "The event's id is {computed}, not {event_id}"
            )));
        }
        if membership == "join" {
            self.countersign_restricted_join(room_id, version, &mut pdu)?;
        }
        let sent = pdu.clone();
        if self
            .local_joined(&self.store.state.load(room.record.state)?)?
            .is_none()
        {
            return Err(ServiceError::not_found(
                "This server has no member in the room",
            ));
        }
        let (_, outcome) = self.receive_membership_pdu(origin, pdu, source).await?;
        match outcome {
            PduOutcome::Accepted | PduOutcome::AlreadyKnown => {}
            PduOutcome::Rejected(why) | PduOutcome::SoftFailed(why) => {
                return Err(ServiceError::forbidden(format!(
                    "The {membership} is not allowed: {why}"
                )))
            }
            PduOutcome::Dropped(why) => {
                return Err(ServiceError::invalid_param(format!(
                    "The {membership} was refused: {why}"
                )))
            }
            PduOutcome::MissingEvents(ids) => {
                return Err(ServiceError::invalid_param(format!(
                    "The {membership} names events this server does not have: {}",
                    ids.join(", ")
                )))
            }
            PduOutcome::Outlier => {
                return Err(ServiceError::internal(
                    "a membership was kept as an outlier",
                ))
            }
        }
        let short = self
            .store
            .state
            .find_event(event_id)?
            .ok_or_else(|| ServiceError::internal("an accepted membership is not stored"))?;
        // The event answered for is the one sent (in rooms v1 and v2 an id the sender
        // chose could name another), of this room.
        let stored = self.store.event(short)?;
        if stored.meta.room != room.short
            || !super::receive::same_event(version, stored.pdu(), &sent)
        {
            return Err(ServiceError::invalid_param(format!(
                "Another event is held under the id {event_id}"
            )));
        }
        // An event sent again is answered only if it was accepted the first time.
        let accepted = graph::record(&self.store, short)?
            .is_some_and(|r| r.status == graph::EventStatus::Accepted);
        if !accepted {
            return Err(ServiceError::forbidden(format!(
                "The {membership} is not allowed"
            )));
        }
        Ok(short)
    }

    /// A restricted join naming one of our users as its authoriser gets our signature,
    /// if its user meets the room's conditions now (spec: "Restricted rooms"; a server
    /// may skip `make_join`).
    fn countersign_restricted_join(
        &self,
        room_id: &str,
        version: RoomVersion,
        pdu: &mut Value,
    ) -> ServiceResult<()> {
        let via = pdu
            .get("content")
            .and_then(|c| c.get("join_authorised_via_users_server"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(via) = via.filter(|_| version.has_restricted_joins()) else {
            return Ok(());
        };
        let ours = UserId::parse(&via).is_ok_and(|u| u.server_name() == self.server_name.as_str());
        if !ours {
            return Ok(());
        }
        let sender = pdu
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| ServiceError::invalid_param("The event's sender is not a user id"))?;
        self.restricted_join_authoriser(room_id, version, &sender)?;
        event_hashes::sign_event(pdu, self.server_name.as_str(), &self.signing_key, version)
            .map_err(|e| ServiceError::bad_json(format!("The event cannot be signed: {e:?}")))?;
        Ok(())
    }

    /// The auth chain of `roots`: every event reachable through `auth_events`, the roots
    /// themselves excluded unless another root's chain holds them.
    pub fn auth_chain(&self, roots: &[ShortEventId]) -> ServiceResult<Vec<ShortEventId>> {
        let mut seen: HashSet<ShortEventId> = HashSet::new();
        let mut todo: Vec<ShortEventId> = Vec::new();
        for root in roots {
            if let Some(record) = graph::record(&self.store, *root)? {
                todo.extend(record.auth);
            }
        }
        while let Some(next) = todo.pop() {
            if !seen.insert(next) {
                continue;
            }
            if let Some(record) = graph::record(&self.store, next)? {
                todo.extend(record.auth.iter().filter(|a| !seen.contains(a)));
            }
        }
        let mut chain: Vec<ShortEventId> = seen.into_iter().collect();
        chain.sort_unstable();
        Ok(chain)
    }

    /// A local user joined in `state`, if any.
    pub(super) fn local_joined(&self, state: &StateMap) -> ServiceResult<Option<String>> {
        let suffix = format!(":{}", self.server_name.as_str());
        for (key, short) in state {
            let (kind, state_key) = self.store.state.state_key_of(*key)?;
            if kind != "m.room.member" || !state_key.ends_with(&suffix) {
                continue;
            }
            let event = self.store.event(*short)?;
            if event.content().get("membership").and_then(Value::as_str) == Some("join") {
                return Ok(Some(state_key));
            }
        }
        Ok(None)
    }

    fn state_event_in(
        &self,
        state: &StateMap,
        kind: &str,
        state_key: &str,
    ) -> ServiceResult<Option<super::stored_event::StoredEvent>> {
        let Some(key) = self.store.state.find_state_key(kind, state_key)? else {
            return Ok(None);
        };
        match state.get(&key) {
            Some(short) => self.store.event(*short).map(Some),
            None => Ok(None),
        }
    }

    /// For a restricted room the user may join through a room of its `allow` list: the
    /// local member who authorises it. `None` when the room is not restricted, or the
    /// user is invited or joined already (no authoriser needed). A user meeting none of
    /// the conditions (or a room with none) is refused with 403, under `knock_restricted`
    /// too (such a user knocks); 400 `M_UNABLE_TO_AUTHORISE_JOIN` when we are in none
    /// of the rooms the conditions name, `M_UNABLE_TO_GRANT_JOIN` when none of our
    /// members may invite (spec: server-server API, "Restricted rooms").
    fn restricted_join_authoriser(
        &self,
        room_id: &str,
        version: RoomVersion,
        user: &UserId,
    ) -> ServiceResult<Option<String>> {
        let room = self.known_room(room_id)?;
        let Some(rules) = self
            .store
            .state_event(room.record.state, "m.room.join_rules", "")?
        else {
            return Ok(None);
        };
        let rule = rules
            .content()
            .get("join_rule")
            .and_then(Value::as_str)
            .unwrap_or("");
        let restricted = (rule == "restricted" && version.has_restricted_joins())
            || (rule == "knock_restricted" && version.has_knock_restricted());
        if !restricted {
            return Ok(None);
        }
        let current = self.membership_of(user.as_str(), room_id)?;
        if matches!(current.as_deref(), Some("invite") | Some("join")) {
            return Ok(None);
        }
        let allowed_rooms: Vec<String> = rules
            .content()
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|e| e.get("room_id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        // Spec: "If no conditions are available, or none match the required schema,
        // then the joining server is considered to have failed all conditions" (403).
        if allowed_rooms.is_empty() {
            return Err(ServiceError::forbidden(
                "The room's join rules grant access through no room",
            ));
        }
        let mut known_any = false;
        let mut allowed = false;
        for allowed_room in &allowed_rooms {
            // Only rooms we are still in tell a current membership.
            if self.has_local_member(allowed_room)? {
                known_any = true;
                if self.membership_of(user.as_str(), allowed_room)?.as_deref() == Some("join") {
                    allowed = true;
                    break;
                }
            }
        }
        if !allowed {
            if !known_any {
                return Err(ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::UnableToAuthoriseJoin,
                    "This server knows none of the rooms that grant access to this one",
                ));
            }
            // Under `knock_restricted` too: such a user may only knock (or join once
            // invited).
            return Err(ServiceError::forbidden(
                "The user is not joined to any room that grants access to this one",
            ));
        }
        // Spec: 400 `M_UNABLE_TO_GRANT_JOIN`, the joining server should try another.
        self.local_inviter(room_id)?.map(Some).ok_or_else(|| {
            ServiceError::new(
                ErrorKind::Invalid,
                ErrorCode::UnableToGrantJoin,
                "No member of this server may authorise the join",
            )
        })
    }
}

/// Heroes a room summary names at most (client-server API, `m.heroes`).
const HEROES: usize = 5;

/// `state` without its member events, but for a room with neither a name nor a canonical
/// alias those of its heroes: the first [`HEROES`] joined or invited members other than
/// `joining`, in the order they became members (former members when there are none).
fn without_members(state: Vec<StoredEvent>, joining: &str) -> Vec<StoredEvent> {
    let named = state.iter().any(|e| {
        (e.kind() == "m.room.name" && e.content().get("name").is_some())
            || (e.kind() == "m.room.canonical_alias" && e.content().get("alias").is_some())
    });
    let members_with = |memberships: &[&str]| -> Vec<(u64, ShortEventId)> {
        let mut found: Vec<(u64, ShortEventId)> = state
            .iter()
            .filter(|e| e.kind() == "m.room.member" && e.state_key() != Some(joining))
            .filter(|e| {
                let membership = e.content().get("membership").and_then(Value::as_str);
                membership.is_some_and(|m| memberships.contains(&m))
            })
            .map(|e| (e.meta.pos, e.short))
            .collect();
        found.sort_unstable();
        found.truncate(HEROES);
        found
    };
    let mut heroes = Vec::new();
    if !named {
        heroes = members_with(&["join", "invite"]);
        if heroes.is_empty() {
            // As the room summary does: former members name a room nobody else is in.
            heroes = members_with(&["leave", "ban"]);
        }
    }
    state
        .into_iter()
        .filter(|e| e.kind() != "m.room.member" || heroes.iter().any(|(_, h)| *h == e.short))
        .collect()
}

fn room_id_short(rooms: &Rooms, room_id: &str) -> ServiceResult<u64> {
    rooms
        .store
        .room_short(room_id)?
        .ok_or_else(|| ServiceError::not_found("Unknown room"))
}

/// The checks the spec names for `send_join`/`send_leave`/`send_knock` before the
/// receipt checks: a member event of this room, of the given membership, whose sender is
/// a user of `origin` and its own target.
pub fn check_membership_pdu(
    origin: &str,
    room_id: &str,
    pdu: &Value,
    membership: &str,
) -> ServiceResult<()> {
    let field = |name: &str| pdu.get(name).and_then(Value::as_str);
    if field("type") != Some("m.room.member") {
        return Err(ServiceError::invalid_param(
            "The event is not an m.room.member event",
        ));
    }
    if field("room_id") != Some(room_id) {
        return Err(ServiceError::invalid_param("The event is of another room"));
    }
    let sender = field("sender").unwrap_or("");
    let sender_server = UserId::parse(sender)
        .ok()
        .map(|u| u.server_name().to_owned());
    if sender_server.as_deref() != Some(origin) {
        return Err(ServiceError::invalid_param(
            "The event's sender is not a user of the requesting server",
        ));
    }
    if field("state_key") != Some(sender) {
        return Err(ServiceError::invalid_param(
            "The event's state_key is not its sender",
        ));
    }
    let actual = pdu
        .get("content")
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str);
    if actual != Some(membership) {
        return Err(ServiceError::invalid_param(format!(
            "The event's membership is not {membership}"
        )));
    }
    Ok(())
}

//! What other servers read of our rooms, under
//! [`server_visibility`](super::server_visibility): single events, history, state, auth
//! chains.
//!
//! Spec: server-server API, "Retrieving events" (`/event/{eventId}`, `/state/{roomId}`,
//! `/state_ids/{roomId}`, `/timestamp_to_event/{roomId}`), "Backfilling and retrieving
//! missing events" (`/backfill`, `/get_missing_events`) and "Authentication"
//! (`/event_auth`). An event the asking server may not see is given redacted to a server
//! in the room (by id, and on walks of the history, `/backfill`, `/get_missing_events`,
//! so that the walk reaches the events before it; Synapse answers the same) and left out
//! or answered as unknown otherwise; rejected events are never served.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::graph::{self, EventStatus};
use super::server_visibility::{server_may_see, Member};
use super::state_store::{ShortEventId, ShortStateHash};
use super::stored_event::StoredEvent;
use super::Rooms;
use crate::services::error::{ServiceError, ServiceResult};

/// Events one `/backfill` answers at most.
pub const MAX_BACKFILL: usize = 100;
/// Events one `/get_missing_events` answers at most.
pub const MAX_MISSING: usize = 100;
/// `latest_events` of a `/get_missing_events` looked at, at most.
const MAX_LATEST: usize = 50;

/// Visibility answers of one request, by the state snapshot before the event (and
/// whether the server was counted a member by a reset grant): a run of messages shares
/// one snapshot, so a page of history costs a few membership reads, not one per event.
type SeenCache = HashMap<(ShortStateHash, bool), bool>;

/// The state before an event and its auth chain, as `/state` and `/state_ids` answer.
pub struct StateAtEvent {
    /// The state events.
    pub state: Vec<StoredEvent>,
    /// Their auth chain (and the event's).
    pub auth_chain: Vec<StoredEvent>,
}

impl Rooms {
    /// Spec: `/state`, `/state_ids`, `/event_auth`, `/backfill`, `/get_missing_events`
    /// answer 403 to a server that is not in the room (none of its users joined now) or
    /// that the room's ACL denies. A server a state resolution of ours put out of the
    /// room lately counts as in it (see [`reset_out`](super::reset_out)).
    fn check_server_in_room(&self, room_id: &str, server: &str) -> ServiceResult<()> {
        self.check_server_acl(room_id, server)?;
        if !self.server_in_room(room_id, server)? {
            return Err(ServiceError::forbidden(
                "The requesting server is not in the room",
            ));
        }
        Ok(())
    }

    /// Whether `server` has a member joined to `room_id` now (or counts as one, see
    /// [`check_server_in_room`](Self::check_server_in_room)). A room we do not hold has
    /// none of its servers either (Synapse answers the same).
    fn server_in_room(&self, room_id: &str, server: &str) -> ServiceResult<bool> {
        Ok(self.server_joined(room_id, server)?
            || (self.store.room(room_id)?.is_some()
                && self.reset_servers.granted(room_id, server).is_some()))
    }

    /// Whether `server` has a member joined to `room_id` now, as the room's current state
    /// says (a server a reset put out, which reads what we held then, does not).
    fn server_joined(&self, room_id: &str, server: &str) -> ServiceResult<bool> {
        Ok(self.remote_servers(room_id)?.iter().any(|s| s == server))
    }

    /// A stored, not rejected event of `room_id` (when given) that `server` may see.
    fn event_seen_by(
        &self,
        server: &str,
        room_id: Option<&str>,
        event_id: &str,
    ) -> ServiceResult<Option<StoredEvent>> {
        let Some(short) = self.store.state.find_event(event_id)? else {
            return Ok(None);
        };
        self.short_seen_by(server, room_id, short, &mut SeenCache::new())
    }

    fn short_seen_by(
        &self,
        server: &str,
        room_id: Option<&str>,
        short: ShortEventId,
        cache: &mut SeenCache,
    ) -> ServiceResult<Option<StoredEvent>> {
        let Some((event, room)) = self.held_for_servers(room_id, short)? else {
            return Ok(None);
        };
        Ok(self
            .server_may_see_event(server, &event, &room, cache)?
            .then_some(event))
    }

    /// A stored event of `room_id` (when given) that may be served to other servers at
    /// all (not rejected, not kept out of band), with its room.
    fn held_for_servers(
        &self,
        room_id: Option<&str>,
        short: ShortEventId,
    ) -> ServiceResult<Option<(StoredEvent, super::event_store::Room)>> {
        if let Some(record) = graph::record(&self.store, short)? {
            if matches!(
                record.status,
                EventStatus::Rejected { .. } | EventStatus::OutOfBand
            ) {
                return Ok(None);
            }
        }
        let event = self.store.event(short)?;
        let Ok(room) = self.store.room_by_short(event.meta.room) else {
            return Ok(None);
        };
        if room_id.is_some_and(|r| r != room.record.room_id) {
            return Ok(None);
        }
        Ok(Some((event, room)))
    }

    /// Whether `server` may see `event` of `room` under the room's history visibility.
    /// Spec: client-server API, "History visibility", "Server behaviour", for each of
    /// the server's users: the state at the event decides; a `m.room.history_visibility`
    /// event, and a user's own member event, are seen when the state before or after it
    /// allows.
    fn server_may_see_event(
        &self,
        server: &str,
        event: &StoredEvent,
        room: &super::event_store::Room,
        cache: &mut SeenCache,
    ) -> ServiceResult<bool> {
        // A room held with a partial state does not know the members of the servers the
        // resident server named: where the history was never restricted to `invited`
        // or `joined`, such a server (in the room now) may read it all, as its members'
        // events would tell once they are in.
        let partial_member = room.record.partial_state.as_ref().is_some_and(|p| {
            !room.record.visibility_restricted && p.servers.iter().any(|s| s == server)
        });
        if partial_member {
            return Ok(true);
        }
        // A server put out by a resolution of ours reads what we held then as a member.
        let granted = self
            .reset_servers
            .granted(&room.record.room_id, server)
            .is_some_and(|grant| grant.covers(event.meta.pos, event.short));
        let mut seen_at = |snapshot: ShortStateHash| -> ServiceResult<bool> {
            if let Some(seen) = cache.get(&(snapshot, granted)) {
                return Ok(*seen);
            }
            let now = if granted {
                Member::Yes
            } else {
                Member::In(room.record.state)
            };
            let seen = server_may_see(&self.store, server, snapshot, now)?;
            cache.insert((snapshot, granted), seen);
            Ok(seen)
        };
        if seen_at(event.meta.state_before)? {
            return Ok(true);
        }
        let after = event.meta.state_after;
        let either_side = match (event.kind(), event.state_key()) {
            ("m.room.history_visibility", Some("")) => true,
            ("m.room.member", Some(user)) => user
                .split_once(':')
                .is_some_and(|(_, user_server)| user_server == server),
            _ => false,
        };
        Ok(either_side && after != 0 && after != event.meta.state_before && seen_at(after)?)
    }

    /// An event met on a walk of the room's history for `server` (`/backfill`,
    /// `/get_missing_events`): its PDU, redacted when the server may not see it, so that
    /// the walk goes on to the events before it the server may see (as Synapse answers);
    /// `None` for one never served, or one a server in the room only by a reset's grant
    /// may not see.
    fn walked_for_server(
        &self,
        (server, joined): (&str, bool),
        room_id: &str,
        short: ShortEventId,
        cache: &mut SeenCache,
    ) -> ServiceResult<Option<Value>> {
        let Some((event, room)) = self.held_for_servers(Some(room_id), short)? else {
            return Ok(None);
        };
        if self.server_may_see_event(server, &event, &room, cache)? {
            return Ok(Some(self.unless_erased(&event, room.version)));
        }
        // A server in the room only by a reset's grant gets nothing past what it may see.
        if !joined {
            return Ok(None);
        }
        Ok(Some(crate::core::redaction::redact(
            event.pdu(),
            room.version,
        )))
    }

    /// The PDU of `event_id` for `server`: 404 when we do not have it or it was
    /// rejected; one the server may not see is redacted for a server in the room (it may
    /// need its auth-relevant keys for an auth chain or a state resolution; Synapse
    /// answers the same) and unknown to others (the same 404, so as not to tell which);
    /// 403 when the room's ACL denies the server (spec: "Server Access Control Lists",
    /// every request of a denied server is refused; told only of an event it could be
    /// given).
    pub fn event_for_server(&self, server: &str, event_id: &str) -> ServiceResult<Value> {
        let not_found = || ServiceError::not_found("Event not found");
        let short = self
            .store
            .state
            .find_event(event_id)?
            .ok_or_else(not_found)?;
        let (event, room) = self.held_for_servers(None, short)?.ok_or_else(not_found)?;
        let room_id = room.record.room_id.as_str();
        let seen = self.server_may_see_event(server, &event, &room, &mut SeenCache::new())?;
        if !seen && !self.server_joined(room_id, server)? {
            return Err(not_found());
        }
        self.check_server_acl(room_id, server)?;
        Ok(match seen {
            true => self.unless_erased(&event, room.version),
            false => crate::core::redaction::redact(event.pdu(), room.version),
        })
    }

    /// `event`'s PDU, redacted when its sender's account was erased. Spec: `POST
    /// /account/deactivate`, `erase`: "any users (or servers) which join the room after
    /// the erasure request are served redacted copies"; a server in the room before has
    /// its copy already, so every server is served one (as Synapse does for `/event`,
    /// `/backfill` and `/get_missing_events`). State events are served whole: a redacted
    /// create event loses its `room_version` (rooms v1–v10), a server ACL its `allow`
    /// (denying every server), power levels (v1–v10) their `invite`, a member event its
    /// `join_authorised_via_users_server` (v8): a server given those could not join or
    /// would judge the room's events otherwise than the rest of it.
    fn unless_erased(&self, event: &StoredEvent, version: crate::core::RoomVersion) -> Value {
        match self.store.erased_at(event.sender()) {
            Some(_) if event.state_key().is_none() => {
                crate::core::redaction::redact(event.pdu(), version)
            }
            _ => event.pdu().clone(),
        }
    }

    /// `/timestamp_to_event`: the event closest to `ts` in direction `dir` that `server`
    /// may see.
    pub fn timestamp_to_event_for_server(
        &self,
        server: &str,
        room_id: &str,
        ts: u64,
        dir: super::history::Direction,
    ) -> ServiceResult<(String, u64)> {
        self.check_server_acl(room_id, server)?;
        let room = self.known_room(room_id)?;
        let mut cache = SeenCache::new();
        self.closest_event(room.short, ts, dir, |event| {
            Ok(self
                .short_seen_by(server, Some(room_id), event.short, &mut cache)?
                .is_some())
        })
    }

    /// `/backfill`: the events `from` and those before them (newest first, by a walk of
    /// `prev_events`), up to `limit`, those `server` may see.
    pub fn backfill_for_server(
        &self,
        server: &str,
        room_id: &str,
        from: &[String],
        limit: usize,
    ) -> ServiceResult<Vec<Value>> {
        self.check_server_in_room(room_id, server)?;
        let joined = self.server_joined(room_id, server)?;
        let limit = limit.min(MAX_BACKFILL);
        let mut seen = HashSet::new();
        // Deepest first: (depth, short).
        let mut frontier: BTreeSet<(u64, ShortEventId)> = BTreeSet::new();
        for id in from {
            if let Some(short) = self.store.state.find_event(id)? {
                let depth = graph::record(&self.store, short)?.map_or(0, |r| r.depth);
                frontier.insert((depth, short));
            }
        }
        let mut cache = SeenCache::new();
        let mut out = Vec::new();
        while let Some((_, short)) = frontier.pop_last() {
            if out.len() >= limit {
                break;
            }
            if !seen.insert(short) {
                continue;
            }
            let Some(pdu) = self.walked_for_server((server, joined), room_id, short, &mut cache)?
            else {
                continue;
            };
            if let Some(record) = graph::record(&self.store, short)? {
                for prev in record.prev {
                    if !seen.contains(&prev) {
                        let d = graph::record(&self.store, prev)?.map_or(0, |r| r.depth);
                        frontier.insert((d, prev));
                    }
                }
            }
            out.push(pdu);
        }
        Ok(out)
    }

    /// `/get_missing_events`: a breadth-first walk of the `prev_events` of `latest`,
    /// skipping `earliest` and events below `min_depth`, up to `limit`, oldest first.
    pub fn missing_events_for_server(
        &self,
        server: &str,
        room_id: &str,
        (earliest, latest): (&[String], &[String]),
        (limit, min_depth): (usize, u64),
    ) -> ServiceResult<Vec<Value>> {
        self.check_server_in_room(room_id, server)?;
        let joined = self.server_joined(room_id, server)?;
        let limit = limit.min(MAX_MISSING);
        let mut stop: HashSet<ShortEventId> = HashSet::new();
        for id in earliest {
            if let Some(short) = self.store.state.find_event(id)? {
                stop.insert(short);
            }
        }
        let mut queue = std::collections::VecDeque::new();
        let mut seen: HashSet<ShortEventId> = HashSet::new();
        // A sender asks from its forward extremities, a handful; each costs a visibility
        // check here, so only so many are taken.
        for id in latest.iter().take(MAX_LATEST) {
            // The latest events themselves must be ones the server may see.
            let Some(event) = self.event_seen_by(server, Some(room_id), id)? else {
                continue;
            };
            seen.insert(event.short);
            if let Some(record) = graph::record(&self.store, event.short)? {
                queue.extend(record.prev);
            }
        }
        let mut cache = SeenCache::new();
        let mut out: Vec<(u64, ShortEventId, Value)> = Vec::new();
        while let Some(short) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            if stop.contains(&short) || !seen.insert(short) {
                continue;
            }
            let Some(record) = graph::record(&self.store, short)? else {
                continue;
            };
            if record.depth < min_depth {
                continue;
            }
            let Some(pdu) = self.walked_for_server((server, joined), room_id, short, &mut cache)?
            else {
                continue;
            };
            queue.extend(record.prev.iter().copied());
            out.push((record.depth, short, pdu));
        }
        out.sort_unstable_by_key(|(depth, short, _)| (*depth, *short));
        Ok(out.into_iter().map(|(_, _, pdu)| pdu).collect())
    }

    /// `/state` and `/state_ids` (`ids_only`): the state before `event_id` and the auth
    /// chain of it and of the event. `/state` answers 404 when the server may not see the
    /// event (the events would tell of history it may not read); `/state_ids` answers at
    /// any event of the room for a server in it, as Synapse does: the ids tell nothing,
    /// `/event` gives what the server may not see redacted, and a server filling a gap
    /// before an event it cannot see needs the state there.
    pub fn state_for_server(
        &self,
        server: &str,
        room_id: &str,
        (event_id, ids_only): (&str, bool),
    ) -> ServiceResult<StateAtEvent> {
        self.check_server_in_room(room_id, server)?;
        if self.is_partial(room_id)? {
            return Err(ServiceError::not_found(
                "This server's state of the room is partial (its member list is not in yet)",
            ));
        }
        // (A server in the room only by a reset's grant reads what it may see alone.)
        let any_event = ids_only && self.server_joined(room_id, server)?;
        let event = match any_event {
            true => match self.store.state.find_event(event_id)? {
                Some(short) => self.held_for_servers(Some(room_id), short)?.map(|(e, _)| e),
                None => None,
            },
            false => self.event_seen_by(server, Some(room_id), event_id)?,
        }
        .ok_or_else(|| ServiceError::not_found("Event not found"))?;
        // An event held without its state (an outlier, or rejected on its auth events
        // alone) has none to tell; an empty answer would read as a room without state.
        let placed = matches!(
            graph::record(&self.store, event.short)?.map(|r| r.status),
            Some(EventStatus::Accepted | EventStatus::SoftFailed)
                | Some(EventStatus::Rejected { .. })
        );
        // (Before the create event the state is empty indeed.)
        if !placed || (event.meta.state_before == 0 && event.kind() != "m.room.create") {
            return Err(ServiceError::not_found(
                "The state at this event is not known here",
            ));
        }
        let map = self.store.state.load(event.meta.state_before)?;
        let shorts: Vec<ShortEventId> = map.values().copied().collect();
        let mut roots = shorts.clone();
        roots.push(event.short);
        let chain = self.auth_chain_with_create(&roots, &event)?;
        Ok(StateAtEvent {
            state: self.store.events(&shorts)?,
            auth_chain: self.store.events(&chain)?,
        })
    }

    /// The auth chain of `roots`; from v12, where the create event is nobody's listed auth
    /// event, with the create event of `event`'s room.
    fn auth_chain_with_create(
        &self,
        roots: &[ShortEventId],
        event: &StoredEvent,
    ) -> ServiceResult<Vec<ShortEventId>> {
        let mut chain = self.auth_chain(roots)?;
        let room = self.store.room_by_short(event.meta.room)?;
        if room.version.room_id_is_create_event_hash() {
            let create = self
                .store
                .state_event(room.record.state, "m.room.create", "")?;
            if let Some(create) = create.filter(|c| c.short != event.short) {
                if !chain.contains(&create.short) {
                    chain.push(create.short);
                }
            }
        }
        Ok(chain)
    }

    /// `/event_auth`: the auth chain of one event. A server with a member joined now
    /// asks at any event of the room (it may need the chain of one it was given
    /// redacted), and gets the chain's events it may not see redacted; one in the room
    /// only by a reset's grant asks at events it may see.
    pub fn event_auth_for_server(
        &self,
        server: &str,
        room_id: &str,
        event_id: &str,
    ) -> ServiceResult<Vec<Value>> {
        self.check_server_in_room(room_id, server)?;
        let joined = self.server_joined(room_id, server)?;
        let event = match joined {
            true => match self.store.state.find_event(event_id)? {
                Some(short) => self.held_for_servers(Some(room_id), short)?.map(|(e, _)| e),
                None => None,
            },
            false => self.event_seen_by(server, Some(room_id), event_id)?,
        }
        .ok_or_else(|| ServiceError::not_found("Event not found"))?;
        let chain = self.auth_chain_with_create(&[event.short], &event)?;
        let room = self.store.room_by_short(event.meta.room)?;
        let mut cache = SeenCache::new();
        let mut out = Vec::with_capacity(chain.len());
        for link in self.store.events(&chain)? {
            let seen = !joined || self.server_may_see_event(server, &link, &room, &mut cache)?;
            out.push(match seen {
                true => link.pdu().clone(),
                false => crate::core::redaction::redact(link.pdu(), room.version),
            });
        }
        Ok(out)
    }
}

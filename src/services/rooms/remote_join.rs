//! Our user joins a room another server holds: the answer of its `send_join`, checked and
//! taken in.
//!
//! Spec: server-server API, "Joining Rooms": the joining server checks every event of the
//! answer's `state` and `auth_chain` (the checks on receipt of a PDU: format, signatures,
//! hashes here; the auth rules in the room's writer, see the writer's `remote_join`), and
//! the room's state is the `state` the resident server gave, before our join. The
//! requests themselves (`make_join`, `send_join`) are the federation service's.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::receive::{verify_signatures, MissingSource, PduOutcome};
use super::writer::{Completion, FullState, RemoteEvent, RemoteJoin};
use super::Rooms;
use crate::core::{event_hashes, pdu_checks, RoomVersion};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::records::decode;
use crate::services::rooms::records::RoomRecord;
use crate::storage::Table;

/// Rooms whose other servers are remembered at most (the map is emptied past this).
const REMOTE_SERVERS_CACHED: usize = 10_000;

/// How often [`Rooms::wait_full_state`] looks at the room again.
const FULL_STATE_POLL: Duration = Duration::from_millis(50);

/// Servers of a partial state's `servers_in_room` kept at most (each is sent our events
/// and may be asked for the room's state).
pub const MAX_SERVERS_IN_ROOM: usize = 1_000;

/// Events a join's answer may hold (state and auth chain together).
pub const MAX_JOIN_EVENTS: usize = 200_000;

fn bad_answer(why: impl Into<String>) -> ServiceError {
    ServiceError::new(
        ErrorKind::RemoteFailed,
        ErrorCode::Unknown,
        format!(
            "The resident server's answer to our join is unusable: {}",
            why.into()
        ),
    )
}

impl Rooms {
    /// Checks and takes in `answer` (a `send_join` answer) for our `join` (the event as we
    /// signed it, or as the resident server countersigned it) in `room_id` of `version`.
    /// Answers the servers to ask for the member list when the answer left the members
    /// out (`members_omitted`: the room is held with a partial state until then).
    pub async fn join_through(
        &self,
        room_id: &str,
        version: RoomVersion,
        (join, mut answer): (Value, Value),
        via: &str,
        source: &dyn MissingSource,
    ) -> ServiceResult<Option<Vec<String>>> {
        // The servers to send to and ask while the members are unknown: the one we
        // joined through first (a resident may leave itself out, or name none), then
        // those it names, each once, [`MAX_SERVERS_IN_ROOM`] at most.
        let partial = match answer.get("members_omitted").and_then(Value::as_bool) {
            Some(true) => {
                let mut servers = vec![via.to_owned()];
                let named = answer.get("servers_in_room").and_then(Value::as_array);
                for server in named.into_iter().flatten().filter_map(Value::as_str) {
                    if servers.len() >= MAX_SERVERS_IN_ROOM {
                        break;
                    }
                    if crate::core::ServerName::parse(server).is_ok()
                        && !servers.iter().any(|s| s == server)
                    {
                        servers.push(server.to_owned());
                    }
                }
                Some(servers)
            }
            _ => None,
        };
        let (events, state_ids) = self
            .checked_state_answer(room_id, version, (&mut answer, "state"), source)
            .await?;
        let join = self
            .checked(room_id, version, join, source)
            .await
            .map_err(|why| bad_answer(format!("our join came back unusable: {why}")))?;
        let outcome = self
            .writers
            .join_remote(
                room_id,
                RemoteJoin {
                    version,
                    events,
                    state_ids,
                    join,
                    partial: partial.clone(),
                },
            )
            .await?;
        match outcome {
            PduOutcome::Accepted => Ok(partial),
            PduOutcome::AlreadyKnown => Ok(None),
            other => Err(ServiceError::forbidden(format!(
                "Our join was not allowed by the state the resident server gave: {other:?}"
            ))),
        }
    }

    /// Completes the partial state of `room_id` (joined with `omit_members`) with
    /// `answer`, another server's `GET /state` at our join: its events are checked as a
    /// join's answer is, then the writer adds the members (see the writer's
    /// `partial_state` module).
    pub async fn complete_state(
        &self,
        room_id: &str,
        version: RoomVersion,
        (mut answer, join_event): (Value, &str),
        source: &dyn MissingSource,
    ) -> ServiceResult<Completion> {
        let (events, state_ids) = self
            .checked_state_answer(room_id, version, (&mut answer, "pdus"), source)
            .await?;
        let full = FullState {
            join_event: join_event.to_owned(),
            events,
            state_ids,
        };
        self.writers.complete_state(room_id, full).await
    }

    /// The events of a state answer (`send_join`'s `state` or `/state`'s `pdus`, with
    /// `auth_chain`), each checked (format, signatures, hashes), and the ids of the state
    /// events among them. Refuses an answer without a usable create event of `version`.
    /// The events are moved out of `answer` (a big room's state is not held twice).
    async fn checked_state_answer(
        &self,
        room_id: &str,
        version: RoomVersion,
        (answer, state_key): (&mut Value, &str),
        source: &dyn MissingSource,
    ) -> ServiceResult<(Vec<RemoteEvent>, Vec<String>)> {
        let mut list = |key: &str| -> ServiceResult<Vec<Value>> {
            match answer.get_mut(key).map(Value::take) {
                Some(Value::Array(list)) => Ok(list),
                _ => Err(bad_answer(format!("no {key} list"))),
            }
        };
        let (state, chain) = (list(state_key)?, list("auth_chain")?);
        let total = state.len() + chain.len();
        if total > MAX_JOIN_EVENTS {
            return Err(bad_answer("too many events"));
        }
        let mut seen = HashSet::new();
        let mut events = Vec::with_capacity(total);
        let mut state_ids = Vec::with_capacity(state.len());
        let mut create_version = None;
        // How many events were dropped, and why the first was (for the error).
        let mut dropped: (usize, Option<String>) = (0, None);
        for (pdu, in_state) in state
            .into_iter()
            .map(|p| (p, true))
            .chain(chain.into_iter().map(|p| (p, false)))
        {
            let event = match self.checked(room_id, version, pdu, source).await {
                Ok(event) => event,
                Err(reason) => {
                    dropped.0 += 1;
                    dropped.1.get_or_insert(reason);
                    continue;
                }
            };
            if in_state {
                state_ids.push(event.event_id.clone());
            }
            if event.pdu.get("type").and_then(Value::as_str) == Some("m.room.create") {
                create_version = Some(
                    event
                        .pdu
                        .get("content")
                        .and_then(|c| c.get("room_version"))
                        .and_then(Value::as_str)
                        .unwrap_or("1")
                        .to_owned(),
                );
            }
            if seen.insert(event.event_id.clone()) {
                events.push(event);
            }
        }
        if create_version.as_deref() != Some(version.as_str()) {
            let why = match dropped {
                (0, _) => String::new(),
                (n, first) => format!(
                    " ({n} of {total} events dropped, the first because {})",
                    first.unwrap_or_default()
                ),
            };
            return Err(bad_answer(format!(
                "no usable create event of version {version}{why}"
            )));
        }
        Ok((events, state_ids))
    }

    /// Checks 1 to 3 of one event of a join's answer: the event ready for the writer, or
    /// why not (logged too) when it is malformed, of another room or badly signed.
    async fn checked(
        &self,
        room_id: &str,
        version: RoomVersion,
        pdu: Value,
        source: &dyn MissingSource,
    ) -> Result<RemoteEvent, String> {
        if let Err(e) = pdu_checks::check_format(version, &pdu) {
            tracing::info!(room = %room_id, "a join answer's event is malformed: {e}");
            return Err(format!("it is malformed: {e}"));
        }
        let event_id = event_hashes::event_id(&pdu, version)
            .map_err(|e| format!("it has no event id: {e}"))?;
        let of_room = if pdu.get("type").and_then(Value::as_str) == Some("m.room.create")
            && version.room_id_is_create_event_hash()
        {
            event_hashes::room_id_from_create_event(&pdu, version)
                .ok()
                .as_deref()
                == Some(room_id)
        } else {
            pdu.get("room_id").and_then(Value::as_str) == Some(room_id)
        };
        if !of_room {
            tracing::info!(room = %room_id, event = %event_id, "a join answer's event is of another room");
            return Err(format!("{event_id} is of another room"));
        }
        let signed_by = match verify_signatures(version, &pdu, source).await {
            Ok(servers) => servers,
            Err(reason) => {
                tracing::info!(room = %room_id, event = %event_id, "a join answer's event is dropped: {reason}");
                return Err(format!("{event_id}: {reason}"));
            }
        };
        let (pdu, _) = pdu_checks::check_content_hash(version, pdu);
        Ok(RemoteEvent {
            event_id,
            pdu,
            signed_by,
            outlier: true,
            forward: false,
            given_state: None,
            history_pos: None,
            redacted_by: 0,
            gap_states: Vec::new(),
        })
    }

    /// The other servers with a joined member in the room's current state, read from its
    /// member events once per state snapshot.
    pub fn remote_servers(&self, room_id: &str) -> ServiceResult<Arc<Vec<String>>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(Arc::default());
        };
        let snapshot = room.record.state;
        // A partial state's servers are not in the snapshot: neither read from nor kept
        // in the cache, whose entries the snapshot alone names.
        let partial = room.record.partial_state.as_ref();
        if partial.is_none() {
            if let Some((at, servers)) = self.cached_servers().get(room_id) {
                if *at == snapshot {
                    return Ok(Arc::clone(servers));
                }
            }
        }
        let own = self.server_name.as_str();
        let mut servers: Vec<String> = self
            .store
            .state_events(snapshot, Some("m.room.member"))?
            .iter()
            .filter(|e| e.content().get("membership").and_then(Value::as_str) == Some("join"))
            .filter_map(|e| e.state_key()?.split_once(':').map(|(_, s)| s.to_owned()))
            .filter(|s| s != own)
            .collect();
        if let Some(partial) = partial {
            servers.extend(partial.servers.iter().filter(|s| *s != own).cloned());
        }
        servers.sort_unstable();
        servers.dedup();
        let servers = Arc::new(servers);
        if partial.is_some() {
            return Ok(servers);
        }
        let mut cache = self.cached_servers();
        if cache.len() >= REMOTE_SERVERS_CACHED {
            cache.clear();
        }
        cache.insert(room_id.to_owned(), (snapshot, Arc::clone(&servers)));
        Ok(servers)
    }

    /// The other servers in the room to ask for its past, those in it longest first (as
    /// the spec recommends for `/timestamp_to_event`, and Synapse does for backfill): the
    /// creator's server, then by the oldest member event of theirs in the current state.
    /// Servers the room's ACL denies are left out (their answers would be thrown away).
    pub fn servers_by_seniority(&self, room_id: &str) -> ServiceResult<Vec<String>> {
        let servers = self.remote_servers(room_id)?;
        let Some(room) = self.store.room(room_id)? else {
            return Ok(Vec::new());
        };
        let state = room.record.state;
        // Ranked by member events only in rooms of a modest size: reading every member
        // event of a big room to pick three servers would cost more than asking.
        let members = match room.record.joined <= MAX_MEMBERS_RANKED {
            true => self.store.state_events(state, Some("m.room.member"))?,
            false => Vec::new(),
        };
        let member_since = members.iter().filter_map(|event| {
            let (_, server) = event.state_key()?.split_once(':')?;
            Some((server, event.meta.pos))
        });
        let create = self.store.state_events(state, Some("m.room.create"))?;
        let creator = create
            .first()
            .and_then(|e| e.sender().split_once(':').map(|(_, s)| s));
        let mut ranked = by_seniority(&servers, member_since, creator);
        let mut allowed = Vec::with_capacity(ranked.len());
        for server in ranked.drain(..) {
            if self.server_allowed(room_id, &server)? {
                allowed.push(server);
            }
        }
        Ok(allowed)
    }

    fn cached_servers(&self) -> std::sync::MutexGuard<'_, super::RemoteServers> {
        self.remote_servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rooms held with a partial state (their member resync is to run).
    pub fn partial_state_rooms(&self) -> ServiceResult<Vec<String>> {
        let mut out = Vec::new();
        for entry in self.store.db.scan_prefix(Table::ShortroomidRoom, &[]) {
            let (_, value) = entry?;
            let record: RoomRecord = decode(Table::ShortroomidRoom, &value)?;
            if record.partial_state.is_some() {
                out.push(record.room_id);
            }
        }
        Ok(out)
    }

    /// Whether the room is held with a partial state (its members not all known yet).
    pub fn is_partial(&self, room_id: &str) -> ServiceResult<bool> {
        Ok(self
            .store
            .room(room_id)?
            .is_some_and(|room| room.record.partial_state.is_some()))
    }

    /// Waits, at most `limit`, until the room's state is whole (a room joined with a
    /// partial state whose member list is not in yet); answers whether it is.
    pub async fn wait_full_state(&self, room_id: &str, limit: Duration) -> ServiceResult<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.is_partial(room_id)? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(FULL_STATE_POLL).await;
        }
    }

    /// Whether one of our users is joined to the room (we can then join others locally).
    pub fn has_local_member(&self, room_id: &str) -> ServiceResult<bool> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(false);
        };
        let state = self.store.state.load(room.record.state)?;
        Ok(self.local_joined(&state)?.is_some())
    }
}

/// Rooms with more joined members than this rank servers for backfill without reading
/// member events (the creator's server first, then by name).
const MAX_MEMBERS_RANKED: u64 = 2_000;

/// `servers` ranked for asking about the room's past: the creator's server first, then by
/// the position of their oldest member event (`member_since`: each member event's server
/// and position), then by name.
fn by_seniority<'a>(
    servers: &[String],
    member_since: impl Iterator<Item = (&'a str, u64)>,
    creator: Option<&str>,
) -> Vec<String> {
    let mut oldest: std::collections::HashMap<&str, u64> =
        servers.iter().map(|s| (s.as_str(), u64::MAX)).collect();
    for (server, pos) in member_since {
        if let Some(oldest) = oldest.get_mut(server) {
            *oldest = (*oldest).min(pos);
        }
    }
    let mut ranked: Vec<(bool, u64, &str)> = oldest
        .into_iter()
        .map(|(server, pos)| (creator != Some(server), pos, server))
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, _, s)| s.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::by_seniority;

    #[test]
    fn the_creators_server_then_those_in_the_room_longest_are_asked_first() {
        let servers: Vec<String> = ["a.test", "b.test", "c.test", "z.test"]
            .map(String::from)
            .to_vec();
        let members = [
            ("a.test", 90),
            ("b.test", 40),
            ("b.test", 95),
            ("c.test", 60),
            ("z.test", 80),
            ("elsewhere.test", 1),
        ];
        let ranked = by_seniority(&servers, members.into_iter(), Some("z.test"));
        assert_eq!(ranked, ["z.test", "b.test", "c.test", "a.test"]);
        let ranked = by_seniority(&servers, members.into_iter(), None);
        assert_eq!(ranked, ["b.test", "c.test", "z.test", "a.test"]);
    }
}

//! A room's head as its writer keeps it in memory: the room record, the current state
//! map and the state events read lately, the power levels, the forward extremities and
//! the other servers' joined members.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::core::power_levels::PowerLevels;
use crate::core::RoomVersion;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::encode;
use crate::services::rooms::event_store::{EventStore, StoredEvent};
use crate::services::rooms::graph;
use crate::services::rooms::guests;
use crate::services::rooms::records::{EventMeta, RoomRecord};
use crate::services::rooms::state_store::{ShortEventId, ShortStateHash, StateMap};
use crate::storage::Table;
use serde_json::Value;

use super::LocalMember;

/// State events a writer keeps parsed; the cache is cleared when it grows past this.
pub(super) const MAX_CACHED_EVENTS: usize = 512;

/// Events whose [`EventFacts`] a writer keeps; cleared when it grows past this.
const MAX_FACTS: usize = 512;

/// What a room's writer reads of one of the room's events when it is the prev or auth
/// event of one being received: its room, the snapshots around it (its metadata) and its
/// status (its graph record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EventFacts {
    pub(super) room: u64,
    pub(super) state_before: ShortStateHash,
    pub(super) state_after: ShortStateHash,
    pub(super) status: Option<graph::EventStatus>,
}

/// A room's head as its writer keeps it.
pub(super) struct RoomHead {
    pub(super) short: u64,
    pub(super) record: RoomRecord,
    pub(super) version: RoomVersion,
    pub(super) state: StateMap,
    pub(super) cache: HashMap<ShortEventId, Arc<StoredEvent>>,
    /// The facts of the room's events read or written lately (see [`RoomHead::facts`]).
    facts: HashMap<ShortEventId, EventFacts>,
    /// Local joined members, loaded when first needed.
    pub(super) local_members: Option<Vec<LocalMember>>,
    /// Local users with a member event in the current state, whatever their membership,
    /// loaded when first needed and kept current by [`RoomHead::member_changed`].
    pub(super) local_member_users: Option<BTreeSet<String>>,
    /// The forward extremities with their short ids and depths, loaded when first needed.
    pub(super) extremities: Option<Vec<graph::Extremity>>,
    /// The other servers' joined members, read from the current state when first needed
    /// and kept current after each member event.
    pub(super) remote_servers: Option<RemoteJoined>,
    /// Whether redactions may wait for their targets in this room (see the writer's
    /// `redactions`), looked up when first needed; turned on when one starts waiting.
    pub(super) redactions_waiting: Option<bool>,
}

/// Other servers' joined members of a room, and the servers they make up.
#[derive(Default)]
pub(super) struct RemoteJoined {
    pub(super) users: std::collections::HashSet<String>,
    pub(super) per_server: HashMap<String, usize>,
    pub(super) servers: BTreeSet<String>,
}

impl RemoteJoined {
    /// `server` counts as in the room whatever its members' events say (a partial
    /// state's `servers_in_room`, whose members are not known yet).
    pub(super) fn hold(&mut self, server: &str) {
        *self.per_server.entry(server.to_owned()).or_insert(0) += 1;
        self.servers.insert(server.to_owned());
    }

    /// `user` (of another server) is now joined, or not.
    pub(super) fn set(&mut self, user: &str, joined: bool) {
        let Some((_, server)) = user.split_once(':') else {
            return;
        };
        if joined {
            if self.users.insert(user.to_owned()) {
                let count = self.per_server.entry(server.to_owned()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    self.servers.insert(server.to_owned());
                }
            }
        } else if self.users.remove(user) {
            if let Some(count) = self.per_server.get_mut(server) {
                *count -= 1;
                if *count == 0 {
                    self.per_server.remove(server);
                    self.servers.remove(server);
                }
            }
        }
    }
}

impl EventFacts {
    /// The facts of an event just accepted with `meta`.
    pub(super) fn accepted(meta: &EventMeta) -> Self {
        Self {
            room: meta.room,
            state_before: meta.state_before,
            state_after: meta.state_after,
            status: Some(graph::EventStatus::Accepted),
        }
    }
}

impl RoomHead {
    pub(super) fn load(store: &EventStore, room_id: &str) -> ServiceResult<Self> {
        let room = store
            .room(room_id)?
            .ok_or_else(|| ServiceError::not_found("Unknown room"))?;
        let state = store.state.load(room.record.state)?;
        Ok(Self {
            short: room.short,
            record: room.record,
            version: room.version,
            state,
            cache: HashMap::new(),
            facts: HashMap::new(),
            local_members: None,
            local_member_users: None,
            extremities: None,
            remote_servers: None,
            redactions_waiting: None,
        })
    }

    /// A fresh head for a room being created (nothing stored yet).
    pub(super) fn new_room(short: u64, record: RoomRecord, version: RoomVersion) -> Self {
        Self {
            short,
            record,
            version,
            state: StateMap::default(),
            cache: HashMap::new(),
            facts: HashMap::new(),
            local_members: None,
            local_member_users: None,
            extremities: Some(Vec::new()),
            remote_servers: Some(RemoteJoined::default()),
            redactions_waiting: Some(false),
        }
    }

    /// The facts of event `short` (held: its metadata must exist), from memory when this
    /// writer read or wrote them lately. Each receipt of an event reads those of its prev
    /// and auth events (often the same few events: the power levels, the sender's
    /// membership, the event before it), two reads and a decoding each otherwise.
    ///
    /// Only the room's writer changes what the facts of the room's events say, and it
    /// keeps this memory true: the paths that write an event's status or snapshots call
    /// [`RoomHead::wrote_facts`] (the hot paths, with what they wrote) or
    /// [`RoomHead::forget_facts`] / [`RoomHead::forget_all_facts`] once their batch is
    /// written, and a failed job drops the whole head. Facts of another room's event are
    /// not kept (its own writer may change them).
    pub(super) fn facts(
        &mut self,
        store: &EventStore,
        short: ShortEventId,
    ) -> ServiceResult<EventFacts> {
        if let Some(facts) = self.facts.get(&short) {
            return Ok(facts.clone());
        }
        let meta = store.meta(short)?;
        let facts = EventFacts {
            room: meta.room,
            state_before: meta.state_before,
            state_after: meta.state_after,
            status: graph::record(store, short)?.map(|r| r.status),
        };
        if facts.room == self.short {
            self.keep_facts(short, facts.clone());
        }
        Ok(facts)
    }

    /// Keeps what a write of event `short` of this room just stored (after its batch is
    /// written).
    pub(super) fn wrote_facts(&mut self, short: ShortEventId, facts: EventFacts) {
        self.keep_facts(short, facts);
    }

    fn keep_facts(&mut self, short: ShortEventId, facts: EventFacts) {
        if self.facts.len() >= MAX_FACTS {
            self.facts.clear();
        }
        self.facts.insert(short, facts);
    }

    /// Forgets the facts of event `short`, whose status or snapshots were written again.
    pub(super) fn forget_facts(&mut self, short: ShortEventId) {
        self.facts.remove(&short);
    }

    /// Forgets every event's facts (after a write that may change several).
    pub(super) fn forget_all_facts(&mut self) {
        self.facts.clear();
    }

    /// Gives a room we hold no state of another version (see the writer's
    /// `out_of_band` and `remote_join`).
    pub(super) fn adopt_version(
        &mut self,
        store: &EventStore,
        version: RoomVersion,
    ) -> ServiceResult<()> {
        if self.record.state != 0 {
            return Err(ServiceError::internal(
                "a room with state keeps its version",
            ));
        }
        self.record.version = version.as_str().to_owned();
        self.version = version;
        let mut batch = store.db.batch();
        batch.put(
            Table::ShortroomidRoom,
            self.short.to_be_bytes(),
            encode(&self.record),
        );
        store.db.write_relaxed(batch)?;
        Ok(())
    }

    /// The forward extremities with their short ids and depths.
    pub(super) fn extremities(&mut self, store: &EventStore) -> ServiceResult<&[graph::Extremity]> {
        if self.extremities.is_none() {
            let loaded =
                graph::load_extremities(store, &self.record.extremities, self.record.depth)?;
            self.extremities = Some(loaded);
        }
        Ok(self.extremities.as_deref().unwrap_or_default())
    }

    /// Forgets the parsed events and what was derived from them (a writer gone idle);
    /// they are read again when needed.
    pub(super) fn drop_parsed(&mut self) {
        self.cache = HashMap::new();
        self.local_members = None;
        self.local_member_users = None;
    }

    /// The current power levels, parsed once per power levels event (kept with the event
    /// in the head's cache).
    pub(super) fn power_levels(&mut self, store: &EventStore) -> ServiceResult<Arc<PowerLevels>> {
        let create = self.state_event(store, "m.room.create", "")?;
        Ok(match self.state_event(store, "m.room.power_levels", "")? {
            Some(levels) => levels.power_levels(self.version, create.as_deref()),
            None => Arc::new(PowerLevels::new(
                self.version,
                create.as_ref().map(|e| e.pdu()),
                None,
            )),
        })
    }

    /// The member events in the current state of the users `keep` takes (by user id),
    /// whatever their membership: `(user id, event)`. One read of the state's keys.
    fn member_events_where(
        &self,
        store: &EventStore,
        keep: impl Fn(&str) -> bool,
    ) -> ServiceResult<Vec<(String, ShortEventId)>> {
        let (keys, events): (Vec<_>, Vec<_>) = self.state.iter().map(|(k, e)| (*k, *e)).unzip();
        Ok(store
            .state
            .state_keys_of(&keys)?
            .into_iter()
            .zip(events)
            .filter(|((kind, state_key), _)| kind == "m.room.member" && keep(state_key))
            .map(|((_, state_key), event)| (state_key, event))
            .collect())
    }

    /// The member events of local users in the current state, whatever their membership
    /// (joined, left, banned, invited, knocking): `(user id, event)`.
    fn local_member_events(
        &self,
        store: &EventStore,
        server_name: &str,
    ) -> ServiceResult<Vec<(String, ShortEventId)>> {
        let suffix = format!(":{server_name}");
        self.member_events_where(store, |user| user.ends_with(&suffix))
    }

    /// The local users with a member event in the current state, whatever their
    /// membership (joined, left, banned, invited, knocking).
    pub(super) fn local_member_users(
        &mut self,
        store: &EventStore,
        server_name: &str,
    ) -> ServiceResult<&BTreeSet<String>> {
        if self.local_member_users.is_none() {
            let users = self
                .local_member_events(store, server_name)?
                .into_iter()
                .map(|(user, _)| user)
                .collect();
            self.local_member_users = Some(users);
        }
        Ok(self.local_member_users.get_or_insert_with(BTreeSet::new))
    }

    /// The room's local joined members, read from the current state once per head (the
    /// local users with any member event are kept from the same read).
    pub(super) fn local_members(
        &mut self,
        store: &EventStore,
        server_name: &str,
    ) -> ServiceResult<&[LocalMember]> {
        if self.local_members.is_none() {
            let (users, shorts): (BTreeSet<String>, Vec<ShortEventId>) = self
                .local_member_events(store, server_name)?
                .into_iter()
                .unzip();
            let members = store
                .events(&shorts)?
                .iter()
                .filter_map(|e| local_member(e.pdu()))
                .collect();
            self.local_members = Some(members);
            self.local_member_users.get_or_insert(users);
        }
        Ok(self.local_members.as_deref().unwrap_or_default())
    }

    /// Local guests who are joined or invited (see [`guests::must_leave_without_access`]).
    pub(super) fn local_guests(
        &self,
        store: &EventStore,
        server_name: &str,
    ) -> ServiceResult<Vec<String>> {
        let shorts: Vec<ShortEventId> = self
            .local_member_events(store, server_name)?
            .into_iter()
            .map(|(_, event)| event)
            .collect();
        Ok(store
            .events(&shorts)?
            .iter()
            .filter(|e| guests::must_leave_without_access(e.content()))
            .filter_map(|e| e.state_key().map(str::to_owned))
            .collect())
    }

    /// The other servers with joined members in the current state: read from the member
    /// events once, then kept current by [`RoomHead::member_changed`] (a member event costs
    /// a set update, not a read of the room's members).
    pub(super) fn remote_servers(
        &mut self,
        store: &EventStore,
        server_name: &str,
    ) -> ServiceResult<&BTreeSet<String>> {
        if self.remote_servers.is_none() {
            let shorts: Vec<ShortEventId> = self
                .member_events_where(store, |user| {
                    user.split_once(':')
                        .is_some_and(|(_, server)| server != server_name)
                })?
                .into_iter()
                .map(|(_, event)| event)
                .collect();
            let mut joined = RemoteJoined::default();
            for event in store.events(&shorts)? {
                if membership_of(event.pdu()) == "join" {
                    if let Some(user) = event.state_key() {
                        joined.set(user, true);
                    }
                }
            }
            if let Some(partial) = &self.record.partial_state {
                for server in partial.servers.iter().filter(|s| *s != server_name) {
                    joined.hold(server);
                }
            }
            self.remote_servers = Some(joined);
        }
        Ok(&self
            .remote_servers
            .get_or_insert_with(Default::default)
            .servers)
    }

    /// Keeps the local members and the other servers current after `user`'s member event
    /// became `pdu` (`None`: their member event left the state, as in a state reset).
    pub(super) fn member_changed(&mut self, user: &str, pdu: Option<&Value>, server_name: &str) {
        let local = user
            .split_once(':')
            .is_some_and(|(_, server)| server == server_name);
        if !local {
            if let Some(remote) = self.remote_servers.as_mut() {
                remote.set(user, pdu.is_some_and(|p| membership_of(p) == "join"));
            }
            return;
        }
        if let Some(users) = self.local_member_users.as_mut() {
            match pdu {
                Some(_) => users.insert(user.to_owned()),
                None => users.remove(user),
            };
        }
        let Some(members) = self.local_members.as_mut() else {
            return;
        };
        members.retain(|m| m.user_id != user);
        if let Some(member) = pdu.and_then(local_member) {
            members.push(member);
        }
    }

    /// An event by short id, parsed once and cached (state events of the room's recent
    /// states are what remote events name as auth events).
    pub(super) fn event(
        &mut self,
        store: &EventStore,
        short: ShortEventId,
    ) -> ServiceResult<Arc<StoredEvent>> {
        if let Some(event) = self.cache.get(&short) {
            return Ok(Arc::clone(event));
        }
        if self.cache.len() >= MAX_CACHED_EVENTS {
            self.cache.clear();
        }
        let event = Arc::new(store.event(short)?);
        self.cache.insert(short, Arc::clone(&event));
        Ok(event)
    }

    /// The current state event `(type, state_key)`, parsed once and cached.
    pub(super) fn state_event(
        &mut self,
        store: &EventStore,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<Option<Arc<StoredEvent>>> {
        let Some(key) = store.state.find_state_key(event_type, state_key)? else {
            return Ok(None);
        };
        let Some(&short) = self.state.get(&key) else {
            return Ok(None);
        };
        self.event(store, short).map(Some)
    }
}

/// A joined member of a member event, with the display name it sets.
pub(super) fn local_member(pdu: &Value) -> Option<LocalMember> {
    let content = pdu.get("content")?;
    if content.get("membership").and_then(Value::as_str) != Some("join") {
        return None;
    }
    Some(LocalMember {
        user_id: pdu.get("state_key")?.as_str()?.to_owned(),
        display_name: content
            .get("displayname")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The membership a member event sets (`leave` when it says nothing valid).
pub(super) fn membership_of(pdu: &Value) -> &str {
    pdu.get("content")
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str)
        .unwrap_or("leave")
}

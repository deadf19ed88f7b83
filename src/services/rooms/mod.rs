//! Rooms: event building, auth, state, timeline, membership, aliases and relations.
//!
//! [`Rooms`] is the service; its parts:
//! - [`state_store`]: interned short ids and layered state snapshots;
//! - [`event_store`]: reading rooms, events, timelines and memberships;
//! - [`writer`]: the write path, one writer task per room;
//! - [`receive`]: events other servers made (the receipt checks), [`backfill`]: the room's
//!   past fetched from them, and [`resolution`]: state resolution over stored snapshots;
//! - [`create`], [`membership`], [`sending`]: what clients ask the graph to do;
//! - [`history`], [`members`], [`relations`], [`aliases`]: what clients read;
//! - [`visibility`], [`guests`], [`filter`], [`client_event`], [`tokens`]: the rules and formats
//!   those share.
//!
//! Owns the tables `roomid_shortroomid`, `shortroomid_room`, `shortroomid_shorteventid_pdu`,
//! `shorteventid_pdu` (emptied by [`migrations`]), `shorteventid_meta`, `shortroomid_pos_shorteventid`, `pos_shortroomid`,
//! `userid_roomid_membership`, `txnid_eventid`, `shorteventid_txnid`, `relates_pos_child`,
//! `shortroomid_threadpos`, `threadroot_latestpos`, `shorteventid_aggregates`,
//! `eventid_pendingrelation`, `shortroomid_eventid_pendingredaction`, `alias_roomid`,
//! `roomid_alias`, `roomid_published` and the state store's tables.

pub mod aggregates;
pub mod aliases;
pub mod auth_index;
pub mod backfill;
pub mod client_event;
pub mod create;
pub mod event_store;
pub mod filter;
pub mod graph;
pub mod guests;
pub mod history;
pub mod members;
pub mod membership;
pub mod migrations;
pub mod out_of_room;
pub mod pending_parents;
pub mod receive;
pub mod records;
pub mod relations;
pub mod remote_invite;
pub mod remote_join;
pub mod reset_out;
pub mod resident_join;
pub mod resolution;
pub mod room_mates;
pub mod room_snapshot;
pub mod sending;
pub mod server_acl;
pub mod server_reads;
pub mod server_visibility;
pub mod state_store;
pub mod stored_event;
pub mod stream_state;
pub mod tokens;
pub mod told_state;
pub mod upgrade;
pub mod visibility;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::power_levels::PowerLevels;
use crate::core::{RoomVersion, ServerName, SigningKeyPair};
use crate::services::error::{ServiceError, ServiceResult};
use event_store::{EventStore, Room};
use records::MembershipRecord;
use state_store::ShortStateHash;
use visibility::VisibilityCheck;
use writer::{WriterContext, Writers};

/// The rooms service.
pub struct Rooms {
    store: Arc<EventStore>,
    writers: Writers,
    server_name: ServerName,
    signing_key: Arc<SigningKeyPair>,
    default_version: RoomVersion,
    /// Serializes alias check-and-set.
    alias_lock: tokio::sync::Mutex<()>,
    /// The `origin_server_ts` of the last create event built: each new one is later, so
    /// two rooms made by one user in the same millisecond with the same content still
    /// get distinct create events, hence distinct v12 room ids (the id is their hash).
    last_create_ts: std::sync::atomic::AtomicU64,
    /// Each room's other servers as of a state snapshot (typing and receipts ask for
    /// them often; a room's member events are read again only when its state changed).
    remote_servers: std::sync::Mutex<RemoteServers>,
    /// Each room's compiled server ACL as of a state snapshot.
    server_acls: std::sync::Mutex<HashMap<String, server_acl::CachedAcl>>,
    /// Servers a resolution of ours put out of a room, which may still read it a while.
    reset_servers: Arc<reset_out::ResetServers>,
}

/// Rooms' other servers by room id, with the state snapshot they were read from.
type RemoteServers = HashMap<String, (u64, Arc<Vec<String>>)>;

/// What a user may read of a room: the room, their membership, and the state snapshot they
/// see (the current one while joined, the one at their leave after they left).
#[derive(Debug, Clone)]
pub struct ReadAccess {
    /// The room.
    pub room: Room,
    /// The reader's membership record, if any.
    pub membership: Option<MembershipRecord>,
    /// The state the reader sees.
    pub snapshot: ShortStateHash,
}

impl Rooms {
    /// Opens the service's tables.
    pub fn open(
        db: Arc<crate::storage::Db>,
        stream: Arc<crate::services::stream::StreamPositions>,
        hooks: Vec<Arc<dyn writer::NewEventHook>>,
        server_name: ServerName,
        signing_key: Arc<SigningKeyPair>,
        (default_version, outbox): (RoomVersion, Arc<crate::services::outbox::Outbox>),
    ) -> ServiceResult<Self> {
        let store = Arc::new(EventStore::open(db, stream)?);
        migrations::run(&store)?;
        auth_index::build_if_missing(&store)?;
        let reset_servers = Arc::new(reset_out::ResetServers::default());
        let writers = Writers::new(WriterContext {
            store: Arc::clone(&store),
            server_name: server_name.as_str().to_owned(),
            signing_key: Arc::clone(&signing_key),
            hooks,
            outbox,
            reset_servers: Arc::clone(&reset_servers),
        });
        Ok(Self {
            store,
            writers,
            server_name,
            signing_key,
            default_version,
            alias_lock: tokio::sync::Mutex::new(()),
            last_create_ts: std::sync::atomic::AtomicU64::new(0),
            remote_servers: std::sync::Mutex::new(HashMap::new()),
            server_acls: std::sync::Mutex::new(HashMap::new()),
            reset_servers,
        })
    }

    /// Lets the room writers finish their queues and stop (server shutdown).
    pub async fn shutdown(&self) {
        self.writers.shutdown().await;
    }

    /// The read side of the tables.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The read side, shared (for services that outlive a request).
    pub fn shared_store(&self) -> Arc<EventStore> {
        Arc::clone(&self.store)
    }

    /// Our server name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// A known room, or 404 `M_NOT_FOUND`.
    pub fn known_room(&self, room_id: &str) -> ServiceResult<Room> {
        self.store
            .room(room_id)?
            .ok_or_else(|| ServiceError::not_found("Unknown room"))
    }

    /// Whether two users are both joined to some room.
    pub fn share_a_room(&self, a: &str, b: &str) -> ServiceResult<bool> {
        let theirs = self.joined_rooms(b)?;
        Ok(self.joined_rooms(a)?.iter().any(|r| theirs.contains(r)))
    }

    /// The room `room_id` replaced (its create event's `predecessor.room_id`), if any.
    pub fn predecessor(&self, room_id: &str) -> ServiceResult<Option<String>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .state_event(room.record.state, "m.room.create", "")?
            .and_then(|create| {
                let predecessor = create.content().get("predecessor")?.get("room_id")?;
                predecessor.as_str().map(str::to_owned)
            }))
    }

    /// The room that replaced `room_id` (its tombstone's `replacement_room`), if any.
    pub fn replacement(&self, room_id: &str) -> ServiceResult<Option<String>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .state_event(room.record.state, "m.room.tombstone", "")?
            .and_then(|t| {
                let replacement = t.content().get("replacement_room")?;
                replacement.as_str().map(str::to_owned)
            }))
    }

    /// The user's current membership in a room (`None` when they have none).
    pub fn membership_of(&self, user_id: &str, room_id: &str) -> ServiceResult<Option<String>> {
        Ok(self
            .store
            .membership(user_id, room_id)?
            .map(|r| r.membership))
    }

    /// What `user_id` may read of `room_id`; 403 `M_FORBIDDEN` for an unknown room or a
    /// user who never was in it (unless it is world-readable).
    pub fn read_access(&self, user_id: &str, room_id: &str) -> ServiceResult<ReadAccess> {
        let not_member = || ServiceError::forbidden("You aren't a member of the room");
        let room = self.store.room(room_id)?.ok_or_else(not_member)?;
        let membership = self.store.membership(user_id, room_id)?;
        if membership.as_ref().is_some_and(|m| m.forgotten) {
            // Spec: after /forget the user can no longer retrieve the room's history.
            return Err(not_member());
        }
        let snapshot = match membership.as_ref() {
            Some(record) if record.membership == "join" => room.record.state,
            Some(record) if matches!(record.membership.as_str(), "leave" | "ban") => {
                if record.last_join_pos == 0
                    && !VisibilityCheck::world_readable(&self.store, &room)?
                {
                    // Left without ever joining (a rejected invite or knock): nothing to see.
                    return Err(not_member());
                }
                match self.store.event_by_id(&record.event_id)? {
                    Some(leave) => leave.meta.state_after,
                    None => return Err(not_member()),
                }
            }
            _ if VisibilityCheck::world_readable(&self.store, &room)? => room.record.state,
            _ => return Err(not_member()),
        };
        Ok(ReadAccess {
            room,
            membership,
            snapshot,
        })
    }

    /// The power levels in force in a room's current state.
    pub fn current_power_levels(&self, room: &Room) -> ServiceResult<PowerLevels> {
        let snapshot = room.record.state;
        let create = self.store.state_event(snapshot, "m.room.create", "")?;
        let levels = self
            .store
            .state_event(snapshot, "m.room.power_levels", "")?;
        Ok(PowerLevels::new(
            room.version,
            create.as_ref().map(|e| e.pdu()),
            levels.as_ref().map(|e| e.pdu()),
        ))
    }

    /// Rooms the user is joined to.
    pub fn joined_rooms(&self, user_id: &str) -> ServiceResult<Vec<String>> {
        Ok(self
            .store
            .memberships_of(user_id)?
            .into_iter()
            .filter(|(_, r)| r.membership == "join")
            .map(|(room, _)| room)
            .collect())
    }
}

//! Reading the rooms service's tables: rooms, events with their metadata, timelines,
//! memberships and state at any snapshot. Writes happen in [`super::writer`] only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::pending_parents::PendingParents;
use super::records::{EventMeta, MembershipRecord, RoomRecord};
use super::state_store::{ShortEventId, ShortStateHash, StateStore};
use crate::core::RoomVersion;
use crate::services::cache::GenerationalCache;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::decode;
use crate::services::stream::StreamPositions;
use crate::storage::{keys, Db, Table};

use super::stored_event;
pub use super::stored_event::StoredEvent;

/// An event's id, content and sender, without the rest of its PDU.
#[derive(Debug, Clone)]
pub struct EventSummary {
    /// The event id.
    pub event_id: String,
    /// The content (an empty object if absent).
    pub content: Value,
    /// The sender.
    pub sender: String,
}

/// A room as the rest of the service sees it.
#[derive(Debug, Clone)]
pub struct Room {
    /// The room's short id.
    pub short: u64,
    /// Its head record.
    pub record: RoomRecord,
    /// Its version.
    pub version: RoomVersion,
}

pub(super) fn corrupt(what: &str) -> ServiceError {
    ServiceError::internal(format!("corrupt rooms record: {what}"))
}

/// The key of a membership record.
pub(super) fn membership_key(user_id: &str, room_id: &str) -> Vec<u8> {
    keys::join(&[user_id.as_bytes(), room_id.as_bytes()])
}

/// `room short ++ event short`: the key of an event's PDU (`shortroomid_shorteventid_pdu`).
pub(super) fn pdu_key(room: u64, short: ShortEventId) -> [u8; 16] {
    keys::u64_pair(room, short)
}

/// `room short ++ pos`: a timeline key.
pub(super) fn timeline_key(room: u64, pos: u64) -> [u8; 16] {
    keys::u64_pair(room, pos)
}

/// A timeline entry's value: the event's short id, then (since schema version 3) its
/// metadata record as `shorteventid_meta` holds it, so that reading a room's latest
/// events needs no lookup of each one's metadata. The two copies change together: an
/// event's record is written with its place, and a redaction rewrites both.
pub(super) fn timeline_value(short: ShortEventId, meta: &EventMeta, event_id: &str) -> Vec<u8> {
    let mut out = short.to_be_bytes().to_vec();
    out.extend_from_slice(&meta.encode_with_id(event_id));
    out
}

/// The short id of a timeline entry's value and the metadata record it carries, if any
/// (entries written before schema version 3 carry none until moved at start-up).
pub fn read_timeline_value(value: &[u8]) -> Option<(ShortEventId, Option<&[u8]>)> {
    let short = keys::read_u64(value.get(..8)?)?;
    Some((short, value.get(8..).filter(|meta| !meta.is_empty())))
}

/// The rooms service's tables, read side, plus the id counters the writers share.
pub struct EventStore {
    pub(super) db: Arc<Db>,
    pub(super) state: StateStore,
    pub(super) stream: Arc<StreamPositions>,
    next_room: AtomicU64,
    /// Users who asked for erasure, and from which stream position (the accounts
    /// service owns the record and tells this store; see `client_event`).
    erased: std::sync::RwLock<HashMap<String, u64>>,
    /// Rooms' short ids as read (a room's short id never changes and its row is never
    /// removed): every PDU received looks its room up.
    room_shorts: GenerationalCache<String, u64>,
    /// Events read as held with the room (not out of band): an event is kept out of
    /// band only when first stored, so once it is held otherwise it stays so (see
    /// `graph::is_out_of_band`). Each PDU received asks it of its prev and auth events
    /// before its writer, and of its auth events again in it.
    pub(super) held_in_room: GenerationalCache<ShortEventId, ()>,
    /// Event ids held events may wait for (see [`PendingParents`]).
    pub(super) pending_parents: PendingParents,
}

/// Room ids whose short ids are kept in memory at most (~100 bytes each).
const ROOM_SHORT_CACHE_ENTRIES: usize = 32_768;

/// Events known to be held with their room kept in memory at most (~40 bytes each).
const HELD_IN_ROOM_CACHE_ENTRIES: usize = 65_536;

fn last_u64_key(db: &Db, table: Table) -> ServiceResult<u64> {
    match db.scan_range(table, &[0u8; 8], &[0xffu8; 9], true).next() {
        Some(entry) => {
            let (key, _) = entry?;
            key.get(..8)
                .and_then(keys::read_u64)
                .ok_or_else(|| corrupt("u64 key"))
        }
        None => Ok(0),
    }
}

impl EventStore {
    /// Opens the store and finds the room counter's next value.
    pub fn open(db: Arc<Db>, stream: Arc<StreamPositions>) -> ServiceResult<Self> {
        let last_room = last_u64_key(&db, Table::ShortroomidRoom)?;
        Ok(Self {
            state: StateStore::open(Arc::clone(&db))?,
            pending_parents: PendingParents::load(&db)?,
            db,
            stream,
            next_room: AtomicU64::new(last_room + 1),
            erased: std::sync::RwLock::default(),
            room_shorts: GenerationalCache::new(ROOM_SHORT_CACHE_ENTRIES, |_| 1),
            held_in_room: GenerationalCache::new(HELD_IN_ROOM_CACHE_ENTRIES, |_| 1),
        })
    }

    /// Notes that `user_id` asked for erasure at stream position `at`.
    pub fn mark_erased(&self, user_id: &str, at: u64) {
        self.erased
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user_id.to_owned(), at);
    }

    /// Where `user_id` asked for erasure, if they did.
    pub fn erased_at(&self, user_id: &str) -> Option<u64> {
        let erased = self
            .erased
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if erased.is_empty() {
            return None;
        }
        erased.get(user_id).copied()
    }

    /// The highest position of the global event stream (`pos_shortroomid`), for opening
    /// [`StreamPositions`] on a database written before positions were reserved in blocks.
    pub fn last_event_pos(db: &Db) -> ServiceResult<u64> {
        last_u64_key(db, Table::PosShortroomid)
    }

    /// The highest stream position below which everything is committed.
    pub fn current_pos(&self) -> u64 {
        self.stream.watermark()
    }

    /// A new short room id.
    pub(super) fn allocate_room(&self) -> u64 {
        self.next_room.fetch_add(1, Ordering::Relaxed)
    }

    /// The state store.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// Forgets what is kept in memory to spare reads (a server gone idle gives the
    /// memory back).
    pub fn release_cache(&self) {
        self.state.release_cache();
        self.room_shorts.clear();
        self.held_in_room.clear();
    }

    /// The short id of a known room.
    pub fn room_short(&self, room_id: &str) -> ServiceResult<Option<u64>> {
        if let Some(short) = self.room_shorts.get(room_id) {
            return Ok(Some(*short));
        }
        let short = self
            .db
            .get(Table::RoomidShortroomid, room_id)?
            .map(|b| keys::read_u64(&b).ok_or_else(|| corrupt("short room id")))
            .transpose()?;
        // Only what was read is kept: a short id allocated in a batch that is never
        // written is not remembered.
        if let Some(short) = short {
            self.room_shorts.insert(room_id.to_owned(), Arc::new(short));
        }
        Ok(short)
    }

    /// A room by its short id.
    pub fn room_by_short(&self, short: u64) -> ServiceResult<Room> {
        let bytes = self
            .db
            .get(Table::ShortroomidRoom, short.to_be_bytes())?
            .ok_or_else(|| corrupt("unknown short room id"))?;
        let record: RoomRecord = decode(Table::ShortroomidRoom, &bytes)?;
        let version = RoomVersion::from_id(&record.version).ok_or_else(|| corrupt("version"))?;
        Ok(Room {
            short,
            record,
            version,
        })
    }

    /// Several known rooms by id, in order (`None` for one we do not know), in two
    /// batched reads: a `/sync` of thousands of rooms read two records a room one at a
    /// time.
    pub fn rooms(&self, room_ids: &[&str]) -> ServiceResult<Vec<Option<Room>>> {
        let shorts: Vec<Option<u64>> = self
            .db
            .multi_get(Table::RoomidShortroomid, room_ids)?
            .into_iter()
            .map(|b| {
                b.map(|b| keys::read_u64(&b).ok_or_else(|| corrupt("short room id")))
                    .transpose()
            })
            .collect::<ServiceResult<_>>()?;
        let known: Vec<[u8; 8]> = shorts.iter().flatten().map(|s| s.to_be_bytes()).collect();
        let mut records = self
            .db
            .multi_get(Table::ShortroomidRoom, &known)?
            .into_iter();
        shorts
            .into_iter()
            .map(|short| {
                let Some(short) = short else {
                    return Ok(None);
                };
                let bytes = records
                    .next()
                    .flatten()
                    .ok_or_else(|| corrupt("unknown short room id"))?;
                let record: RoomRecord = decode(Table::ShortroomidRoom, &bytes)?;
                let version =
                    RoomVersion::from_id(&record.version).ok_or_else(|| corrupt("version"))?;
                Ok(Some(Room {
                    short,
                    record,
                    version,
                }))
            })
            .collect()
    }

    /// Every room the server knows, by short id.
    pub fn all_rooms(&self) -> ServiceResult<Vec<Room>> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(Table::ShortroomidRoom, &[]) {
            let (key, value) = entry?;
            let short = keys::read_u64(&key).ok_or_else(|| corrupt("short room id"))?;
            let record: RoomRecord = decode(Table::ShortroomidRoom, &value)?;
            let version =
                RoomVersion::from_id(&record.version).ok_or_else(|| corrupt("version"))?;
            out.push(Room {
                short,
                record,
                version,
            });
        }
        Ok(out)
    }

    /// A known room, if any.
    pub fn room(&self, room_id: &str) -> ServiceResult<Option<Room>> {
        match self.room_short(room_id)? {
            Some(short) => self.room_by_short(short).map(Some),
            None => Ok(None),
        }
    }

    /// The metadata of an event.
    pub fn meta(&self, short: ShortEventId) -> ServiceResult<EventMeta> {
        let bytes = self
            .db
            .get(Table::ShorteventidMeta, short.to_be_bytes())?
            .ok_or_else(|| corrupt("event without metadata"))?;
        EventMeta::decode(&bytes).ok_or_else(|| corrupt("event metadata"))
    }

    /// Several stored events by short id, in order, read in two batched reads (a third
    /// for the ids of events whose metadata predates carrying the id): the metadata, then
    /// the PDUs it places (a room's PDUs lie together, so a room's events share blocks).
    pub fn events(&self, shorts: &[ShortEventId]) -> ServiceResult<Vec<StoredEvent>> {
        self.events_with_metas(shorts, vec![None; shorts.len()])
    }

    /// [`EventStore::events`], with the metadata records already at hand (`Some`, by
    /// index in `shorts`) not read again.
    fn events_with_metas(
        &self,
        shorts: &[ShortEventId],
        mut metas: Vec<Option<Vec<u8>>>,
    ) -> ServiceResult<Vec<StoredEvent>> {
        let missing: Vec<usize> = (0..shorts.len()).filter(|i| metas[*i].is_none()).collect();
        if !missing.is_empty() {
            let read = self.db.multi_get(
                Table::ShorteventidMeta,
                missing.iter().map(|i| shorts[*i].to_be_bytes()),
            )?;
            for (i, meta) in missing.into_iter().zip(read) {
                metas[i] = meta;
            }
        }
        let metas: Vec<(Vec<u8>, EventMeta)> = metas
            .into_iter()
            .map(|m| {
                let bytes = m.ok_or_else(|| corrupt("event without metadata"))?;
                let meta = EventMeta::decode(&bytes).ok_or_else(|| corrupt("event metadata"))?;
                Ok((bytes, meta))
            })
            .collect::<ServiceResult<_>>()?;
        let pdus = self.db.multi_get(
            Table::ShortroomidShorteventidPdu,
            shorts
                .iter()
                .zip(&metas)
                .map(|(short, (_, meta))| pdu_key(meta.room, *short)),
        )?;
        let without_id: Vec<ShortEventId> = shorts
            .iter()
            .zip(&metas)
            .filter(|(_, (bytes, _))| EventMeta::decode_event_id(bytes).is_none())
            .map(|(short, _)| *short)
            .collect();
        let older_ids = match without_id.is_empty() {
            true => Vec::new(),
            false => self.state.event_ids_of(&without_id)?,
        };
        let mut older_ids = older_ids.into_iter();
        shorts
            .iter()
            .zip(pdus)
            .zip(metas)
            .map(|((short, pdu), (meta_bytes, meta))| {
                let pdu = pdu.ok_or_else(|| corrupt("event without PDU"))?;
                let event_id = match EventMeta::decode_event_id(&meta_bytes) {
                    Some(id) => id.to_owned(),
                    None => older_ids.next().ok_or_else(|| corrupt("event id"))?,
                };
                StoredEvent::from_json(*short, event_id, pdu, meta)
                    .ok_or_else(|| corrupt("PDU JSON"))
            })
            .collect()
    }

    /// The ids and stored PDUs (JSON bytes) of some events, in order (`None` for a PDU
    /// not held): their metadata places the PDUs and carries the ids (the id table is
    /// read only for records from before it did).
    pub fn ids_and_pdus(
        &self,
        shorts: &[ShortEventId],
    ) -> ServiceResult<Vec<(String, Option<Vec<u8>>)>> {
        let metas = self.db.multi_get(
            Table::ShorteventidMeta,
            shorts.iter().map(|s| s.to_be_bytes()),
        )?;
        let keys: Vec<Option<[u8; 16]>> = shorts
            .iter()
            .zip(&metas)
            .map(|(short, meta)| {
                let meta = meta.as_deref().and_then(EventMeta::decode);
                meta.map(|m| pdu_key(m.room, *short))
            })
            .collect();
        let carried: Vec<Option<&str>> = metas
            .iter()
            .map(|m| m.as_deref().and_then(EventMeta::decode_event_id))
            .collect();
        let without_id: Vec<ShortEventId> = shorts
            .iter()
            .zip(&carried)
            .filter(|(_, id)| id.is_none())
            .map(|(short, _)| *short)
            .collect();
        let mut older_ids = match without_id.is_empty() {
            true => Vec::new(),
            false => self.state.event_ids_of(&without_id)?,
        }
        .into_iter();
        let mut pdus = self
            .db
            .multi_get(Table::ShortroomidShorteventidPdu, keys.iter().flatten())?
            .into_iter();
        keys.iter()
            .zip(carried)
            .map(|(key, id)| {
                let id = match id {
                    Some(id) => id.to_owned(),
                    None => older_ids.next().ok_or_else(|| corrupt("event id"))?,
                };
                Ok((id, key.and_then(|_| pdus.next().flatten())))
            })
            .collect()
    }

    /// The stored PDU of an event, as JSON bytes, if it is held (with its metadata).
    pub fn pdu_of(&self, short: ShortEventId) -> ServiceResult<Option<Vec<u8>>> {
        let Some(bytes) = self.db.get(Table::ShorteventidMeta, short.to_be_bytes())? else {
            return Ok(None);
        };
        let meta = EventMeta::decode(&bytes).ok_or_else(|| corrupt("event metadata"))?;
        Ok(self
            .db
            .get(Table::ShortroomidShorteventidPdu, pdu_key(meta.room, short))?)
    }

    /// The stored metadata (as stored) and PDU (JSON bytes) of an event.
    fn meta_and_pdu(&self, short: ShortEventId) -> ServiceResult<(Vec<u8>, Vec<u8>)> {
        let bytes = self
            .db
            .get(Table::ShorteventidMeta, short.to_be_bytes())?
            .ok_or_else(|| corrupt("event without metadata"))?;
        let meta = EventMeta::decode(&bytes).ok_or_else(|| corrupt("event metadata"))?;
        let pdu = self
            .db
            .get(Table::ShortroomidShorteventidPdu, pdu_key(meta.room, short))?
            .ok_or_else(|| corrupt("event without PDU"))?;
        Ok((bytes, pdu))
    }

    /// `content[field]` of a stored event when it is a string: nothing else of the PDU is
    /// kept.
    pub fn content_str(&self, short: ShortEventId, field: &str) -> ServiceResult<Option<String>> {
        use serde_json::value::RawValue;
        type Fields<'a> = HashMap<String, &'a RawValue>;
        #[derive(serde::Deserialize)]
        struct Pdu<'a> {
            #[serde(borrow)]
            content: Option<&'a RawValue>,
        }
        let (_, bytes) = self.meta_and_pdu(short)?;
        let pdu: Pdu<'_> = serde_json::from_slice(&bytes).map_err(|_| corrupt("PDU JSON"))?;
        let fields: Option<Fields<'_>> =
            pdu.content.and_then(|c| serde_json::from_str(c.get()).ok());
        Ok(fields
            .and_then(|f| f.get(field).copied())
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()))
    }

    /// The id, content and sender of a stored event: only those fields of its PDU are kept
    /// (for `unsigned.prev_content`).
    pub fn content_and_sender(&self, short: ShortEventId) -> ServiceResult<EventSummary> {
        use serde_json::value::RawValue;
        #[derive(serde::Deserialize)]
        struct Pdu<'a> {
            #[serde(borrow)]
            content: Option<&'a RawValue>,
            #[serde(borrow)]
            sender: Option<&'a RawValue>,
        }
        let (meta, bytes) = self.meta_and_pdu(short)?;
        let pdu: Pdu<'_> = serde_json::from_slice(&bytes).map_err(|_| corrupt("PDU JSON"))?;
        // Read as leniently as a parsed PDU was: a sender that is not a string counts as "".
        let content = match pdu.content {
            Some(raw) => serde_json::from_str(raw.get()).map_err(|_| corrupt("PDU JSON"))?,
            None => Value::Object(Default::default()),
        };
        Ok(EventSummary {
            event_id: match EventMeta::decode_event_id(&meta) {
                Some(id) => id.to_owned(),
                None => self.state.event_id_of(short)?,
            },
            content,
            sender: stored_event::string(pdu.sender).unwrap_or_default(),
        })
    }

    /// One stored event by short id.
    pub fn event(&self, short: ShortEventId) -> ServiceResult<StoredEvent> {
        self.events(&[short])?
            .pop()
            .ok_or_else(|| corrupt("event read"))
    }

    /// A stored event by id, if we have it.
    pub fn event_by_id(&self, event_id: &str) -> ServiceResult<Option<StoredEvent>> {
        match self.state.find_event(event_id)? {
            Some(short) => self.event(short).map(Some),
            None => Ok(None),
        }
    }

    /// The state event `(type, state_key)` in a snapshot, if any.
    pub fn state_event(
        &self,
        snapshot: ShortStateHash,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<Option<StoredEvent>> {
        let Some(key) = self.state.find_state_key(event_type, state_key)? else {
            return Ok(None);
        };
        match self.state.get(snapshot, key)? {
            Some(short) => self.event(short).map(Some),
            None => Ok(None),
        }
    }

    /// Every event of a snapshot's state, optionally only those of one type.
    pub fn state_events(
        &self,
        snapshot: ShortStateHash,
        only_type: Option<&str>,
    ) -> ServiceResult<Vec<StoredEvent>> {
        let map = self.state.load(snapshot)?;
        let mut shorts: Vec<ShortEventId> = Vec::with_capacity(map.len());
        for (key, event) in map {
            if let Some(kind) = only_type {
                let (k, _) = self.state.state_key_of(key)?;
                if k != kind {
                    continue;
                }
            }
            shorts.push(event);
        }
        shorts.sort_unstable();
        self.events(&shorts)
    }

    /// The stripped state another server sent with the member event `short` (an invite
    /// or a knock's answer for a room we are not in), if any.
    pub fn stripped_state(&self, short: ShortEventId) -> ServiceResult<Option<Vec<Value>>> {
        self.db
            .get(Table::ShorteventidStrippedstate, short.to_be_bytes())?
            .map(|b| decode(Table::ShorteventidStrippedstate, &b))
            .transpose()
    }

    /// A user's membership record in a room.
    pub fn membership(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> ServiceResult<Option<MembershipRecord>> {
        self.db
            .get(
                Table::UseridRoomidMembership,
                membership_key(user_id, room_id),
            )?
            .map(|b| decode(Table::UseridRoomidMembership, &b))
            .transpose()
    }

    /// Every room a user has a membership record in, with the record.
    pub fn memberships_of(&self, user_id: &str) -> ServiceResult<Vec<(String, MembershipRecord)>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(Table::UseridRoomidMembership, &prefix) {
            let (key, value) = entry?;
            let room = String::from_utf8(key[prefix.len()..].to_vec())
                .map_err(|_| corrupt("membership key"))?;
            out.push((room, decode(Table::UseridRoomidMembership, &value)?));
        }
        Ok(out)
    }

    /// Short ids of a room's events with `from <= pos < to`, forwards or backwards, at most
    /// `limit` of them, with their positions.
    pub fn timeline(
        &self,
        room: u64,
        from: u64,
        to: u64,
        backwards: bool,
        limit: usize,
    ) -> ServiceResult<Vec<(u64, ShortEventId)>> {
        self.timeline_entries(room, (from, to), backwards, limit)
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(pos, short, _)| (pos, short))
                    .collect()
            })
    }

    /// [`EventStore::timeline`]'s events, loaded: their metadata comes with the timeline
    /// entries, so only their PDUs are read (together, from the room's blocks).
    pub fn timeline_events(
        &self,
        room: u64,
        (from, to): (u64, u64),
        backwards: bool,
        limit: usize,
    ) -> ServiceResult<Vec<(u64, StoredEvent)>> {
        let entries = self.timeline_entries(room, (from, to), backwards, limit)?;
        let shorts: Vec<ShortEventId> = entries.iter().map(|(_, short, _)| *short).collect();
        let positions: Vec<u64> = entries.iter().map(|(pos, _, _)| *pos).collect();
        let metas = entries.into_iter().map(|(_, _, meta)| meta).collect();
        let events = self.events_with_metas(&shorts, metas)?;
        Ok(positions.into_iter().zip(events).collect())
    }

    /// A timeline's entries: position, short id and the metadata record the entry
    /// carries (`None` for an entry from before schema version 3, or one whose copy does
    /// not name its own place, which is then read from `shorteventid_meta`).
    fn timeline_entries(
        &self,
        room: u64,
        (from, to): (u64, u64),
        backwards: bool,
        limit: usize,
    ) -> ServiceResult<Vec<TimelineEntry>> {
        let lower = timeline_key(room, from);
        let upper = timeline_key(room, to);
        let mut out = Vec::new();
        for entry in self
            .db
            .scan_range(Table::ShortroomidPosShorteventid, &lower, &upper, backwards)
            .take(limit)
        {
            let (key, value) = entry?;
            let pos = key.get(8..16).and_then(keys::read_u64);
            match (pos, read_timeline_value(&value)) {
                (Some(pos), Some((short, meta))) => {
                    let placed = |m: &&[u8]| EventMeta::decode(m).is_some_and(|m| m.pos == pos);
                    out.push((pos, short, meta.filter(placed).map(<[u8]>::to_vec)));
                }
                _ => return Err(corrupt("timeline entry")),
            }
        }
        Ok(out)
    }
}

/// A timeline entry read: position, short event id, the metadata record it carries.
type TimelineEntry = (u64, ShortEventId, Option<Vec<u8>>);

impl crate::services::outbox::PduStore for EventStore {
    fn pdu(&self, event_id: &str) -> Option<Value> {
        match self.event_by_id(event_id) {
            Ok(event) => event.map(|e| e.pdu().clone()),
            Err(e) => {
                tracing::warn!(event = %event_id, error = %e.message, "cannot read a queued event");
                None
            }
        }
    }
}

/// A store over a new database in a temp folder (kept while the folder lives), for tests.
#[cfg(test)]
pub(crate) fn open_temp_store() -> (tempfile::TempDir, Arc<Db>, EventStore) {
    let dir = tempfile::tempdir().expect("a temp folder");
    let db = Db::open(dir.path(), &crate::storage::DbOptions::default()).expect("a database");
    let stream = StreamPositions::open(Arc::clone(&db), 0).expect("stream positions");
    let store = EventStore::open(Arc::clone(&db), stream).expect("the event store");
    (dir, db, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_load_with_their_ids_whether_or_not_the_metadata_carries_them() {
        let (_dir, db, store) = open_temp_store();
        let meta = |pos| EventMeta {
            room: 1,
            pos,
            state_before: 0,
            state_after: 0,
            replaces: 0,
            redacted_by: 0,
        };
        let mut batch = db.batch();
        let mut shorts = Vec::new();
        for (i, id) in ["$old:x", "$new:x", "$older:x"].into_iter().enumerate() {
            let short = store.state.intern_new_event(id, &mut batch);
            let pdu =
                format!(r#"{{"type":"m.room.message","sender":"@a:x","content":{{"n":{i}}}}}"#);
            batch.put(Table::ShortroomidShorteventidPdu, pdu_key(1, short), pdu);
            // Schema version 1 wrote the fixed fields alone; version 2 adds the id.
            let record = match id {
                "$new:x" => meta(i as u64).encode_with_id(id),
                _ => meta(i as u64).encode().to_vec(),
            };
            batch.put(Table::ShorteventidMeta, short.to_be_bytes(), record);
            shorts.push(short);
        }
        db.commit_blocking(batch).unwrap();
        let loaded = store.events(&shorts).unwrap();
        let ids: Vec<&str> = loaded.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["$old:x", "$new:x", "$older:x"]);
        let positions: Vec<u64> = loaded.iter().map(|e| e.meta.pos).collect();
        assert_eq!(positions, [0, 1, 2]);
        assert_eq!(store.events(&shorts[1..2]).unwrap()[0].event_id, "$new:x");
        assert!(store.events(&[]).unwrap().is_empty());
    }

    #[test]
    fn rooms_are_read_in_a_batch_and_unknown_ones_are_none() {
        let (_dir, db, store) = open_temp_store();
        let mut batch = db.batch();
        for (short, id) in [(3u64, "!a:x"), (9, "!b:x")] {
            let record = RoomRecord::new(id, "11");
            batch.put(Table::RoomidShortroomid, id, short.to_be_bytes());
            batch.put(
                Table::ShortroomidRoom,
                short.to_be_bytes(),
                serde_json::to_vec(&record).unwrap(),
            );
        }
        db.commit_blocking(batch).unwrap();
        let rooms = store.rooms(&["!b:x", "!unknown:x", "!a:x"]).unwrap();
        let found: Vec<Option<(u64, String)>> = rooms
            .iter()
            .map(|r| r.as_ref().map(|r| (r.short, r.record.room_id.clone())))
            .collect();
        assert_eq!(
            found,
            [Some((9, "!b:x".into())), None, Some((3, "!a:x".into()))]
        );
        assert_eq!(
            store.room("!a:x").unwrap().map(|r| r.short),
            Some(3),
            "one at a time reads the same"
        );
        assert!(store.rooms(&[]).unwrap().is_empty());
    }
}

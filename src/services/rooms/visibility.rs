//! Who may read what: history visibility.
//!
//! Spec: client-server API, "Room History Visibility", "Server behaviour": the rules are
//! applied with the state of the room at each event (the state before it; for
//! `m.room.history_visibility` events and the user's own member events, before or after):
//!
//! 1. `world_readable`: allow.
//! 2. The user's membership was `join`: allow.
//! 3. `shared` and the user joined at any point after the event: allow.
//! 4. `invited` and the membership was `invite`: allow.
//! 5. Otherwise deny.
//!
//! A missing or unknown value counts as `shared`.
//!
//! A redaction is shown once it applies (spec: room versions 3 and later, "Handling
//! redactions": not sent to clients until the event it redacts has been received and
//! the redaction validated): one whose target has not come, or that never applies (its
//! sender had not the power), stays here. One whose target comes later is not shown
//! then either: the client gets the target already redacted.

use std::collections::HashMap;

use super::event_store::{EventStore, Room, StoredEvent};
use super::records::{MembershipRecord, RoomRecord};
use super::state_store::{ShortEventId, ShortStateHash, ShortStateKey};
use crate::services::error::ServiceResult;

/// The values of `m.room.history_visibility` (spec: "Room History Visibility").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    /// A missing or unknown value counts as `shared`.
    fn parse(value: Option<&str>) -> Self {
        match value {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// The viewer's membership, as far as visibility cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Join,
    Invite,
    Other,
}

/// Visibility decisions for one viewer in one room. A run of messages shares one state
/// snapshot and a room's snapshots share their few history-visibility and member events,
/// so answers are cached per snapshot and per event: a page of events costs a few state
/// reads, and an event's content is read once. The viewer's membership is only looked up
/// when the history visibility leaves the answer open.
pub struct VisibilityCheck<'a> {
    store: &'a EventStore,
    user_id: &'a str,
    last_join_pos: u64,
    /// Where the viewer's current run of `join` began, while they are joined.
    joined_since: Option<u64>,
    /// The room's history visibility was never `invited` or `joined` (see
    /// [`VisibilityCheck::in_room`]).
    never_restricted: bool,
    /// The interned `(type, state_key)`s, looked up on first use (`None`: never interned,
    /// so no snapshot holds such an event).
    visibility_key: Option<Option<ShortStateKey>>,
    member_key: Option<Option<ShortStateKey>>,
    visibility_at: HashMap<ShortStateHash, HistoryVisibility>,
    membership_at: HashMap<ShortStateHash, Option<Membership>>,
    /// Content fields already read, by event and field name.
    fields: HashMap<(ShortEventId, &'static str), Option<String>>,
    /// The version of the room last read (by short id), for redactions.
    room_version: Option<(u64, crate::core::RoomVersion)>,
}

/// The short id of `(kind, state_key)`, looked up once into `cache`.
fn interned(
    store: &EventStore,
    cache: &mut Option<Option<ShortStateKey>>,
    kind: &str,
    state_key: &str,
) -> ServiceResult<Option<ShortStateKey>> {
    if let Some(key) = cache {
        return Ok(*key);
    }
    Ok(*cache.insert(store.state().find_state_key(kind, state_key)?))
}

impl<'a> VisibilityCheck<'a> {
    /// A check for `user_id`, whose membership record in the room is `record`.
    pub fn new(store: &'a EventStore, user_id: &'a str, record: Option<&MembershipRecord>) -> Self {
        Self {
            store,
            user_id,
            last_join_pos: record.map_or(0, |r| r.last_join_pos),
            // Records from before `joined_at` existed read 0: no shortcut for them.
            joined_since: record
                .filter(|r| r.membership == "join" && r.joined_at > 0)
                .map(|r| r.joined_at),
            never_restricted: false,
            visibility_key: None,
            member_key: None,
            visibility_at: HashMap::new(),
            membership_at: HashMap::new(),
            fields: HashMap::new(),
            room_version: None,
        }
    }

    /// The check for a room whose record is `room`: when its history visibility was never
    /// `invited` or `joined`, every event before the viewer's latest join was `shared`
    /// or `world_readable`, so visible to them (rules 1 and 3) without reading the state.
    pub fn in_room(mut self, room: &RoomRecord) -> Self {
        self.never_restricted = !room.visibility_restricted;
        self
    }

    /// `content[field]` (a string) of the state event `key` in `snapshot`.
    fn state_field(
        &mut self,
        snapshot: ShortStateHash,
        key: Option<ShortStateKey>,
        field: &'static str,
    ) -> ServiceResult<Option<String>> {
        let Some(key) = key else {
            return Ok(None);
        };
        let Some(event) = self.store.state().get(snapshot, key)? else {
            return Ok(None);
        };
        if let Some(value) = self.fields.get(&(event, field)) {
            return Ok(value.clone());
        }
        let value = self.store.content_str(event, field)?;
        self.fields.insert((event, field), value.clone());
        Ok(value)
    }

    fn visibility(&mut self, snapshot: ShortStateHash) -> ServiceResult<HistoryVisibility> {
        if snapshot == 0 {
            return Ok(HistoryVisibility::Shared);
        }
        if let Some(v) = self.visibility_at.get(&snapshot) {
            return Ok(*v);
        }
        let key = interned(
            self.store,
            &mut self.visibility_key,
            "m.room.history_visibility",
            "",
        )?;
        let value = self.state_field(snapshot, key, "history_visibility")?;
        let v = HistoryVisibility::parse(value.as_deref());
        self.visibility_at.insert(snapshot, v);
        Ok(v)
    }

    fn membership(&mut self, snapshot: ShortStateHash) -> ServiceResult<Option<Membership>> {
        if snapshot == 0 {
            return Ok(None);
        }
        if let Some(m) = self.membership_at.get(&snapshot) {
            return Ok(*m);
        }
        let key = interned(
            self.store,
            &mut self.member_key,
            "m.room.member",
            self.user_id,
        )?;
        let m = self
            .state_field(snapshot, key, "membership")?
            .map(|m| match m.as_str() {
                "join" => Membership::Join,
                "invite" => Membership::Invite,
                _ => Membership::Other,
            });
        self.membership_at.insert(snapshot, m);
        Ok(m)
    }

    fn allowed_at(&mut self, snapshot: ShortStateHash, pos: u64) -> ServiceResult<bool> {
        let visibility = self.visibility(snapshot)?;
        if visibility == HistoryVisibility::WorldReadable {
            return Ok(true);
        }
        // Decided without the membership: joined later, under `shared`.
        if visibility == HistoryVisibility::Shared && self.last_join_pos > pos {
            return Ok(true);
        }
        let membership = self.membership(snapshot)?;
        Ok(match visibility {
            _ if membership == Some(Membership::Join) => true,
            HistoryVisibility::Invited => membership == Some(Membership::Invite),
            _ => false,
        })
    }

    /// Whether the viewer may see `event`.
    pub fn can_see(&mut self, event: &StoredEvent) -> ServiceResult<bool> {
        if event.kind() == "m.room.redaction" && !self.redaction_applied(event)? {
            return Ok(false);
        }
        // Decided without reading any state, as most events a member reads are (a /sync
        // of their rooms): sent while the viewer was joined (rule 2); the join that began
        // that (their own member event, seen after it); sent before their latest join in
        // a room whose visibility only ever let later members read back (rules 1 and 3).
        if self.sees_everything_after(event.meta.pos.saturating_sub(1))
            || self.joined_since == Some(event.meta.pos)
            || (self.never_restricted && event.meta.pos < self.last_join_pos)
        {
            return Ok(true);
        }
        if self.allowed_at(event.meta.state_before, event.meta.pos)? {
            return Ok(true);
        }
        let before_or_after = event.kind() == "m.room.history_visibility"
            || (event.kind() == "m.room.member" && event.state_key() == Some(self.user_id));
        if before_or_after {
            return self.allowed_at(event.meta.state_after, event.meta.pos);
        }
        Ok(false)
    }

    /// Whether the redaction `event` applied: the event it redacts is held, in its room,
    /// and redacted (by it, or by one before it). A redaction redacted in turn no longer
    /// names its target before room version 11: it counts as applied (as it was, or
    /// there was nothing to show of it).
    fn redaction_applied(&mut self, event: &StoredEvent) -> ServiceResult<bool> {
        let version = match self.room_version {
            Some((room, version)) if room == event.meta.room => version,
            _ => {
                let version = self.store.room_by_short(event.meta.room)?.version;
                self.room_version = Some((event.meta.room, version));
                version
            }
        };
        let Some(target) = crate::core::pdu::redaction_target(event.pdu(), version) else {
            return Ok(event.meta.redacted_by != 0);
        };
        let Some(short) = self.store.state().find_event(target)? else {
            return Ok(false);
        };
        let meta = self.store.meta(short)?;
        Ok(meta.room == event.meta.room && meta.redacted_by != 0)
    }

    /// Whether every event after stream position `pos` is visible to the viewer without
    /// looking: they have been joined since at or before it, so each such event was sent
    /// while they were a member (rule 2).
    pub fn sees_everything_after(&self, pos: u64) -> bool {
        self.joined_since.is_some_and(|since| since <= pos)
    }

    /// Whether the viewer, who may see `event` now, could see it up to stream position
    /// `erased_at` (the last position when its sender was erased; spec: `POST /account/deactivate`, `erase`:
    /// "Users which had visibility on those events prior to the erasure are still able
    /// to see unredacted copies"): they were joined when it was sent or when the erasure
    /// came, or their current (or last) run of joins began between the two. Only a
    /// member who joined after the event and left again before the erasure is not seen
    /// (no membership history is kept). A later join, a display name change included,
    /// does not count. Reads the state only for the events of erased senders.
    pub fn saw_before(&self, event: &StoredEvent, erased_at: u64) -> ServiceResult<bool> {
        let pos = event.meta.pos;
        if self.joined_since.is_some_and(|since| since <= erased_at)
            || (pos..=erased_at).contains(&self.last_join_pos)
        {
            return Ok(true);
        }
        let key = match self.member_key {
            Some(key) => key,
            None => self
                .store
                .state()
                .find_state_key("m.room.member", self.user_id)?,
        };
        let Some(key) = key else {
            return Ok(false);
        };
        // Joined when it was sent, or when the erasure came.
        if self.joined_in(event.meta.state_before, key)? {
            return Ok(true);
        }
        let upto = erased_at.saturating_add(1);
        let last = self.store.timeline(event.meta.room, 0, upto, true, 1)?;
        match last.first() {
            Some((_, short)) => self.joined_in(self.store.meta(*short)?.state_after, key),
            None => Ok(false),
        }
    }

    /// Whether the viewer's member event in `snapshot` (interned as `key`) is a join.
    fn joined_in(&self, snapshot: ShortStateHash, key: ShortStateKey) -> ServiceResult<bool> {
        if snapshot == 0 {
            return Ok(false);
        }
        let Some(member) = self.store.state().get(snapshot, key)? else {
            return Ok(false);
        };
        Ok(self.store.content_str(member, "membership")?.as_deref() == Some("join"))
    }

    /// Whether the room's current history visibility is `world_readable`.
    pub fn world_readable(store: &EventStore, room: &Room) -> ServiceResult<bool> {
        let mut check = VisibilityCheck::new(store, "", None);
        Ok(check.visibility(room.record.state)? == HistoryVisibility::WorldReadable)
    }
}

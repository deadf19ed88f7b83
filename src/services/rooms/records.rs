//! The records the rooms service keeps in its tables.

use serde::{Deserialize, Serialize};

use super::state_store::{ShortEventId, ShortStateHash};

/// `shortroomid_room`: a room's head, rewritten with each event the room gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The room id.
    pub room_id: String,
    /// The room version's identifier (`"10"`, `"11"`, `"12"`).
    pub version: String,
    /// The current state's snapshot.
    pub state: ShortStateHash,
    /// Forward extremities: the events with no successor yet.
    pub extremities: Vec<String>,
    /// The greatest depth in the room.
    pub depth: u64,
    /// Stream position of the room's latest event.
    pub last_pos: u64,
    /// Members whose membership is `join`.
    #[serde(default)]
    pub joined: u64,
    /// Members whose membership is `invite`.
    #[serde(default)]
    pub invited: u64,
    /// Whether the room's history visibility was ever `invited` or `joined` (set by the
    /// writer, never cleared). While it is not, only membership decides what a user may
    /// read, which spares reading the visibility at every event (see
    /// [`super::visibility`]). Records from before the field read `true`: no shortcut.
    #[serde(default = "visibility_unknown")]
    pub visibility_restricted: bool,
    /// Set while the room's state is partial: we joined through another server with
    /// `omit_members` and the member list is not in yet (see the writer's
    /// `partial_state` module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_state: Option<PartialState>,
}

/// What a room joined with a partial state needs until its member list is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialState {
    /// Our join, the event whose state before it the resync asks for.
    pub join_event: String,
    /// The servers the resident server named as in the room (`servers_in_room`): our
    /// events go to them, and the resync asks them, while their members are unknown.
    pub servers: Vec<String>,
}

fn visibility_unknown() -> bool {
    true
}

impl RoomRecord {
    /// The record of a room about to get its first event: no state, no extremities, no
    /// members, and (having had no history visibility yet) no restricted visibility.
    pub fn new(room_id: &str, version: &str) -> Self {
        Self {
            room_id: room_id.to_owned(),
            version: version.to_owned(),
            state: 0,
            extremities: Vec::new(),
            depth: 0,
            last_pos: 0,
            joined: 0,
            invited: 0,
            visibility_restricted: false,
            partial_state: None,
        }
    }

    /// Updates the member counts for a membership going from `before` to `after`.
    pub fn count_change(&mut self, before: &str, after: &str) {
        match before {
            "join" => self.joined = self.joined.saturating_sub(1),
            "invite" => self.invited = self.invited.saturating_sub(1),
            _ => {}
        }
        match after {
            "join" => self.joined += 1,
            "invite" => self.invited += 1,
            _ => {}
        }
    }
}

/// `shorteventid_meta`: where an event sits (binary, fixed width), followed by the
/// event's id in records written since the id moved here too (older records are the 48
/// bytes alone; their id is only in `shorteventid_eventid`). Readers that load events
/// for clients take the id from here, saving a third read per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta {
    /// The room's short id.
    pub room: u64,
    /// The event's stream position (its place in the room's timeline).
    pub pos: u64,
    /// The state before the event.
    pub state_before: ShortStateHash,
    /// The state after the event (the same as before for a non-state event).
    pub state_after: ShortStateHash,
    /// The state event this one replaced (0: none).
    pub replaces: ShortEventId,
    /// The redaction that redacted this event (0: none).
    pub redacted_by: ShortEventId,
}

impl EventMeta {
    const LEN: usize = 48;

    /// The stored form.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        for (i, v) in [
            self.room,
            self.pos,
            self.state_before,
            self.state_after,
            self.replaces,
            self.redacted_by,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// The stored form with the event's id after the fixed fields.
    pub fn encode_with_id(&self, event_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN + event_id.len());
        out.extend_from_slice(&self.encode());
        out.extend_from_slice(event_id.as_bytes());
        out
    }

    /// The event id a stored record carries after its fixed fields, if it has one (a
    /// tail that is not UTF-8 counts as none: the id is then read from
    /// `shorteventid_eventid`, which every event has).
    pub fn decode_event_id(bytes: &[u8]) -> Option<&str> {
        match bytes.get(Self::LEN..) {
            Some(tail) if !tail.is_empty() => std::str::from_utf8(tail).ok(),
            _ => None,
        }
    }

    /// Parses the stored form (the fixed fields; an event id after them is left to
    /// [`EventMeta::decode_event_id`]).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let at = |i: usize| {
            u64::from_be_bytes(
                bytes[i * 8..i * 8 + 8]
                    .try_into()
                    .expect("eight-byte slice"),
            )
        };
        Some(Self {
            room: at(0),
            pos: at(1),
            state_before: at(2),
            state_after: at(3),
            replaces: at(4),
            redacted_by: at(5),
        })
    }
}

/// `userid_roomid_membership`: a user's membership in a room, kept with each member event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipRecord {
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// The member event.
    pub event_id: String,
    /// Its stream position.
    pub pos: u64,
    /// Stream position of the user's latest join (0: never joined), for `shared` history.
    #[serde(default)]
    pub last_join_pos: u64,
    /// Set by `/forget`; cleared by the next membership change.
    #[serde(default)]
    pub forgotten: bool,
    /// Stream position where the current run of `join` began (0 when not joined): a
    /// display name change keeps it, a new join after a leave moves it.
    #[serde(default)]
    pub joined_at: u64,
    /// The member event is one kept out of band (a room we are not in): not part of the
    /// room's state, so the room's member counts never counted it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub out_of_band: bool,
}

/// `alias_roomid`: where a local alias points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasRecord {
    /// The room.
    pub room_id: String,
    /// Who created the alias (may delete it without power in the room).
    pub creator: String,
}

/// `relates_pos_child`: one relation of an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelationRecord {
    /// `m.annotation`, `m.replace`, `m.thread`, `m.reference`, …
    pub rel_type: String,
    /// The child's event type.
    pub event_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_meta_round_trips() {
        let meta = EventMeta {
            room: 1,
            pos: 2,
            state_before: 3,
            state_after: 4,
            replaces: 0,
            redacted_by: u64::MAX,
        };
        assert_eq!(EventMeta::decode(&meta.encode()), Some(meta));
        assert_eq!(EventMeta::decode(&[0; 47]), None);
        // Records without the id (written before it was added) read as before.
        assert_eq!(EventMeta::decode_event_id(&meta.encode()), None);
        let with_id = meta.encode_with_id("$abc:example.org");
        assert_eq!(EventMeta::decode(&with_id), Some(meta));
        assert_eq!(
            EventMeta::decode_event_id(&with_id),
            Some("$abc:example.org")
        );
    }
}

//! Who a user should re-fetch device keys of (`device_lists.changed`) and whose keys they
//! may forget (`device_lists.left`), between two stream positions.
//!
//! Spec: client-server API, "End-to-End Encryption", "Extensions to /sync" and "Tracking the
//! device list for a user"; `GET /keys/changes`. A user is *changed* when their devices,
//! device keys or cross-signing keys changed while they share a room with the syncing
//! user, or when they newly share a room with them; *left* when they no longer share any
//! room. The spec speaks of encrypted rooms for `/sync` and of any joined room for
//! `/keys/changes`; we use joined rooms for both, a superset that costs clients at most a
//! needless key query.
//!
//! An incremental sync takes whose keys changed, who joined and who left the user's rooms
//! from the user's stream (the notifier recorded them as they happened), and compares
//! whole member lists only in rooms the user joined or left themself. A token older than
//! the stream takes the slow path: every changed room's members before and after the
//! window, and every room mate's latest key change.

use std::collections::BTreeSet;

use crate::services::error::ServiceResult;
use crate::services::rooms::event_store::EventStore;
use crate::services::rooms::state_store::ShortStateHash;
use crate::services::Services;
use serde_json::Value;

/// The two lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceListChanges {
    /// Users to re-fetch keys of.
    pub changed: BTreeSet<String>,
    /// Users who share no room with the user any more.
    pub left: BTreeSet<String>,
}

impl DeviceListChanges {
    /// Whether both lists are empty.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// The joined members of a state snapshot (none for snapshot 0: before the room).
fn joined_members(store: &EventStore, snapshot: ShortStateHash) -> ServiceResult<BTreeSet<String>> {
    let mut joined = BTreeSet::new();
    if snapshot == 0 {
        return Ok(joined);
    }
    for event in store.state_events(snapshot, Some("m.room.member"))? {
        if event.content().get("membership").and_then(Value::as_str) == Some("join") {
            if let Some(member) = event.state_key() {
                joined.insert(member.to_owned());
            }
        }
    }
    Ok(joined)
}

/// Changes for `user_id` in `(since, upto]`. `rooms` are the short ids of the rooms that
/// changed for the user in the window (more is harmless); `heard` what the user's stream
/// recorded (users whose keys changed or who joined, users who left), or `None` to work
/// it all out from the rooms and the user's room mates.
pub fn changes(
    services: &Services,
    user_id: &str,
    since: u64,
    upto: u64,
    rooms: &[u64],
    heard: Option<(Vec<String>, Vec<String>)>,
) -> ServiceResult<DeviceListChanges> {
    let store = services.rooms.store();
    let mine: BTreeSet<String> = services.rooms.joined_rooms(user_id)?.into_iter().collect();
    let mut out = DeviceListChanges::default();
    let mut left = BTreeSet::new();
    let from_stream = heard.is_some();
    for short in rooms {
        let room = store.room_by_short(*short)?;
        if from_stream {
            // Others' joins and leaves are heard; only our own need the member lists.
            let own = store.membership(user_id, &room.record.room_id)?;
            if own.is_none_or(|record| record.pos <= since) {
                continue;
            }
        }
        let before = super::response::resolved_at(store, &room, since)?;
        let after = super::response::resolved_at(store, &room, upto)?;
        if before == after {
            continue;
        }
        let (joined_before, joined_after) = (
            joined_members(store, before)?,
            joined_members(store, after)?,
        );
        let (was_in, is_in) = (
            joined_before.contains(user_id),
            joined_after.contains(user_id),
        );
        if is_in {
            for member in joined_after.iter().filter(|m| *m != user_id) {
                if !was_in || !joined_before.contains(member) {
                    out.changed.insert(member.clone());
                }
            }
        }
        if was_in {
            for member in &joined_before {
                if !is_in || !joined_after.contains(member) {
                    left.insert(member.clone());
                }
            }
        }
    }
    let shares_a_room = |other: &str| -> ServiceResult<bool> {
        Ok(store
            .memberships_of(other)?
            .iter()
            .any(|(room, record)| record.membership == "join" && mine.contains(room)))
    };
    // Users the syncing user signed the master key of since the token: their keys as the
    // syncing user sees them changed (the stream path heard of these too).
    let mut signed: Vec<String> = Vec::new();
    let (candidates, check_positions) = match heard {
        Some((changed, gone)) => {
            left.extend(gone);
            (changed, false)
        }
        None => {
            let mut mates: BTreeSet<String> = BTreeSet::new();
            for room_id in &mine {
                if let Some(room) = store.room(room_id)? {
                    mates.extend(joined_members(store, room.record.state)?);
                }
            }
            mates.insert(user_id.to_owned());
            signed = services.accounts.users_signed_since(user_id, since)?;
            (mates.into_iter().collect(), true)
        }
    };
    for user in candidates {
        if check_positions && services.accounts.device_list_pos(&user)? <= since {
            continue;
        }
        if user == user_id || shares_a_room(&user)? {
            out.changed.insert(user);
        }
    }
    for user in signed {
        if shares_a_room(&user)? {
            out.changed.insert(user);
        }
    }
    for member in left {
        if member != user_id && !shares_a_room(&member)? {
            out.changed.remove(&member);
            out.left.insert(member);
        }
    }
    Ok(out)
}

//! The deprecated `GET /initialSync`: every room of the user as a snapshot, their
//! presence-visible room mates and their account data, and a token where the answer
//! ends. Older clients and tools still call it; `/sync` without `since` replaces it.
//!
//! Spec: client-server API, `old_sync.yaml` (`limit` messages per room, `archived` for
//! rooms left). Each room goes through the same access and visibility rules as
//! `/rooms/{roomId}/initialSync`.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::services::error::ServiceResult;
use crate::services::rooms::client_event::Viewer;
use crate::services::rooms::tokens;
use crate::services::Services;

/// Messages per room without `limit`.
pub const DEFAULT_MESSAGES: usize = 10;

/// The answer for `viewer`: `limit` messages per room, left and banned rooms with
/// `archived`.
pub fn initial_sync(
    services: &Services,
    viewer: Viewer<'_>,
    limit: usize,
    archived: bool,
) -> ServiceResult<Value> {
    let upto = services.stream_positions.watermark();
    let user_id = viewer.user_id;
    let mut room_data: HashMap<String, Vec<Value>> = HashMap::new();
    let mut global_data = Vec::new();
    for data in services.accounts.all_account_data(user_id)? {
        let event = json!({ "type": data.kind, "content": data.content });
        match data.room_id {
            Some(room) => room_data.entry(room).or_default().push(event),
            None => global_data.push(event),
        }
    }
    let mut rooms = Vec::new();
    let mut mates: BTreeSet<String> = BTreeSet::new();
    for (room_id, record) in services.rooms.store().memberships_of(user_id)? {
        let membership = record.membership.as_str();
        if record.forgotten || (!archived && !matches!(membership, "join" | "invite")) {
            continue;
        }
        if membership == "invite" {
            rooms.push(json!({
                "room_id": room_id,
                "membership": membership,
                "invite": services.rooms.invite_event_for(viewer, &room_id)?,
            }));
            continue;
        }
        // A room left without ever being joined (an invite rejected, a ban before any
        // join) has no history the user may read.
        if membership == "knock" || (membership != "join" && record.last_join_pos == 0) {
            continue;
        }
        let snapshot = services.rooms.room_snapshot(viewer, &room_id, limit)?;
        if membership == "join" {
            mates.extend(
                snapshot
                    .state
                    .iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .filter(|e| e["content"]["membership"] == "join")
                    .filter_map(|e| e["state_key"].as_str().map(str::to_owned)),
            );
        }
        let data = room_data.remove(&room_id).unwrap_or_default();
        rooms.push(snapshot.into_room_info(&room_id, data));
    }
    // Presence of the user and their room mates who are not offline.
    mates.insert(user_id.to_owned());
    let now = crate::services::now_ms();
    let presence: Vec<Value> = services
        .presence
        .not_offline(upto)
        .into_iter()
        .filter(|(user, _)| mates.contains(user))
        .map(|(user, record)| {
            json!({ "type": "m.presence", "sender": user, "content": record.content(now) })
        })
        .collect();
    Ok(json!({
        "end": tokens::token(upto),
        "rooms": rooms,
        "presence": presence,
        "account_data": global_data,
    }))
}

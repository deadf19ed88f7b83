//! The deprecated `GET /initialSync`: every room of the user as a snapshot, their
//! presence-visible room mates and their account data, and a token where the answer
//! ends. Older clients and tools still call it; `/sync` without `since` replaces it.
//!
//! Spec: client-server API, `old_sync.yaml` (`limit` messages per room, `archived` for
//! rooms left). Each room goes through the same access and visibility rules as
//! `/rooms/{roomId}/initialSync`.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::error::MatrixResult;
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
) -> MatrixResult<Value> {
    let upto = services.stream_positions.watermark();
    let user_id = viewer.user_id;
    let mut room_data: Map<String, Value> = Map::new();
    let mut global_data = Vec::new();
    for data in services.accounts.all_account_data(user_id)? {
        let event = json!({ "type": data.kind, "content": data.content });
        let Some(room) = data.room_id else {
            global_data.push(event);
            continue;
        };
        if let Some(list) = room_data
            .entry(room)
            .or_insert_with(|| json!([]))
            .as_array_mut()
        {
            list.push(event);
        }
    }
    let mut rooms = Vec::new();
    let mut mates: BTreeSet<String> = BTreeSet::new();
    for (room_id, record) in services.rooms.store().memberships_of(user_id)? {
        let membership = record.membership.as_str();
        if record.forgotten || (!archived && !matches!(membership, "join" | "invite")) {
            continue;
        }
        let mut room = json!({ "room_id": room_id, "membership": membership });
        if membership == "invite" {
            room["invite"] = services.rooms.invite_event_for(viewer, &room_id)?;
            rooms.push(room);
            continue;
        }
        if membership == "knock" {
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
        let mut messages = json!({ "chunk": snapshot.chunk, "end": snapshot.end });
        if let Some(start) = snapshot.start {
            messages["start"] = json!(start);
        }
        room["messages"] = messages;
        room["state"] = json!(snapshot.state);
        room["visibility"] = json!(if snapshot.published {
            "public"
        } else {
            "private"
        });
        room["account_data"] = room_data.remove(&room_id).unwrap_or_else(|| json!([]));
        rooms.push(room);
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

//! Spec: client-server API, deprecated `GET /events` ("Events" of earlier versions; older
//! clients and tools still long-poll it): the events of the user's rooms after `from`, as
//! one list, waiting up to `timeout` ms for some.
//!
//! Served by the `/sync` machinery, so a parked `/events` costs what a parked `/sync` costs:
//! an incremental sync from `from` (a token of this endpoint or of `/sync`; without one,
//! from now) whose answer is flattened: each joined or left room's new timeline events and
//! typing with their `room_id`, our user's invites, then presence. At most the last 100
//! events of a room come in one answer (a client that fell further behind pages with
//! `/messages`).

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{AuthedAllowGuest, QueryParams};
use crate::http::AppState;
use crate::services::ephemeral::presence::State as PresenceState;
use crate::services::rooms::tokens;
use crate::services::sync::filters::Filter;
use crate::services::sync::SyncRequest;

/// `/events` query parameters.
#[derive(Deserialize)]
pub struct EventsParams {
    from: Option<String>,
    timeout: Option<String>,
    /// Only this room's events (spec: `peekEvents`); one the user is joined to.
    room_id: Option<String>,
}

/// The user's events after `from`.
pub async fn events(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    QueryParams(params): QueryParams<EventsParams>,
) -> MatrixResult<Json<Value>> {
    // `/events` has no place for to-device messages: it leaves them in the inbox, and its
    // `end` token keeps the to-device position of `from` (0 without one), so that a `/sync`
    // from that token still delivers them instead of acknowledging them unseen.
    let (since, to_device_seen) = match params.from.as_deref() {
        Some(token) => services.sync.parse_since(token)?,
        None => (services.stream_positions.watermark(), 0),
    };
    let timeout = match params.timeout.as_deref() {
        None => Duration::ZERO,
        Some(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|_| MatrixError::invalid_param("timeout must be a number of ms"))?,
        ),
    };
    let mut room_filter = json!({
        "timeline": {"limit": 100},
        "state": {"types": []},
        "ephemeral": {"types": ["m.typing"]},
        "account_data": {"types": []},
    });
    if let Some(room_id) = &params.room_id {
        // Peeking at a room one is not joined to (a preview) is not served: only a
        // member's own rooms have a stream here.
        let joined = services
            .rooms
            .joined_rooms(session.user_id.as_str())?
            .iter()
            .any(|r| r == room_id);
        if !joined {
            return Err(MatrixError::forbidden(
                "You are not joined to this room (peeking through /events is not served)",
            ));
        }
        room_filter["rooms"] = json!([room_id]);
    }
    let mut filter = json!({"room": room_filter, "account_data": {"types": []}});
    if params.room_id.is_some() {
        // One room's events: no one's presence.
        filter["presence"] = json!({"types": []});
    }
    let filter = Filter::from_json(&filter)?;
    // Spec: "This will block until an event is received, or until the timeout is
    // reached": an answer with nothing this endpoint shows (a device list change, say)
    // goes back to waiting from where it ended.
    // Capped as /sync caps its own (a client's number could overflow the clock).
    let deadline = tokio::time::Instant::now() + timeout.min(crate::services::sync::MAX_TIMEOUT);
    let mut from = since;
    let (chunk, upto) = loop {
        let request = SyncRequest {
            user_id: session.user_id.as_str().to_owned(),
            device_id: session.device_id.clone(),
            since: Some(from),
            to_device_since: Some(from),
            deliver_to_device: false,
            set_presence: PresenceState::Online,
            timeout: deadline.saturating_duration_since(tokio::time::Instant::now()),
            full_state: false,
            use_state_after: false,
            filter: filter.clone(),
        };
        let response = services.sync.sync(services.clone(), request).await?;
        // Writing the answer may build rooms (blocking work).
        let answer = tokio::task::spawn_blocking(move || -> MatrixResult<Value> {
            let mut bytes = Vec::new();
            for chunk in response.into_json_chunks() {
                bytes.extend(chunk?);
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| MatrixError::internal(format!("a sync answer is not JSON: {e}")))
        })
        .await
        .map_err(|e| MatrixError::internal(format!("events task failed: {e}")))??;
        let upto = answer["next_batch"]
            .as_str()
            .map(tokens::parse)
            .transpose()?
            .unwrap_or(from);
        let chunk = flatten(&answer, session.user_id.as_str());
        if !chunk.is_empty() || upto <= from || tokio::time::Instant::now() >= deadline {
            break (chunk, upto.max(from));
        }
        from = upto;
    };
    let end = if to_device_seen < upto {
        format!("{}_{to_device_seen}", tokens::token(upto))
    } else {
        tokens::token(upto)
    };
    Ok(Json(json!({
        "chunk": chunk,
        "start": params.from.unwrap_or_else(|| tokens::token(since)),
        "end": end,
    })))
}

/// A sync answer as one list of events: room events (each with its `room_id`) in the order
/// they were sent, then typing, then presence.
fn flatten(answer: &Value, user_id: &str) -> Vec<Value> {
    let with_room = |event: &Value, room_id: &str| {
        let mut event = event.clone();
        if let Some(object) = event.as_object_mut() {
            object.insert("room_id".into(), json!(room_id));
        }
        event
    };
    let events_of = |section: &Value, key: &str| -> Vec<Value> {
        section[key]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // Each room's events in order.
    let mut by_room: Vec<VecDeque<Value>> = Vec::new();
    let mut typing = Vec::new();
    for kind in ["join", "leave"] {
        for (room_id, room) in answer["rooms"][kind].as_object().into_iter().flatten() {
            by_room.push(
                events_of(room, "timeline")
                    .iter()
                    .map(|event| with_room(event, room_id))
                    .collect(),
            );
            for event in events_of(room, "ephemeral") {
                if event["type"] == "m.typing" {
                    typing.push(with_room(&event, room_id));
                }
            }
        }
    }
    for (room_id, room) in answer["rooms"]["invite"].as_object().into_iter().flatten() {
        for event in events_of(room, "invite_state") {
            if event["type"] == "m.room.member" && event["state_key"] == user_id {
                by_room.push(VecDeque::from([with_room(&event, room_id)]));
            }
        }
    }
    let mut chunk = merged_by_time(by_room);
    chunk.extend(typing);
    chunk.extend(
        answer["presence"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    chunk
}

/// Rooms' events as one list: each room's in its own order (a remote server's clock
/// cannot reorder them), across rooms by when they were sent.
fn merged_by_time(mut rooms: Vec<VecDeque<Value>>) -> Vec<Value> {
    let ts = |event: &Value| event["origin_server_ts"].as_u64().unwrap_or(0);
    let mut out = Vec::with_capacity(rooms.iter().map(VecDeque::len).sum());
    loop {
        let next = rooms
            .iter()
            .enumerate()
            .filter_map(|(i, room)| Some((ts(room.front()?), i)))
            .min();
        let Some((_, i)) = next else {
            return out;
        };
        out.extend(rooms[i].pop_front());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rooms_events_stay_in_order_whatever_their_clocks() {
        let event = |room: &str, ts: u64| json!({"room_id": room, "origin_server_ts": ts});
        let merged = merged_by_time(vec![
            VecDeque::from([event("!a", 50), event("!a", 10), event("!a", 60)]),
            VecDeque::from([event("!b", 20), event("!b", 55)]),
        ]);
        let order: Vec<(String, u64)> = merged
            .iter()
            .map(|e| {
                let room = e["room_id"].as_str().unwrap().to_owned();
                (room, e["origin_server_ts"].as_u64().unwrap())
            })
            .collect();
        let expected = [("!b", 20), ("!a", 50), ("!a", 10), ("!b", 55), ("!a", 60)];
        let expected: Vec<(String, u64)> =
            expected.iter().map(|(r, t)| (r.to_string(), *t)).collect();
        assert_eq!(order, expected);
    }
}

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
    let filter = Filter::from_json(&json!({
        "room": {
            "timeline": {"limit": 100},
            "state": {"types": []},
            "account_data": {"types": []},
        },
        "account_data": {"types": []},
    }))?;
    let request = SyncRequest {
        user_id: session.user_id.as_str().to_owned(),
        device_id: session.device_id.clone(),
        since: Some(since),
        to_device_since: Some(since),
        deliver_to_device: false,
        set_presence: PresenceState::Online,
        timeout,
        full_state: false,
        use_state_after: false,
        filter,
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
        .unwrap_or(since);
    let end = if to_device_seen < upto {
        format!("{}_{to_device_seen}", tokens::token(upto))
    } else {
        tokens::token(upto)
    };
    Ok(Json(json!({
        "chunk": flatten(&answer, session.user_id.as_str()),
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
    let mut timeline = Vec::new();
    let mut typing = Vec::new();
    for kind in ["join", "leave"] {
        for (room_id, room) in answer["rooms"][kind].as_object().into_iter().flatten() {
            for event in events_of(room, "timeline") {
                timeline.push(with_room(&event, room_id));
            }
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
                timeline.push(with_room(&event, room_id));
            }
        }
    }
    // Each room's events are in order; across rooms, by when they were sent.
    timeline.sort_by_key(|e| e["origin_server_ts"].as_u64().unwrap_or(0));
    let mut chunk = timeline;
    chunk.extend(typing);
    chunk.extend(
        answer["presence"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    chunk
}

//! Spec: client-server API, `GET /rooms/{roomId}/initialSync` (deprecated but for
//! peeking; see [`crate::services::rooms::room_snapshot`]).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{AuthedAllowGuest, PathParams};
use crate::http::AppState;
use crate::services::rooms::client_event::Viewer;

/// The room's state, latest messages, the user's membership and room account data.
pub async fn room_initial_sync(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let user_id = session.user_id.as_str();
    let viewer = Viewer {
        user_id,
        device_id: &session.device_id,
    };
    let snapshot = services.rooms.room_snapshot(viewer, &room_id)?;
    let account_data: Vec<Value> = services
        .accounts
        .all_account_data(user_id)?
        .into_iter()
        .filter(|d| d.room_id.as_deref() == Some(room_id.as_str()))
        .map(|d| json!({ "type": d.kind, "content": d.content }))
        .collect();
    let mut messages = json!({ "chunk": snapshot.chunk, "end": snapshot.end });
    if let Some(start) = snapshot.start {
        messages["start"] = json!(start);
    }
    let mut out = json!({
        "room_id": room_id,
        "messages": messages,
        "state": snapshot.state,
        "visibility": if snapshot.published { "public" } else { "private" },
        "account_data": account_data,
    });
    if let Some(membership) = snapshot.membership {
        out["membership"] = json!(membership);
    }
    Ok(Json(out))
}

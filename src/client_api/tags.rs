//! Spec: client-server API, "Room Tagging": `GET /user/{userId}/rooms/{roomId}/tags`,
//! `PUT/DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`. Tags are the room's `m.tag`
//! account data, so `/sync` delivers them like any account data.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use super::account_data::{own, room_id};
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;

/// Tag names longer than this are refused (spec: "at most 255 bytes").
const MAX_TAG_BYTES: usize = 255;

fn tags_in(content: Option<Value>) -> Map<String, Value> {
    content
        .and_then(|c| c.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default()
}

/// The room's tags.
pub async fn get_tags(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, room)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    room_id(&room)?;
    let current = services
        .accounts
        .account_data(&user_id, Some(&room), "m.tag")?;
    Ok(Json(json!({ "tags": tags_in(current) })))
}

/// Adds or replaces a tag.
pub async fn put_tag(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, room, tag)): PathParams<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    room_id(&room)?;
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(MatrixError::invalid_param("A tag is 1 to 255 bytes"));
    }
    let Some(body) = body.as_object() else {
        return Err(MatrixError::bad_json("The tag's content must be an object"));
    };
    if let Some(order) = body.get("order") {
        if !order.as_f64().is_some_and(|o| (0.0..=1.0).contains(&o)) {
            return Err(MatrixError::bad_json(
                "order must be a number between 0 and 1",
            ));
        }
    }
    let body = body.clone();
    services
        .accounts
        .update_account_data(&user_id, Some(&room), "m.tag", |current| {
            let mut tags = tags_in(current);
            tags.insert(tag, Value::Object(body));
            Some(Some(json!({ "tags": tags })))
        })
        .await?;
    Ok(Json(json!({})))
}

/// Removes a tag (removing one that is absent is fine).
pub async fn delete_tag(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, room, tag)): PathParams<(String, String, String)>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    room_id(&room)?;
    services
        .accounts
        .update_account_data(&user_id, Some(&room), "m.tag", |current| {
            let mut tags = tags_in(current);
            tags.remove(&tag)?;
            Some(Some(json!({ "tags": tags })))
        })
        .await?;
    Ok(Json(json!({})))
}

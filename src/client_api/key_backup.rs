//! Spec: client-server API, "End-to-End Encryption", "Server-side key backups":
//! `/room_keys/version[/{version}]` and `/room_keys/keys[/{roomId}[/{sessionId}]]`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::key_backup::{room_json, KeysUpdated, RoomKeys, Scope};

/// A version's body (create and update).
#[derive(Deserialize)]
pub struct VersionBody {
    algorithm: String,
    auth_data: Value,
    version: Option<String>,
}

/// Creates a backup version.
pub async fn create_version(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<VersionBody>,
) -> MatrixResult<Json<Value>> {
    let version = services
        .key_backup
        .create_version(session.user_id.as_str(), &body.algorithm, body.auth_data)
        .await?;
    Ok(Json(json!({ "version": version })))
}

/// The current version.
pub async fn current_version(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    Ok(Json(
        services
            .key_backup
            .version_info(session.user_id.as_str(), None)?,
    ))
}

/// One version.
pub async fn get_version(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(version): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    Ok(Json(
        services
            .key_backup
            .version_info(session.user_id.as_str(), Some(&version))?,
    ))
}

/// Replaces a version's `auth_data`.
pub async fn update_version(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(version): PathParams<String>,
    JsonBody(body): JsonBody<VersionBody>,
) -> MatrixResult<Json<Value>> {
    services
        .key_backup
        .update_version(
            session.user_id.as_str(),
            &version,
            &body.algorithm,
            body.auth_data,
            body.version.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

/// Deletes a version and its keys.
pub async fn delete_version(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(version): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    services
        .key_backup
        .delete_version(session.user_id.as_str(), &version)
        .await?;
    Ok(Json(json!({})))
}

/// `?version=` of every keys request.
#[derive(Deserialize)]
pub struct VersionParam {
    version: Option<String>,
}

impl VersionParam {
    fn get(self) -> MatrixResult<String> {
        self.version
            .ok_or_else(|| MatrixError::missing_param("Missing `version`"))
    }
}

fn updated(result: KeysUpdated) -> Json<Value> {
    Json(json!({ "etag": result.etag, "count": result.count }))
}

/// `PUT /room_keys/keys` body.
#[derive(Deserialize)]
pub struct AllKeysBody {
    rooms: BTreeMap<String, RoomBody>,
}

/// `PUT /room_keys/keys/{roomId}` body.
#[derive(Deserialize)]
pub struct RoomBody {
    sessions: BTreeMap<String, Value>,
}

/// Stores keys of several rooms.
pub async fn put_all(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<VersionParam>,
    JsonBody(body): JsonBody<AllKeysBody>,
) -> MatrixResult<Json<Value>> {
    let keys: RoomKeys = body
        .rooms
        .into_iter()
        .map(|(room, r)| (room, r.sessions))
        .collect();
    let result = services
        .key_backup
        .put_keys(session.user_id.as_str(), &params.get()?, keys)
        .await?;
    Ok(updated(result))
}

/// Stores keys of one room.
pub async fn put_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<VersionParam>,
    JsonBody(body): JsonBody<RoomBody>,
) -> MatrixResult<Json<Value>> {
    let keys = RoomKeys::from([(room_id, body.sessions)]);
    let result = services
        .key_backup
        .put_keys(session.user_id.as_str(), &params.get()?, keys)
        .await?;
    Ok(updated(result))
}

/// Stores the key of one session.
pub async fn put_session(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((room_id, session_id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<VersionParam>,
    JsonBody(body): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    let keys = RoomKeys::from([(room_id, BTreeMap::from([(session_id, body)]))]);
    let result = services
        .key_backup
        .put_keys(session.user_id.as_str(), &params.get()?, keys)
        .await?;
    Ok(updated(result))
}

/// Keys of every room.
pub async fn get_all(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<VersionParam>,
) -> MatrixResult<Json<Value>> {
    let keys =
        services
            .key_backup
            .get_keys(session.user_id.as_str(), &params.get()?, Scope::All)?;
    let rooms: Map<String, Value> = keys
        .into_iter()
        .map(|(room, sessions)| (room, room_json(sessions)))
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
}

/// Keys of one room.
pub async fn get_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<VersionParam>,
) -> MatrixResult<Json<Value>> {
    let mut keys = services.key_backup.get_keys(
        session.user_id.as_str(),
        &params.get()?,
        Scope::Room(&room_id),
    )?;
    Ok(Json(room_json(keys.remove(&room_id).unwrap_or_default())))
}

/// The key of one session; 404 when there is none.
pub async fn get_session(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((room_id, session_id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<VersionParam>,
) -> MatrixResult<Json<Value>> {
    let mut keys = services.key_backup.get_keys(
        session.user_id.as_str(),
        &params.get()?,
        Scope::Session(&room_id, &session_id),
    )?;
    keys.remove(&room_id)
        .and_then(|mut s| s.remove(&session_id))
        .map(Json)
        .ok_or_else(|| MatrixError::not_found("No key for this session"))
}

/// Deletes every key of a version.
pub async fn delete_all(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<VersionParam>,
) -> MatrixResult<Json<Value>> {
    let result = services
        .key_backup
        .delete_keys(session.user_id.as_str(), &params.get()?, Scope::All)
        .await?;
    Ok(updated(result))
}

/// Deletes the keys of one room.
pub async fn delete_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<VersionParam>,
) -> MatrixResult<Json<Value>> {
    let result = services
        .key_backup
        .delete_keys(
            session.user_id.as_str(),
            &params.get()?,
            Scope::Room(&room_id),
        )
        .await?;
    Ok(updated(result))
}

/// Deletes the key of one session.
pub async fn delete_session(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((room_id, session_id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<VersionParam>,
) -> MatrixResult<Json<Value>> {
    let result = services
        .key_backup
        .delete_keys(
            session.user_id.as_str(),
            &params.get()?,
            Scope::Session(&room_id, &session_id),
        )
        .await?;
    Ok(updated(result))
}

//! Spec: client-server API, "Room aliases" and "Published room directory": `PUT/GET/DELETE
//! /directory/room/{roomAlias}`, `GET /rooms/{roomId}/aliases`, `GET/PUT
//! /directory/list/room/{roomId}`, `GET/POST /publicRooms`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::ServerName;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{
    Authed, AuthedAllowGuest, JsonBody, MaybeJsonBody, PathParams, QueryParams,
};
use crate::http::AppState;
use crate::services::rooms::aliases::PublicRoomsQuery;

/// `PUT /directory/room/{alias}` body.
#[derive(Deserialize)]
pub struct AliasBody {
    room_id: String,
}

/// Creates a local alias.
pub async fn put_alias(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(alias): PathParams<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> MatrixResult<Json<Value>> {
    services
        .rooms
        .create_alias(&session.user_id, &alias, &body.room_id)
        .await?;
    Ok(Json(json!({})))
}

/// Resolves an alias (no authentication needed); another server's alias by asking that
/// server (server-server `GET /query/directory`).
pub async fn get_alias(
    State(services): State<AppState>,
    PathParams(alias): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let parsed = crate::core::RoomAliasId::parse(&alias)
        .map_err(|e| MatrixError::invalid_param(format!("{alias:?} is not a room alias: {e}")))?;
    if parsed.server_name() != services.config.server_name.as_str() {
        let (room_id, servers) = services
            .federation
            .room_alias(&parsed)
            .await
            .map_err(|e| e.for_client("Room alias"))?;
        return Ok(Json(json!({ "room_id": room_id, "servers": servers })));
    }
    let (room_id, servers) = services.rooms.resolve_alias(&alias)?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// Deletes a local alias.
pub async fn delete_alias(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(alias): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let is_admin = services.accounts.is_admin(&session.user_id)?;
    services
        .rooms
        .delete_alias(&session.user_id, is_admin, &alias)
        .await?;
    Ok(Json(json!({})))
}

/// A room's local aliases.
pub async fn room_aliases(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let aliases = services
        .rooms
        .local_aliases(session.user_id.as_str(), &room_id)?;
    Ok(Json(json!({ "aliases": aliases })))
}

/// Whether a room is published (no authentication needed).
pub async fn get_visibility(
    State(services): State<AppState>,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let published = services.rooms.is_published(&room_id)?;
    Ok(Json(json!({
        "visibility": if published { "public" } else { "private" }
    })))
}

/// `PUT /directory/list/room/{roomId}` body.
#[derive(Deserialize)]
pub struct VisibilityBody {
    visibility: Option<String>,
}

/// Publishes or hides a room.
pub async fn put_visibility(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> MatrixResult<Json<Value>> {
    let published = match body.visibility.as_deref() {
        Some("public") => true,
        None | Some("private") => false,
        Some(other) => {
            return Err(MatrixError::invalid_param(format!(
                "visibility must be public or private, not {other:?}"
            )))
        }
    };
    let is_admin = services.accounts.is_admin(&session.user_id)?;
    services
        .rooms
        .set_visibility(&session.user_id, is_admin, &room_id, published)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /publicRooms` query.
#[derive(Deserialize)]
pub struct PublicRoomsParams {
    limit: Option<String>,
    since: Option<String>,
    server: Option<String>,
}

/// The other server a `server` parameter names, if it names one.
fn other_server(services: &AppState, server: Option<&str>) -> MatrixResult<Option<ServerName>> {
    match server {
        Some(s) if s != services.config.server_name.as_str() => ServerName::parse(s)
            .map(Some)
            .map_err(|e| MatrixError::invalid_param(format!("server is not a server name: {e}"))),
        _ => Ok(None),
    }
}

/// Another server's directory, through federation.
async fn remote_rooms(
    services: &AppState,
    server: &ServerName,
    (limit, since): (Option<usize>, Option<&str>),
    filter: Option<Value>,
) -> MatrixResult<Json<Value>> {
    let answer = services
        .federation
        .public_rooms(server, (limit, since), filter.as_ref())
        .await
        .map_err(|e| e.for_client("Room directory"))?;
    Ok(Json(Value::Object(answer)))
}

/// The published rooms (no authentication needed, but for another server's: we do not
/// make requests to other servers for anyone who asks).
pub async fn get_public_rooms(
    State(services): State<AppState>,
    session: Option<AuthedAllowGuest>,
    QueryParams(params): QueryParams<PublicRoomsParams>,
) -> MatrixResult<Json<Value>> {
    let limit = super::room_events::limit(params.limit.as_deref(), 500)?;
    if let Some(server) = other_server(&services, params.server.as_deref())? {
        if session.is_none() {
            return Err(MatrixError::new(
                401,
                crate::error::ErrorCode::MissingToken,
                "Listing another server's rooms needs an access token",
            ));
        }
        return remote_rooms(
            &services,
            &server,
            (Some(limit), params.since.as_deref()),
            None,
        )
        .await;
    }
    Ok(Json(services.rooms.public_rooms(&PublicRoomsQuery {
        limit: Some(limit),
        since: params.since,
        search: None,
        room_types: None,
    })?))
}

/// `POST /publicRooms` body.
#[derive(Deserialize, Default)]
pub struct PublicRoomsBody {
    limit: Option<usize>,
    since: Option<String>,
    filter: Option<PublicRoomsFilter>,
}

/// The body's `filter`.
#[derive(Deserialize, Default)]
pub struct PublicRoomsFilter {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

/// `POST /publicRooms` query.
#[derive(Deserialize)]
pub struct ServerParam {
    server: Option<String>,
}

/// The published rooms, filtered.
pub async fn post_public_rooms(
    State(services): State<AppState>,
    AuthedAllowGuest(_session): AuthedAllowGuest,
    QueryParams(params): QueryParams<ServerParam>,
    MaybeJsonBody(body): MaybeJsonBody<PublicRoomsBody>,
) -> MatrixResult<Json<Value>> {
    let body = body.unwrap_or_default();
    if let Some(server) = other_server(&services, params.server.as_deref())? {
        let filter = body.filter.as_ref().map(|f| {
            let mut out = serde_json::Map::new();
            if let Some(term) = &f.generic_search_term {
                out.insert("generic_search_term".into(), json!(term));
            }
            if let Some(types) = &f.room_types {
                out.insert("room_types".into(), json!(types));
            }
            Value::Object(out)
        });
        return remote_rooms(
            &services,
            &server,
            (body.limit, body.since.as_deref()),
            filter,
        )
        .await;
    }
    let filter = body.filter.unwrap_or_default();
    Ok(Json(services.rooms.public_rooms(&PublicRoomsQuery {
        limit: body.limit,
        since: body.since,
        search: filter.generic_search_term,
        room_types: filter.room_types,
    })?))
}

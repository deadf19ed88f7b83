//! Spec: server-server API, "Public Room Directory": `GET` and `POST
//! /_matrix/federation/v1/publicRooms`: our published rooms, as a client of ours sees
//! them (`limit`, `since`; the POST form's `filter` with `generic_search_term` and
//! `room_types`). This server bridges no third-party networks: `include_all_networks`
//! changes nothing and a `third_party_instance_id` lists no room.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Signed;
use crate::core::url;
use crate::error::{MatrixError, MatrixResult};
use crate::http::AppState;
use crate::services::rooms::aliases::PublicRoomsQuery;

/// Page size when none is asked.
const DEFAULT_LIMIT: usize = 100;
/// Page size at most.
const MAX_LIMIT: usize = 500;

fn no_rooms() -> Json<Value> {
    Json(json!({ "chunk": [], "total_room_count_estimate": 0 }))
}

/// `GET /publicRooms`.
pub async fn get_public_rooms(
    State(services): State<AppState>,
    RawQuery(query): RawQuery,
    _signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let query = query.unwrap_or_default();
    let first = |name: &str| url::query_values(&query, name).into_iter().next();
    if first("third_party_instance_id").is_some() {
        return Ok(no_rooms());
    }
    // Spec: "Defaults to 0 (no limit)": 0 is as many as a page holds here (the rest
    // follows with `next_batch`), as is a missing limit.
    let limit = match first("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text
            .parse::<usize>()
            .map_err(|_| MatrixError::invalid_param("limit is not a number"))?
        {
            0 => MAX_LIMIT,
            n => n,
        },
    };
    Ok(Json(services.rooms.public_rooms(&PublicRoomsQuery {
        limit: Some(limit.min(MAX_LIMIT)),
        since: first("since"),
        search: None,
        room_types: None,
    })?))
}

/// The POST body.
#[derive(Deserialize, Default)]
pub struct PublicRoomsBody {
    limit: Option<usize>,
    since: Option<String>,
    filter: Option<Filter>,
    third_party_instance_id: Option<String>,
}

/// Its `filter`.
#[derive(Deserialize, Default)]
pub struct Filter {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

/// `POST /publicRooms`.
pub async fn post_public_rooms(
    State(services): State<AppState>,
    signed: Signed<PublicRoomsBody>,
) -> MatrixResult<Json<Value>> {
    let body = signed.body;
    if body.third_party_instance_id.is_some() {
        return Ok(no_rooms());
    }
    let filter = body.filter.unwrap_or_default();
    Ok(Json(services.rooms.public_rooms(&PublicRoomsQuery {
        limit: Some(body.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)),
        since: body.since,
        search: filter.generic_search_term,
        room_types: filter.room_types,
    })?))
}

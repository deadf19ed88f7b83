//! Spec: client-server API, "Server Side Search": `POST /search`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, QueryParams};
use crate::http::AppState;
use crate::services::rooms::filter::RoomEventFilter;
use crate::services::search::index::Field;
use crate::services::search::{self, ContextRequest, Cursor, Order, SearchRequest};

/// `?next_batch=`.
#[derive(Deserialize)]
pub struct SearchParams {
    next_batch: Option<String>,
}

/// The request body.
#[derive(Deserialize)]
pub struct SearchBody {
    search_categories: Categories,
}

#[derive(Deserialize)]
struct Categories {
    room_events: Option<RoomEventsCriteria>,
}

#[derive(Deserialize)]
struct RoomEventsCriteria {
    search_term: String,
    keys: Option<Vec<String>>,
    filter: Option<RoomEventFilter>,
    order_by: Option<Order>,
    event_context: Option<EventContextBody>,
    #[serde(default)]
    include_state: bool,
    groupings: Option<Groupings>,
}

#[derive(Deserialize)]
struct EventContextBody {
    before_limit: Option<usize>,
    after_limit: Option<usize>,
    #[serde(default)]
    include_profile: bool,
}

#[derive(Deserialize)]
struct Groupings {
    #[serde(default)]
    group_by: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    key: String,
}

/// Searches the events of the rooms the user has been in.
pub async fn search(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<SearchParams>,
    JsonBody(body): JsonBody<SearchBody>,
) -> MatrixResult<Json<Value>> {
    let Some(criteria) = body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    let fields = match &criteria.keys {
        None => Field::Body as u8 | Field::Name as u8 | Field::Topic as u8,
        Some(keys) => keys.iter().try_fold(0u8, |mask, key| {
            Field::from_key(key)
                .map(|f| mask | f as u8)
                .ok_or_else(|| MatrixError::invalid_param(format!("Cannot search key {key:?}")))
        })?,
    };
    let (mut group_by_room, mut group_by_sender) = (false, false);
    for group in criteria.groupings.iter().flat_map(|g| &g.group_by) {
        match group.key.as_str() {
            "room_id" => group_by_room = true,
            "sender" => group_by_sender = true,
            other => {
                return Err(MatrixError::invalid_param(format!(
                    "Cannot group by {other:?}"
                )))
            }
        }
    }
    let defaults = ContextRequest::default();
    let request = SearchRequest {
        user_id: session.user_id.as_str().to_owned(),
        device_id: session.device_id.clone(),
        search_term: criteria.search_term,
        fields,
        filter: criteria.filter.unwrap_or_default(),
        order: criteria.order_by.unwrap_or(Order::Rank),
        context: criteria.event_context.map(|c| ContextRequest {
            before: c.before_limit.unwrap_or(defaults.before),
            after: c.after_limit.unwrap_or(defaults.after),
            include_profile: c.include_profile,
        }),
        include_state: criteria.include_state,
        group_by_room,
        group_by_sender,
        next_batch: params
            .next_batch
            .as_deref()
            .map(Cursor::parse)
            .transpose()?,
    };
    let room_events = tokio::task::spawn_blocking(move || search::room_events(&services, &request))
        .await
        .map_err(|e| MatrixError::internal(format!("search task failed: {e}")))??;
    Ok(Json(
        json!({ "search_categories": { "room_events": room_events } }),
    ))
}

//! Spec: client-server API, "Syncing": `GET /sync`, and "Filtering": `POST
//! /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::accounts::Session;
use crate::services::ephemeral::presence::State as PresenceState;
use crate::services::sync::filters::Filters;
use crate::services::sync::response::SyncResponse;
use crate::services::sync::SyncRequest;

/// `/sync` query parameters.
#[derive(Deserialize)]
pub struct SyncParams {
    since: Option<String>,
    timeout: Option<String>,
    full_state: Option<String>,
    use_state_after: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
}

fn own(session: &Session, user_id: &str) -> MatrixResult<()> {
    if session.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden("Cannot use filters of other users"));
    }
    Ok(())
}

/// The user's updates since `since`, waiting up to `timeout` ms for some.
pub async fn sync(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    QueryParams(params): QueryParams<SyncParams>,
) -> MatrixResult<Response> {
    let since = params
        .since
        .as_deref()
        .map(|s| services.sync.parse_since(s))
        .transpose()?;
    let (since, to_device_since) = (since.map(|s| s.0), since.map(|s| s.1));
    let timeout = match params.timeout.as_deref() {
        None => Duration::ZERO,
        Some(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|_| MatrixError::invalid_param("timeout must be a number of ms"))?,
        ),
    };
    let flag = |value: Option<&str>, name: &str| match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(MatrixError::invalid_param(format!(
            "{name} must be true or false"
        ))),
    };
    let full_state = flag(params.full_state.as_deref(), "full_state")?;
    let use_state_after = flag(params.use_state_after.as_deref(), "use_state_after")?;
    let set_presence = match params.set_presence.as_deref() {
        None => PresenceState::Online,
        Some(text) => PresenceState::parse(text).ok_or_else(|| {
            MatrixError::invalid_param("set_presence must be online, offline or unavailable")
        })?,
    };
    let filter =
        Filters::new(&services.db).resolve(session.user_id.as_str(), params.filter.as_deref())?;
    let request = SyncRequest {
        user_id: session.user_id.as_str().to_owned(),
        device_id: session.device_id.clone(),
        since,
        to_device_since,
        deliver_to_device: true,
        set_presence,
        timeout,
        full_state,
        use_state_after,
        filter,
    };
    let response = services.sync.sync(services.clone(), request).await?;
    Ok(json_stream(response))
}

/// The answer streamed as it is written (see [`SyncResponse::into_byte_stream`]).
fn json_stream(response: SyncResponse) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(response.into_byte_stream()),
    )
        .into_response()
}

/// Stores a filter; answers its id.
pub async fn create_filter(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(user_id): PathParams<String>,
    JsonBody(filter): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    if !filter.is_object() {
        return Err(MatrixError::bad_json("A filter must be a JSON object"));
    }
    let id = Filters::new(&services.db).create(&user_id, &filter).await?;
    Ok(Json(json!({ "filter_id": id })))
}

/// A stored filter.
pub async fn get_filter(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, filter_id)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    Ok(Json(Filters::new(&services.db).get(&user_id, &filter_id)?))
}

//! Spec: server-server API, "Retrieving events": `GET /_matrix/federation/v1/event/{eventId}`,
//! a transaction holding the one PDU, if the asking server may see it.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Signed;
use crate::error::MatrixResult;
use crate::http::extract::PathParams;
use crate::http::AppState;
use crate::services::now_ms;

/// One event, as a transaction.
pub async fn event(
    State(services): State<AppState>,
    PathParams(event_id): PathParams<String>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let pdu = services
        .rooms
        .event_for_server(signed.origin.as_str(), &event_id)?;
    Ok(Json(json!({
        "origin": services.config.server_name.as_str(),
        "origin_server_ts": now_ms(),
        "pdus": [pdu],
    })))
}

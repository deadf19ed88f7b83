//! Spec: server-server API, "Querying Keys Through Another Server": `GET
//! /_matrix/key/v2/query/{serverName}` and `POST /_matrix/key/v2/query`. We answer as a
//! notary: each server's key document as we fetched it (from the server itself), with
//! our signature added; our own document for ourselves. The document kept is fetched
//! again when it is valid for less than asked, or lacks a key id asked for (within the
//! key ring's refetch guard). Servers whose keys cannot be found are left out. Not signed
//! requests (anyone may ask a notary).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::core::ServerName;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{JsonBody, PathParams, QueryParams};
use crate::http::AppState;

/// Servers one `POST` may ask about.
const MAX_SERVERS: usize = 100;

/// `?minimum_valid_until_ts=`.
#[derive(Deserialize)]
pub struct MinimumParams {
    minimum_valid_until_ts: Option<u64>,
}

/// One server's keys.
pub async fn query_one(
    State(services): State<AppState>,
    PathParams(server): PathParams<String>,
    QueryParams(params): QueryParams<MinimumParams>,
) -> MatrixResult<Json<Value>> {
    let server = ServerName::parse(&server)
        .map_err(|e| MatrixError::invalid_param(format!("{server:?} is not a server name: {e}")))?;
    // Spec: "If not supplied, the notary server MUST use the current time."
    let minimum = params
        .minimum_valid_until_ts
        .unwrap_or_else(crate::services::now_ms);
    let documents: Vec<Value> = services
        .federation
        .keys
        .notarised(server.as_str(), (minimum, &[]))
        .await
        .into_iter()
        .collect();
    Ok(Json(json!({ "server_keys": documents })))
}

/// `POST /_matrix/key/v2/query` body: server -> key id -> criteria.
#[derive(Deserialize)]
pub struct QueryBody {
    server_keys: Map<String, Value>,
}

/// Several servers' keys.
pub async fn query_many(
    State(services): State<AppState>,
    JsonBody(body): JsonBody<QueryBody>,
) -> MatrixResult<Json<Value>> {
    if body.server_keys.len() > MAX_SERVERS {
        return Err(MatrixError::invalid_param(format!(
            "At most {MAX_SERVERS} servers per query"
        )));
    }
    let mut documents = Vec::new();
    for (server, wanted) in &body.server_keys {
        let server = ServerName::parse(server).map_err(|e| {
            MatrixError::invalid_param(format!("{server:?} is not a server name: {e}"))
        })?;
        // Spec: "If not supplied, the notary server MUST use the current time."
        let now = crate::services::now_ms();
        let minimum = wanted
            .as_object()
            .into_iter()
            .flat_map(|keys| keys.values())
            .map(|criteria| {
                criteria
                    .get("minimum_valid_until_ts")
                    .and_then(Value::as_u64)
                    .unwrap_or(now)
            })
            .max()
            .unwrap_or(now);
        // The key ids asked for (none: all the server has). The document answered holds
        // every key the server published, asked for or not, as the spec allows.
        let key_ids: Vec<String> = wanted
            .as_object()
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(document) = services
            .federation
            .keys
            .notarised(server.as_str(), (minimum, &key_ids))
            .await
        {
            documents.push(document);
        }
    }
    Ok(Json(json!({ "server_keys": documents })))
}

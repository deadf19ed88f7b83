//! Spec: client-server API, "User directory": `POST /user_directory/search`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody};
use crate::http::AppState;
use crate::services::user_directory::{self, DEFAULT_LIMIT, MAX_LIMIT};

/// The request body.
#[derive(Deserialize)]
pub struct DirectorySearchBody {
    search_term: String,
    limit: Option<usize>,
}

/// Users the searcher shares a room with, and users in public rooms, by name.
pub async fn search(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<DirectorySearchBody>,
) -> MatrixResult<Json<Value>> {
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let searcher = session.user_id.as_str().to_owned();
    let found = tokio::task::spawn_blocking(move || {
        user_directory::search_users(&services, &searcher, &body.search_term, limit)
    })
    .await
    .map_err(|e| MatrixError::internal(format!("directory task failed: {e}")))??;
    Ok(Json(
        json!({ "results": found.results, "limited": found.limited }),
    ))
}

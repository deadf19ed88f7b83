//! `GET /health`: for operators and load balancers (not a Matrix endpoint). 200 with a
//! JSON report when storage takes writes and every configured listener is up, else 503
//! with the same report saying what is wrong.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::services::health;

/// The health report.
pub async fn health(State(services): State<AppState>) -> Response {
    let report = health::report(&services.db, &services.listeners);
    let status = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

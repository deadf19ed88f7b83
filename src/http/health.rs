//! `GET /health`: for operators and load balancers (not a Matrix endpoint). 200 with a
//! JSON report when storage takes writes and every configured listener is up, else 503
//! with the same report saying what is wrong.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::services::health;

/// The health report (made on a blocking thread: it probes storage with a write).
pub async fn health(State(services): State<AppState>) -> Response {
    let probe = services.clone();
    let Ok(report) =
        tokio::task::spawn_blocking(move || health::report(&probe.db, &probe.listeners)).await
    else {
        return crate::error::MatrixError::internal("the health report task failed")
            .into_response();
    };
    let status = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

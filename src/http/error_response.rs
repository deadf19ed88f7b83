//! Renders [`MatrixError`] as an HTTP response.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::MatrixError;

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self
            .extra
            .get("retry_after_ms")
            .and_then(|v| v.as_u64())
            .map(|ms| ms.div_ceil(1000).max(1));
        let mut response = (status, Json(self.to_json())).into_response();
        if let Some(seconds) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
        }
        response
    }
}

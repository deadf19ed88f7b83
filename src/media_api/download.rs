//! Spec: `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]` and the
//! deprecated `GET /_matrix/media/v3/download/...`.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{AuthedAllowGuest, PathParams, QueryParams};
use crate::http::AppState;
use crate::media_api::serving::respond;

/// Query of the download endpoints.
#[derive(Deserialize)]
pub struct DownloadQuery {
    /// Spec default 20 s; capped by the service.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// We never redirect, which the spec allows.
    #[serde(default)]
    #[allow(dead_code)]
    pub allow_redirect: bool,
    /// Whether media of other servers may be fetched (default true).
    pub allow_remote: Option<bool>,
}

/// The spec's default `timeout_ms`.
pub fn default_timeout_ms() -> u64 {
    20_000
}

async fn serve(
    services: AppState,
    server_name: &str,
    media_id: &str,
    file_name: Option<String>,
    query: &DownloadQuery,
) -> MatrixResult<Response> {
    super::remote::ensure_here(
        &services,
        server_name,
        media_id,
        query.allow_remote.unwrap_or(true),
    )
    .await?;
    let served = services
        .media
        .download(
            server_name,
            media_id,
            Duration::from_millis(query.timeout_ms),
        )
        .await?;
    respond(&services, served, file_name, false).await
}

/// The content, with the uploader's file name.
pub async fn download(
    State(services): State<AppState>,
    _auth: AuthedAllowGuest,
    PathParams((server_name, media_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<DownloadQuery>,
) -> MatrixResult<Response> {
    serve(services, &server_name, &media_id, None, &query).await
}

/// The content, with the file name from the path.
pub async fn download_named(
    State(services): State<AppState>,
    _auth: AuthedAllowGuest,
    PathParams((server_name, media_id, file_name)): PathParams<(String, String, String)>,
    QueryParams(query): QueryParams<DownloadQuery>,
) -> MatrixResult<Response> {
    serve(services, &server_name, &media_id, Some(file_name), &query).await
}

/// The unauthenticated endpoints are frozen unless configured.
pub fn check_legacy_allowed(services: &AppState) -> MatrixResult<()> {
    if services.config.media.legacy_unauthenticated {
        Ok(())
    } else {
        Err(MatrixError::not_found(
            "Unauthenticated media is disabled; use /_matrix/client/v1/media",
        ))
    }
}

/// Deprecated, unauthenticated download.
pub async fn legacy_download(
    State(services): State<AppState>,
    PathParams((server_name, media_id)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<DownloadQuery>,
) -> MatrixResult<Response> {
    check_legacy_allowed(&services)?;
    serve(services, &server_name, &media_id, None, &query).await
}

/// Deprecated, unauthenticated download with a file name.
pub async fn legacy_download_named(
    State(services): State<AppState>,
    PathParams((server_name, media_id, file_name)): PathParams<(String, String, String)>,
    QueryParams(query): QueryParams<DownloadQuery>,
) -> MatrixResult<Response> {
    check_legacy_allowed(&services)?;
    serve(services, &server_name, &media_id, Some(file_name), &query).await
}

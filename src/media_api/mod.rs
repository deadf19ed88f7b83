//! `/_matrix/media/*` and `/_matrix/client/v1/media/*`, one file per spec area.
//!
//! Spec: client-server API, "Content repository". `preview_url` is not offered (404
//! `M_UNRECOGNIZED`). The deprecated unauthenticated download and thumbnail endpoints are
//! frozen by default (404 `M_NOT_FOUND`); `media.legacy_unauthenticated` serves them.

pub mod config;
pub mod download;
pub mod remote;
pub mod serving;
pub mod thumbnail;
pub mod upload;

use axum::routing::{get, post, put};
use axum::Router;

use crate::http::AppState;

/// Routes that take an upload body (the media body limit applies).
pub fn upload_routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/media/v3/upload", post(upload::upload))
        .route(
            "/_matrix/media/v3/upload/{server_name}/{media_id}",
            put(upload::upload_pending),
        )
}

/// Every other media route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/media/v1/create", post(upload::create))
        .route("/_matrix/client/v1/media/config", get(config::get_config))
        .route("/_matrix/media/v3/config", get(config::get_config))
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(download::download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(download::download_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(thumbnail::thumbnail),
        )
        .route(
            "/_matrix/media/v3/download/{server_name}/{media_id}",
            get(download::legacy_download),
        )
        .route(
            "/_matrix/media/v3/download/{server_name}/{media_id}/{file_name}",
            get(download::legacy_download_named),
        )
        .route(
            "/_matrix/media/v3/thumbnail/{server_name}/{media_id}",
            get(thumbnail::legacy_thumbnail),
        )
}

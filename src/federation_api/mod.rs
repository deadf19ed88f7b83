//! `/_matrix/federation/*` and `/_matrix/key/*` (incoming), one file per spec area.

pub mod openid;
pub mod server_keys;
pub mod version;

use axum::routing::get;
use axum::Router;

use crate::http::AppState;

/// Every server-server route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys::get_server_key))
        .route("/_matrix/federation/v1/version", get(version::get_version))
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(openid::userinfo),
        )
        .route(
            "/.well-known/matrix/server",
            get(crate::client_api::well_known::server),
        )
}

//! `/_matrix/client/*` and `/.well-known/matrix/client`: one file per spec area.

pub mod account;
pub mod capabilities;
pub mod devices;
pub mod login;
pub mod registration;
pub mod versions;
pub mod well_known;

use axum::routing::{get, post};
use axum::Router;

use crate::http::AppState;

/// Every client-server route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/client/versions", get(versions::get_versions))
        .route("/.well-known/matrix/client", get(well_known::client))
        .route("/.well-known/matrix/server", get(well_known::server))
        .route(
            "/_matrix/client/v3/capabilities",
            get(capabilities::get_capabilities),
        )
        .route("/_matrix/client/v3/register", post(registration::register))
        .route(
            "/_matrix/client/v3/register/available",
            get(registration::available),
        )
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(registration::token_validity),
        )
        .route(
            "/_matrix/client/v3/login",
            get(login::login_flows).post(login::login),
        )
        .route("/_matrix/client/v3/logout", post(login::logout))
        .route("/_matrix/client/v3/logout/all", post(login::logout_all))
        .route("/_matrix/client/v3/account/whoami", get(account::whoami))
        .route(
            "/_matrix/client/v3/account/password",
            post(account::change_password),
        )
        .route(
            "/_matrix/client/v3/account/deactivate",
            post(account::deactivate),
        )
        .route("/_matrix/client/v3/devices", get(devices::list))
        .route(
            "/_matrix/client/v3/devices/{device_id}",
            get(devices::get_one)
                .put(devices::rename)
                .delete(devices::delete_one),
        )
        .route(
            "/_matrix/client/v3/delete_devices",
            post(devices::delete_many),
        )
}

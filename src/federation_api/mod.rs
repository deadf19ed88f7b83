//! `/_matrix/federation/*` and `/_matrix/key/*` (incoming), one file per spec area.

pub mod auth;
pub mod events;
pub mod invites;
pub mod key_query;
pub mod media;
pub mod membership;
pub mod openid;
pub mod public_rooms;
pub mod query;
pub mod server_keys;
pub mod transactions;
pub mod user_keys;
pub mod version;

use axum::routing::{get, post, put};
use axum::Router;

use crate::http::AppState;

/// Every server-server route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys::get_server_key))
        .route("/_matrix/key/v2/query", post(key_query::query_many))
        .route(
            "/_matrix/key/v2/query/{server_name}",
            get(key_query::query_one),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(transactions::send),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(media::thumbnail),
        )
        .route("/_matrix/federation/v1/query/profile", get(query::profile))
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query::directory),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(user_keys::query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            post(user_keys::claim),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(user_keys::devices),
        )
        .route("/_matrix/federation/v1/version", get(version::get_version))
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(events::event),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(events::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(events::get_missing_events),
        )
        .route("/_matrix/federation/v1/state/{room_id}", get(events::state))
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(events::state_ids),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(events::event_auth),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            put(membership::send_join_v1),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(membership::send_join_v2),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            put(membership::send_leave_v1),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(membership::send_leave_v2),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(membership::make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            put(membership::send_knock),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(invites::invite_v2),
        )
        .route(
            "/_matrix/federation/v1/timestamp_to_event/{room_id}",
            get(events::timestamp_to_event),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(public_rooms::get_public_rooms).post(public_rooms::post_public_rooms),
        )
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(openid::userinfo),
        )
        .route(
            "/.well-known/matrix/server",
            get(crate::client_api::well_known::server),
        )
}

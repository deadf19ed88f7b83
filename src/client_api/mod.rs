//! `/_matrix/client/*` and `/.well-known/matrix/client`: one file per spec area.

pub mod account;
pub mod account_data;
pub mod admin;
pub mod capabilities;
pub mod create_room;
pub mod devices;
pub mod directory;
pub mod events;
pub mod key_backup;
pub mod keys;
pub mod login;
pub mod membership;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod push_rules;
pub mod pushers;
pub mod read_markers;
pub mod receipts;
pub mod registration;
pub mod relations;
pub mod room_events;
pub mod room_initial_sync;
pub mod room_members;
pub mod room_send;
pub mod room_state;
pub mod room_upgrades;
pub mod search;
pub mod sync;
pub mod tags;
pub mod to_device;
pub mod typing;
pub mod user_directory;
pub mod versions;
pub mod well_known;

use axum::routing::{get, post, put};
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
            "/_matrix/client/v3/admin/whois/{user_id}",
            get(admin::whois),
        )
        .route(
            "/_matrix/client/v3/user/{user_id}/openid/request_token",
            post(openid::request_token),
        )
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
        .route(
            "/_matrix/client/v3/profile/{user_id}",
            get(profile::get_profile),
        )
        .route(
            "/_matrix/client/v3/profile/{user_id}/{key_name}",
            get(profile::get_field)
                .put(profile::put_field)
                .delete(profile::delete_field),
        )
        .merge(room_routes())
        .merge(live_routes())
        .merge(encryption_routes())
}

/// What keeps a client live: sync, filters, account data, tags, typing, receipts, push
/// rules, to-device messages, search, the user directory, presence.
fn live_routes() -> Router<AppState> {
    let user = |path: &str| format!("/_matrix/client/v3/user/{{user_id}}{path}");
    Router::new()
        .route("/_matrix/client/v3/sync", get(sync::sync))
        .route(&user("/filter"), post(sync::create_filter))
        .route(&user("/filter/{filter_id}"), get(sync::get_filter))
        .route(
            &user("/account_data/{event_type}"),
            get(account_data::get_global).put(account_data::put_global),
        )
        .route(
            &user("/rooms/{room_id}/account_data/{event_type}"),
            get(account_data::get_room).put(account_data::put_room),
        )
        .route(&user("/rooms/{room_id}/tags"), get(tags::get_tags))
        .route(
            &user("/rooms/{room_id}/tags/{tag}"),
            put(tags::put_tag).delete(tags::delete_tag),
        )
        .route(
            &format!("{ROOM}/typing/{{user_id}}"),
            put(typing::put_typing),
        )
        .route(
            &format!("{ROOM}/receipt/{{receipt_type}}/{{event_id}}"),
            post(receipts::post_receipt),
        )
        .route(
            &format!("{ROOM}/read_markers"),
            post(read_markers::post_read_markers),
        )
        .route("/_matrix/client/v3/pushrules/", get(push_rules::get_all))
        .route(
            "/_matrix/client/v3/pushrules/global/",
            get(push_rules::get_global),
        )
        .route(
            "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}",
            get(push_rules::get_rule)
                .put(push_rules::put_rule)
                .delete(push_rules::delete_rule),
        )
        .route(
            "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/enabled",
            get(push_rules::get_enabled).put(push_rules::put_enabled),
        )
        .route(
            "/_matrix/client/v3/pushrules/global/{kind}/{rule_id}/actions",
            get(push_rules::get_actions).put(push_rules::put_actions),
        )
        .route(
            "/_matrix/client/v3/notifications",
            get(push_rules::notifications),
        )
        .route("/_matrix/client/v3/pushers", get(pushers::get_pushers))
        .route("/_matrix/client/v3/pushers/set", post(pushers::set_pusher))
        .route(
            "/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}",
            put(to_device::send_to_device),
        )
        .route("/_matrix/client/v3/search", post(search::search))
        .route(
            "/_matrix/client/v3/presence/{user_id}/status",
            get(presence::get_status).put(presence::put_status),
        )
        .route(
            "/_matrix/client/v3/user_directory/search",
            post(user_directory::search),
        )
}

/// End-to-end encryption: device and cross-signing keys, key backup.
fn encryption_routes() -> Router<AppState> {
    const KEYS: &str = "/_matrix/client/v3/room_keys/keys";
    const VERSION: &str = "/_matrix/client/v3/room_keys/version";
    Router::new()
        .route("/_matrix/client/v3/keys/upload", post(keys::upload))
        .route("/_matrix/client/v3/keys/query", post(keys::query))
        .route("/_matrix/client/v3/keys/claim", post(keys::claim))
        .route("/_matrix/client/v3/keys/changes", get(keys::changes))
        .route(
            "/_matrix/client/v3/keys/device_signing/upload",
            post(keys::upload_device_signing),
        )
        .route(
            "/_matrix/client/v3/keys/signatures/upload",
            post(keys::upload_signatures),
        )
        .route(
            VERSION,
            post(key_backup::create_version).get(key_backup::current_version),
        )
        .route(
            &format!("{VERSION}/{{version}}"),
            get(key_backup::get_version)
                .put(key_backup::update_version)
                .delete(key_backup::delete_version),
        )
        .route(
            KEYS,
            get(key_backup::get_all)
                .put(key_backup::put_all)
                .delete(key_backup::delete_all),
        )
        .route(
            &format!("{KEYS}/{{room_id}}"),
            get(key_backup::get_room)
                .put(key_backup::put_room)
                .delete(key_backup::delete_room),
        )
        .route(
            &format!("{KEYS}/{{room_id}}/{{session_id}}"),
            get(key_backup::get_session)
                .put(key_backup::put_session)
                .delete(key_backup::delete_session),
        )
}

const ROOM: &str = "/_matrix/client/v3/rooms/{room_id}";

/// Rooms: creation, membership, state, sending, history, relations, aliases, directory.
fn room_routes() -> Router<AppState> {
    let room = |path: &str| format!("{ROOM}{path}");
    Router::new()
        .route(
            "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
            get(room_events::timestamp_to_event),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}",
            get(relations::all),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
            get(relations::by_rel_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations::by_rel_and_event_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/threads",
            get(relations::threads),
        )
        .route(
            "/_matrix/client/v3/createRoom",
            post(create_room::create_room),
        )
        .route(
            "/_matrix/client/v3/joined_rooms",
            get(room_members::joined_rooms),
        )
        .route("/_matrix/client/v3/join/{room}", post(membership::join))
        .route("/_matrix/client/v3/knock/{room}", post(membership::knock))
        .route(&room("/join"), post(membership::join))
        .route(&room("/leave"), post(membership::leave))
        .route(&room("/forget"), post(membership::forget))
        .route(&room("/invite"), post(membership::invite))
        .route(&room("/kick"), post(membership::kick))
        .route(&room("/ban"), post(membership::ban))
        .route(&room("/unban"), post(membership::unban))
        .route(&room("/members"), get(room_members::members))
        .route(&room("/joined_members"), get(room_members::joined_members))
        .route(&room("/state"), get(room_state::get_state))
        .route(
            &room("/state/{event_type}"),
            get(room_state::get_state_event_empty_key).put(room_state::put_state_event_empty_key),
        )
        .route(
            &room("/state/{event_type}/"),
            get(room_state::get_state_event_empty_key).put(room_state::put_state_event_empty_key),
        )
        .route(
            &room("/state/{event_type}/{state_key}"),
            get(room_state::get_state_event).put(room_state::put_state_event),
        )
        .route(&room("/send/{event_type}/{txn_id}"), put(room_send::send))
        .route(&room("/redact/{event_id}/{txn_id}"), put(room_send::redact))
        .route(&room("/event/{event_id}"), get(room_events::get_event))
        .route(
            &room("/initialSync"),
            get(room_initial_sync::room_initial_sync),
        )
        .route(
            "/_matrix/client/v3/initialSync",
            get(room_initial_sync::initial_sync),
        )
        .route(
            "/_matrix/client/v3/events/{event_id}",
            get(room_events::get_event_anywhere),
        )
        .route("/_matrix/client/v3/events", get(events::events))
        .route(&room("/messages"), get(room_events::messages))
        .route(&room("/context/{event_id}"), get(room_events::context))
        .route(&room("/relations/{event_id}"), get(relations::all))
        .route(
            &room("/relations/{event_id}/{rel_type}"),
            get(relations::by_rel_type),
        )
        .route(
            &room("/relations/{event_id}/{rel_type}/{event_type}"),
            get(relations::by_rel_and_event_type),
        )
        .route(&room("/threads"), get(relations::threads))
        .route(
            &room("/timestamp_to_event"),
            get(room_events::timestamp_to_event),
        )
        .route(&room("/upgrade"), post(room_upgrades::upgrade))
        .route(&room("/aliases"), get(directory::room_aliases))
        .route(
            "/_matrix/client/v3/directory/room/{alias}",
            get(directory::get_alias)
                .put(directory::put_alias)
                .delete(directory::delete_alias),
        )
        .route(
            "/_matrix/client/v3/directory/list/room/{room_id}",
            get(directory::get_visibility).put(directory::put_visibility),
        )
        .route(
            "/_matrix/client/v3/publicRooms",
            get(directory::get_public_rooms).post(directory::post_public_rooms),
        )
}

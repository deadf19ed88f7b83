//! Spec: client-server API, "Room membership": `POST /join/{roomIdOrAlias}`, `POST
//! /rooms/{roomId}/join`, `/invite`, `/leave`, `/forget`, `/kick`, `/ban`, `/unban`,
//! `POST /knock/{roomIdOrAlias}`.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::{url, RoomAliasId, RoomId, UserId};
use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody, MaybeJsonBody, PathParams};
use crate::http::AppState;
use crate::services::accounts::Session;
use crate::services::rate_limit::{invite_bucket, RateAction};
use crate::services::rooms::membership::member_content;

/// Body of join, leave and knock.
#[derive(Deserialize, Default)]
pub struct ReasonBody {
    reason: Option<String>,
}

/// Body of invite, kick, ban and unban.
#[derive(Deserialize)]
pub struct TargetBody {
    user_id: String,
    reason: Option<String>,
    #[serde(default)]
    is_direct: bool,
}

fn target(body: &TargetBody) -> MatrixResult<UserId> {
    UserId::parse(&body.user_id)
        .map_err(|e| MatrixError::invalid_param(format!("user_id is not a user id: {e}")))
}

/// The room a path names (by id, or by alias, asking the alias's server for another's),
/// and the servers that may be in it: those the client names (`via`, or the older
/// `server_name`) and those the alias's directory answer names.
async fn room_and_servers(
    services: &AppState,
    room: &str,
    query: Option<String>,
) -> MatrixResult<(String, Vec<String>)> {
    let query = query.unwrap_or_default();
    let mut servers = url::query_values(&query, "via");
    servers.extend(url::query_values(&query, "server_name"));
    let room_id = match RoomAliasId::parse(room) {
        Ok(alias) if alias.server_name() != services.config.server_name.as_str() => {
            let (room_id, known) = services
                .federation
                .room_alias(&alias)
                .await
                .map_err(|e| e.for_client("Room alias"))?;
            servers.extend(known);
            room_id
        }
        _ => services.rooms.resolve_room_or_alias(room)?,
    };
    Ok((room_id, servers))
}

/// Whether the session may join a room through another server: not a guest, and within
/// its rate (`rate_limits.remote_join_*`).
fn may_join_through_others(services: &AppState, session: &Session) -> MatrixResult<()> {
    if session.is_guest {
        return Err(MatrixError::forbidden(
            "Guests cannot join rooms through other servers",
        ));
    }
    services
        .rate_limiter
        .check(RateAction::RemoteJoin, session.user_id.as_str())?;
    Ok(())
}

/// `POST /join/{roomIdOrAlias}` and `POST /rooms/{roomId}/join`. A room none of our users
/// is in is joined through another server: those the client names (`via`, or the older
/// `server_name`), those the alias's directory answer names, and the room id's own.
pub async fn join(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room): PathParams<String>,
    RawQuery(query): RawQuery,
    MaybeJsonBody(body): MaybeJsonBody<ReasonBody>,
) -> MatrixResult<Json<Value>> {
    let (room_id, mut servers) = room_and_servers(&services, &room, query).await?;
    let profile = services.accounts.member_profile(&session.user_id)?;
    let reason = body.and_then(|b| b.reason);
    let joined = services
        .rooms
        .membership_of(session.user_id.as_str(), &room_id)?
        .as_deref()
        == Some("join");
    if !joined && !services.rooms.has_local_member(&room_id)? {
        // The inviter's server first: it is surely in the room.
        let mut pending = services
            .rooms
            .servers_for_pending(&session.user_id, &room_id)?;
        pending.append(&mut servers);
        servers = pending;
        if let Some(server) = RoomId::parse(&room_id)
            .ok()
            .and_then(|r| r.server_name().map(str::to_owned))
        {
            servers.push(server);
        }
        may_join_through_others(&services, &session)?;
        let content = member_content("join", Some(&profile), reason);
        let partial = services
            .federation
            .join_room(
                &services.rooms,
                &session.user_id,
                &room_id,
                &servers,
                content,
            )
            .await?;
        if partial {
            services.partial_resyncs.request(&room_id);
        }
        // Kept device lists of the room's members may have missed updates while no
        // room was shared with them.
        services.forget_member_device_lists(&room_id).await;
        services
            .accounts
            .tell_new_room_mates(session.user_id.as_str(), &room_id)
            .await;
        services
            .carry_settings_from_predecessor(session.user_id.as_str(), &room_id)
            .await;
        services
            .transfer_directory_from_predecessor(session.user_id.as_str(), &room_id)
            .await;
        return Ok(Json(json!({ "room_id": room_id })));
    }
    let local = services
        .rooms
        .join(
            &session.user_id,
            &room_id,
            reason.clone(),
            &profile,
            session.is_guest,
        )
        .await;
    match local {
        // A restricted room whose join none of our members may authorise: a member of
        // another server of the room may.
        Err(e) if e.errcode == Some(ErrorCode::UnableToGrantJoin) => {
            may_join_through_others(&services, &session)?;
            services
                .federation
                .join_authorised_elsewhere(
                    &services.rooms,
                    &session.user_id,
                    &room_id,
                    member_content("join", Some(&profile), reason),
                )
                .await?;
        }
        other => other?,
    }
    // (A join of a user joined already changes nothing.)
    if !joined {
        services
            .accounts
            .tell_new_room_mates(session.user_id.as_str(), &room_id)
            .await;
        services
            .carry_settings_from_predecessor(session.user_id.as_str(), &room_id)
            .await;
    }
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /knock/{roomIdOrAlias}`: a room none of our users is in is knocked on through
/// another server, found as for a join.
pub async fn knock(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room): PathParams<String>,
    RawQuery(query): RawQuery,
    MaybeJsonBody(body): MaybeJsonBody<ReasonBody>,
) -> MatrixResult<Json<Value>> {
    let (room_id, mut servers) = room_and_servers(&services, &room, query).await?;
    let profile = services.accounts.member_profile(&session.user_id)?;
    let reason = body.and_then(|b| b.reason);
    if !services.rooms.has_local_member(&room_id)? {
        if let Some(server) = RoomId::parse(&room_id)
            .ok()
            .and_then(|r| r.server_name().map(str::to_owned))
        {
            servers.push(server);
        }
        services
            .rate_limiter
            .check(RateAction::RemoteJoin, session.user_id.as_str())?;
        let content = member_content("knock", Some(&profile), reason);
        services
            .federation
            .knock_remote(
                &services.rooms,
                &session.user_id,
                &room_id,
                &servers,
                content,
            )
            .await?;
        return Ok(Json(json!({ "room_id": room_id })));
    }
    services
        .rooms
        .knock(&session.user_id, &room_id, reason, &profile)
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /rooms/{roomId}/leave`.
pub async fn leave(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room_id): PathParams<String>,
    MaybeJsonBody(body): MaybeJsonBody<ReasonBody>,
) -> MatrixResult<Json<Value>> {
    let reason = body.and_then(|b| b.reason);
    if services
        .rooms
        .pending_out_of_room(&session.user_id, &room_id)?
    {
        services
            .federation
            .leave_remote(&services.rooms, &session.user_id, &room_id, reason)
            .await?;
        return Ok(Json(json!({})));
    }
    services
        .rooms
        .leave(&session.user_id, &room_id, reason)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/forget`.
pub async fn forget(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    services.rooms.forget(&session.user_id, &room_id).await?;
    Ok(Json(json!({})))
}

/// Body of invite: a user id, or the third-party fields of "Third-party invites".
#[derive(Deserialize)]
pub struct InviteBody {
    user_id: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    is_direct: bool,
    id_server: Option<Value>,
    medium: Option<Value>,
    address: Option<Value>,
}

/// `POST /rooms/{roomId}/invite`. Spec: "Third-party invites" (`id_server`, `medium`,
/// `address`) need an identity server, which this server does not use: those are 400
/// `M_UNRECOGNIZED` saying so, not a complaint about a missing `user_id`.
pub async fn invite(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<InviteBody>,
) -> MatrixResult<Json<Value>> {
    let third_party = body.id_server.is_some() || body.medium.is_some() || body.address.is_some();
    let user_id =
        match (body.user_id, third_party) {
            (Some(user_id), _) => user_id,
            (None, true) => return Err(MatrixError::new(
                400,
                ErrorCode::Unrecognized,
                "Third-party invites (by email or phone number) are not supported by this server",
            )),
            (None, false) => return Err(MatrixError::missing_param("Missing `user_id`")),
        };
    let body = TargetBody {
        user_id,
        reason: body.reason,
        is_direct: body.is_direct,
    };
    let target = target(&body)?;
    // Invites are rate-limited per inviter, and per invitee of ours (whoever invites).
    let limiter = &services.rate_limiter;
    limiter.check(RateAction::InviteSent, session.user_id.as_str())?;
    if target.server_name() != services.config.server_name.as_str() {
        let built = services
            .rooms
            .build_invite(
                &session.user_id,
                &room_id,
                &target,
                body.reason,
                body.is_direct,
            )
            .await?;
        services
            .federation
            .invite_remote(&services.rooms, &room_id, built, &target)
            .await?;
        return Ok(Json(json!({})));
    }
    if !services.accounts.is_active_user(&target)? {
        return Err(MatrixError::not_found(format!("Unknown user {target}")));
    }
    let bucket = invite_bucket(target.as_str(), services.config.server_name.as_str());
    limiter.check(RateAction::InviteReceived, &bucket)?;
    let profile = services.accounts.member_profile(&target)?;
    services
        .rooms
        .invite(
            &session.user_id,
            &room_id,
            &target,
            body.reason,
            body.is_direct,
            Some(&profile),
        )
        .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/kick`.
pub async fn kick(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> MatrixResult<Json<Value>> {
    let target = target(&body)?;
    services
        .rooms
        .kick(&session.user_id, &room_id, &target, body.reason)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/ban`.
pub async fn ban(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> MatrixResult<Json<Value>> {
    let target = target(&body)?;
    services
        .rooms
        .ban(&session.user_id, &room_id, &target, body.reason)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/unban`.
pub async fn unban(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> MatrixResult<Json<Value>> {
    let target = target(&body)?;
    services
        .rooms
        .unban(&session.user_id, &room_id, &target, body.reason)
        .await?;
    Ok(Json(json!({})))
}

//! Spec: client-server API, "Push Rules: API": `GET /pushrules/`, `GET /pushrules/global/`,
//! `GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}`, `GET/PUT
//! /pushrules/global/{kind}/{ruleId}/enabled` and `.../actions`; "Listing Notifications":
//! `GET /notifications`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::push_rules::{PushRule, RuleBody, RuleKind};
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::accounts::Session;
use crate::services::rooms::client_event::Viewer;

fn kind(text: &str) -> MatrixResult<RuleKind> {
    RuleKind::parse(text)
        .ok_or_else(|| MatrixError::invalid_param(format!("Unknown push rule kind {text:?}")))
}

/// One of the user's rules, or 404 `M_NOT_FOUND`.
fn find_rule(
    services: &AppState,
    session: &Session,
    rule_kind: &str,
    rule_id: &str,
) -> MatrixResult<PushRule> {
    let ruleset = services.push.ruleset(session.user_id.as_str())?;
    ruleset
        .get(kind(rule_kind)?, rule_id)
        .cloned()
        .ok_or_else(|| MatrixError::not_found("Push rule not found"))
}

/// Every ruleset (only `global` exists).
pub async fn get_all(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    let ruleset = services.push.ruleset(session.user_id.as_str())?;
    Ok(Json(json!({ "global": *ruleset })))
}

/// The global ruleset.
pub async fn get_global(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    let ruleset = services.push.ruleset(session.user_id.as_str())?;
    Ok(Json(json!(*ruleset)))
}

/// One rule.
pub async fn get_rule(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let rule = find_rule(&services, &session, &rule_kind, &rule_id)?;
    Ok(Json(json!(rule)))
}

/// `before` / `after` of a new rule.
#[derive(Deserialize)]
pub struct Placement {
    before: Option<String>,
    after: Option<String>,
}

/// Adds or replaces a user rule.
pub async fn put_rule(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
    QueryParams(placement): QueryParams<Placement>,
    JsonBody(body): JsonBody<RuleBody>,
) -> MatrixResult<Json<Value>> {
    let kind = kind(&rule_kind)?;
    services
        .push
        .update_rules(session.user_id.as_str(), |rules| {
            rules.put_rule(
                kind,
                &rule_id,
                body,
                placement.before.as_deref(),
                placement.after.as_deref(),
            )
        })
        .await?;
    Ok(Json(json!({})))
}

/// Deletes a user rule.
pub async fn delete_rule(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let kind = kind(&rule_kind)?;
    services
        .push
        .update_rules(session.user_id.as_str(), |rules| {
            rules.delete_rule(kind, &rule_id)
        })
        .await?;
    Ok(Json(json!({})))
}

/// Whether a rule is enabled.
pub async fn get_enabled(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let rule = find_rule(&services, &session, &rule_kind, &rule_id)?;
    Ok(Json(json!({ "enabled": rule.enabled })))
}

/// `{"enabled": bool}`.
#[derive(Deserialize)]
pub struct EnabledBody {
    enabled: bool,
}

/// Enables or disables a rule.
pub async fn put_enabled(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<EnabledBody>,
) -> MatrixResult<Json<Value>> {
    let kind = kind(&rule_kind)?;
    services
        .push
        .update_rules(session.user_id.as_str(), |rules| {
            rules.set_enabled(kind, &rule_id, body.enabled)
        })
        .await?;
    Ok(Json(json!({})))
}

/// A rule's actions.
pub async fn get_actions(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let rule = find_rule(&services, &session, &rule_kind, &rule_id)?;
    Ok(Json(json!({ "actions": rule.actions })))
}

/// `{"actions": [...]}`.
#[derive(Deserialize)]
pub struct ActionsBody {
    actions: Vec<Value>,
}

/// Sets a rule's actions.
pub async fn put_actions(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((rule_kind, rule_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<ActionsBody>,
) -> MatrixResult<Json<Value>> {
    let kind = kind(&rule_kind)?;
    services
        .push
        .update_rules(session.user_id.as_str(), |rules| {
            rules.set_actions(kind, &rule_id, body.actions)
        })
        .await?;
    Ok(Json(json!({})))
}

/// `/notifications` query.
#[derive(Deserialize)]
pub struct NotificationsParams {
    from: Option<String>,
    limit: Option<String>,
    only: Option<String>,
}

/// The user's notifications, newest first.
pub async fn notifications(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<NotificationsParams>,
) -> MatrixResult<Json<Value>> {
    let before = params
        .from
        .as_deref()
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| MatrixError::invalid_param("Invalid from token"))
        })
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| MatrixError::invalid_param("limit must be a positive integer"))?
            .min(100),
    };
    let only_highlight = match params.only.as_deref() {
        None => false,
        Some("highlight") => true,
        Some(_) => return Err(MatrixError::invalid_param("only must be highlight")),
    };
    let user_id = session.user_id.as_str();
    let viewer = Viewer {
        user_id,
        device_id: &session.device_id,
    };
    let (found, next) = services
        .push
        .notifications(user_id, before, limit, only_highlight)?;
    let mut out = Vec::with_capacity(found.len());
    let store = services.rooms.store();
    let ignored = services.accounts.ignored_users(user_id)?;
    for notification in found {
        let room_id = store.room_by_short(notification.room)?.record.room_id;
        let event_id = store.state().event_id_of(notification.event)?;
        // An event the user can no longer read (they left, it was forgotten) is skipped;
        // a pending invite is the invitee's to see; an invite from a user they ignore,
        // in any room, is not (spec: "Servers must not send room invites from ignored
        // users to clients").
        let mut event = match services.rooms.event_for(viewer, &room_id, &event_id) {
            Ok(event) => event,
            Err(_) if notification.invite => {
                match services
                    .rooms
                    .pending_invite_for(viewer, &room_id, &event_id)?
                {
                    Some(event) => event,
                    None => continue,
                }
            }
            Err(_) => continue,
        };
        let sender = event.get("sender").and_then(Value::as_str).unwrap_or("");
        if notification.invite && ignored.iter().any(|u| u == sender) {
            continue;
        }
        if let Some(event) = event.as_object_mut() {
            event.remove("room_id");
        }
        let read = services
            .ephemeral
            .read_positions(notification.room, user_id)?;
        out.push(json!({
            "actions": notification.actions,
            "event": event,
            "read": read.has_read(notification.pos, notification.thread.as_deref()),
            "room_id": room_id,
            "ts": notification.ts,
        }));
    }
    let mut body = json!({ "notifications": out });
    if let Some(next) = next {
        body["next_token"] = json!(next.to_string());
    }
    Ok(Json(body))
}

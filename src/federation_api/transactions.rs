//! Spec: server-server API, "Transactions": `PUT /_matrix/federation/v1/send/{txnId}`.
//!
//! A signed transaction of at most 50 PDUs and 100 EDUs. A transaction id seen before
//! from the same origin is answered as it was the first time and not processed again.
//! Each PDU goes through the rooms service's receive entry point (the receipt checks),
//! and the answer says, per event id, `{}` or `{"error": why}` (a rejected or dropped
//! event never fails the others). EDUs go to the service that owns them, and only for
//! the origin's own users:
//! - `m.direct_to_device`: the messages for our users' devices, once per message id;
//! - `m.typing`: when the user is joined to the room;
//! - `m.receipt`: `m.read` receipts of users joined to the room;
//! - `m.device_list_update`, `m.signing_key_update`: the user's device list, when we keep
//!   it, follows (`services/federation/device_lists.rs`), and our users sharing a room
//!   with the user are told their keys changed (`device_lists.changed` in `/sync`).
//!
//! - `m.presence`: the origin's users' presence, for users we share a room with.
//!
//! Other EDU types are ignored. PDUs and room EDUs (typing, receipts) of a room
//! whose server ACL denies the origin are ignored (spec: "Server Access Control Lists");
//! the endpoints that name a room answer 403 `M_FORBIDDEN` to such a server.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Signed;
use crate::core::UserId;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::PathParams;
use crate::http::AppState;
use crate::services::ephemeral::receipts::ReceiptType;
use crate::services::federation::received_txns::transaction_key;
use crate::services::federation::source::FromOrigin;
use crate::services::rooms::receive::PduOutcome;

/// PDUs per transaction at most (spec).
const MAX_PDUS: usize = 50;
/// EDUs per transaction at most (spec).
const MAX_EDUS: usize = 100;
/// Presence updates taken from one `m.presence` EDU at most.
const MAX_PRESENCE_UPDATES: usize = 1000;

/// The transaction body.
#[derive(Deserialize)]
pub struct Transaction {
    #[serde(default)]
    pdus: Vec<Value>,
    #[serde(default)]
    edus: Vec<Value>,
}

/// Receives a transaction.
pub async fn send(
    State(services): State<AppState>,
    PathParams(txn_id): PathParams<String>,
    signed: Signed<Transaction>,
) -> MatrixResult<Json<Value>> {
    let origin = signed.origin;
    let txn = signed.body;
    if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
        return Err(MatrixError::bad_json(format!(
            "A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let received = &services.federation.received;
    let seen_key = transaction_key(origin.as_str(), &txn_id);
    // A copy of it being processed (the origin's retry after a timeout) is waited for.
    let _processing = received.enter(&seen_key).await;
    if let Some(answer) = received.answer(&services.db, &seen_key)? {
        return Ok(Json(answer));
    }

    let mut results = Map::new();
    let mut complete = true;
    if !txn.pdus.is_empty() {
        let source = FromOrigin {
            federation: &services.federation,
            origin: origin.clone(),
        };
        for result in services
            .rooms
            .receive_pdus(origin.as_str(), txn.pdus, &source)
            .await
        {
            match result {
                Ok((Some(event_id), outcome)) => {
                    let answer = match outcome {
                        PduOutcome::Accepted
                        | PduOutcome::AlreadyKnown
                        | PduOutcome::Outlier
                        | PduOutcome::SoftFailed(_) => json!({}),
                        PduOutcome::Rejected(why) | PduOutcome::Dropped(why) => {
                            json!({ "error": why })
                        }
                        PduOutcome::MissingEvents(ids) => {
                            tracing::debug!(%origin, event = %event_id, missing = ?ids, "a PDU waits for events it names");
                            json!({ "error": format!("missing events: {}", ids.join(", ")) })
                        }
                    };
                    results.insert(event_id, answer);
                }
                // No event id to answer for (not even a PDU's shape).
                Ok((None, outcome)) => {
                    tracing::info!(%origin, ?outcome, "a PDU without an event id was dropped");
                }
                Err(e) => {
                    // A storage failure: not remembered, so the origin's retry is processed.
                    tracing::error!(%origin, error = %e.message, "a PDU could not be stored");
                    complete = false;
                }
            }
        }
    }
    for edu in &txn.edus {
        if let Err(e) = receive_edu(&services, origin.as_str(), edu).await {
            if e.status >= 500 {
                complete = false;
            }
            tracing::info!(%origin, error = %e.message, "an EDU was not taken");
        }
    }

    let answer = json!({ "pdus": results });
    if !complete {
        return Err(MatrixError::internal(
            "part of the transaction could not be stored",
        ));
    }
    received.remember(&services.db, &seen_key, &answer)?;
    Ok(Json(answer))
}

/// Whether `user` is one of `origin`'s users.
fn of_origin(user: &str, origin: &str) -> bool {
    UserId::parse(user).is_ok_and(|u| u.server_name() == origin)
}

async fn receive_edu(services: &AppState, origin: &str, edu: &Value) -> MatrixResult<()> {
    let kind = edu.get("edu_type").and_then(Value::as_str).unwrap_or("");
    let content = edu.get("content").unwrap_or(&Value::Null);
    match kind {
        "m.direct_to_device" => direct_to_device(services, origin, content).await,
        "m.typing" => typing(services, origin, content),
        "m.presence" => presence(services, origin, content).await,
        "m.receipt" => receipts(services, origin, content).await,
        "m.device_list_update" | "m.signing_key_update" => {
            let user = content.get("user_id").and_then(Value::as_str).unwrap_or("");
            if !of_origin(user, origin) {
                return Err(MatrixError::forbidden(
                    "a server speaks only for its own users",
                ));
            }
            let lists = &services.remote_device_lists;
            if kind == "m.device_list_update" {
                lists.device_list_update(content)?;
            } else {
                lists.signing_key_update(content)?;
            }
            Ok(services.accounts.remote_keys_changed(user).await?)
        }
        other => {
            tracing::debug!(%origin, edu_type = %other, "EDU type not handled");
            Ok(())
        }
    }
}

/// Spec: "Receipts": `{room_id: {"m.read": {user_id: {event_ids, data: {ts, thread_id?}}}}}`.
/// Each of the origin's users' receipt is set as a receipt of ours would be (the user must
/// be joined and see the event); one that cannot be is skipped, logged.
async fn receipts(services: &AppState, origin: &str, content: &Value) -> MatrixResult<()> {
    let Some(rooms) = content.as_object() else {
        return Err(MatrixError::bad_json("m.receipt content is not an object"));
    };
    for (room_id, kinds) in rooms {
        let Some(users) = kinds.get("m.read").and_then(Value::as_object) else {
            continue;
        };
        if !services.rooms.server_allowed(room_id, origin)? {
            tracing::info!(%origin, %room_id, "receipts from a server the room's ACL denies were ignored");
            continue;
        }
        for (user, receipt) in users {
            if !of_origin(user, origin) {
                tracing::info!(%origin, %user, "a receipt for another server's user was skipped");
                continue;
            }
            let Some(event_id) = receipt
                .get("event_ids")
                .and_then(Value::as_array)
                .and_then(|ids| ids.last())
                .and_then(Value::as_str)
            else {
                continue;
            };
            let data = receipt.get("data");
            let thread = data
                .and_then(|d| d.get("thread_id"))
                .and_then(Value::as_str);
            // When the user read it, as their server says (required by the spec).
            let ts = data.and_then(|d| d.get("ts")).and_then(Value::as_u64);
            if let Err(e) = services
                .ephemeral
                .set_receipt(
                    &services.rooms,
                    user,
                    room_id,
                    ReceiptType::Read,
                    event_id,
                    (thread, ts),
                )
                .await
            {
                if e.kind.is_server_side() {
                    return Err(e.into());
                }
                tracing::info!(%origin, %user, %room_id, error = %e.message, "a receipt was not taken");
            }
        }
    }
    Ok(())
}

/// Spec: "Send-to-device messaging": `{sender, type, message_id, messages}`.
async fn direct_to_device(services: &AppState, origin: &str, content: &Value) -> MatrixResult<()> {
    let sender = content.get("sender").and_then(Value::as_str).unwrap_or("");
    if !of_origin(sender, origin) {
        return Err(MatrixError::forbidden(
            "a server speaks only for its own users",
        ));
    }
    let sender = UserId::parse(sender).map_err(|_| MatrixError::bad_json("bad sender"))?;
    let kind = content.get("type").and_then(Value::as_str).unwrap_or("");
    let message_id = content
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or_else(|| MatrixError::bad_json("m.direct_to_device without a message_id"))?;
    let ours = services.config.server_name.as_str();
    let mut messages = crate::services::accounts::to_device::Messages::new();
    for (user, devices) in content
        .get("messages")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let Some(devices) = devices.as_object() else {
            continue;
        };
        if UserId::parse(user).is_ok_and(|u| u.server_name() == ours) {
            messages.insert(
                user.clone(),
                devices
                    .iter()
                    .map(|(d, c)| (d.clone(), c.clone()))
                    .collect(),
            );
        }
    }
    if messages.is_empty() {
        return Ok(());
    }
    // A remote sender has no device of ours: the message id, under the origin's name,
    // makes a repeated EDU a no-op like a client's repeated transaction.
    let dedupe_device = format!("federation {origin}");
    services
        .accounts
        .send_to_device(&sender, &dedupe_device, kind, message_id, &messages)
        .await?;
    Ok(())
}

/// Spec: "Presence": `{push: [{user_id, presence, last_active_ago, currently_active?,
/// status_msg?}]}`; updates for the origin's users only.
async fn presence(services: &AppState, origin: &str, content: &Value) -> MatrixResult<()> {
    let Some(updates) = content.get("push").and_then(Value::as_array) else {
        return Err(MatrixError::bad_json("m.presence content has no push list"));
    };
    for update in updates.iter().take(MAX_PRESENCE_UPDATES) {
        let user = update.get("user_id").and_then(Value::as_str).unwrap_or("");
        if !of_origin(user, origin) {
            tracing::info!(%origin, %user, "a presence update for another server's user was skipped");
            continue;
        }
        services.presence.set_remote(user, update).await?;
    }
    Ok(())
}

/// Spec: "Typing Notifications": `{room_id, user_id, typing}`.
fn typing(services: &AppState, origin: &str, content: &Value) -> MatrixResult<()> {
    let user = content.get("user_id").and_then(Value::as_str).unwrap_or("");
    if !of_origin(user, origin) {
        return Err(MatrixError::forbidden(
            "a server speaks only for its own users",
        ));
    }
    let room_id = content.get("room_id").and_then(Value::as_str).unwrap_or("");
    let typing = content
        .get("typing")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    services.rooms.check_server_acl(room_id, origin)?;
    if services.rooms.membership_of(user, room_id)?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden("the user is not in the room"));
    }
    let Some(room) = services.rooms.store().room_short(room_id)? else {
        return Ok(());
    };
    // Typing from another server lasts the spec's suggested 30 s unless renewed.
    services.ephemeral.set_typing(
        room,
        user,
        typing.then_some(std::time::Duration::from_secs(30)),
    )?;
    Ok(())
}

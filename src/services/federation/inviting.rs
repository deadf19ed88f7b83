//! Inviting a user of another server into one of our rooms.
//!
//! Spec: server-server API, "Inviting to a room": the invite event, already in our room,
//! goes to the invitee's server with `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
//! (`room_version`, the event, and the stripped state a client shows with an invite); that
//! server signs it and answers it back. The answer is checked (the same event, now with
//! the invitee's server's signature); a refusal is passed on to our client. The invite
//! stays in our room either way (it is an event like any other); a refused one is
//! withdrawn by a kick.

use reqwest::Method;
use serde_json::{json, Value};

use super::client::FederationError;
use super::Federation;
use crate::core::url::encode;
use crate::core::{event_hashes, pdu_checks, ServerName, UserId};
use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::services::rooms::Rooms;

/// The state events an invite carries, stripped (spec: "Stripped state").
const STRIPPED: [&str; 7] = [
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
];

impl Federation {
    /// Hands our invite `event_id` in `room_id` to `target`'s server.
    pub async fn send_invite(
        &self,
        rooms: &Rooms,
        room_id: &str,
        event_id: &str,
        target: &UserId,
    ) -> MatrixResult<()> {
        let store = rooms.store();
        let room = rooms.known_room(room_id)?;
        let event = store
            .event_by_id(event_id)?
            .ok_or_else(|| MatrixError::internal("the invite is not stored"))?;
        let mut stripped = Vec::new();
        for kind in STRIPPED {
            if let Some(state) = store.state_event(event.meta.state_before, kind, "")? {
                stripped.push(json!({
                    "type": kind,
                    "state_key": "",
                    "content": state.content(),
                    "sender": state.sender(),
                }));
            }
        }
        if let Some(inviter) =
            store.state_event(event.meta.state_before, "m.room.member", event.sender())?
        {
            stripped.push(json!({
                "type": "m.room.member",
                "state_key": event.sender(),
                "content": inviter.content(),
                "sender": inviter.sender(),
            }));
        }
        let body = json!({
            "room_version": room.version.as_str(),
            "event": event.pdu(),
            "invite_room_state": stripped,
        });
        let destination = ServerName::parse(target.server_name())
            .map_err(|e| MatrixError::invalid_param(format!("The invitee's server name: {e}")))?;
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            encode(room_id),
            encode(event_id)
        );
        let answer = self
            .client
            .request(&destination, Method::PUT, &path, Some(&body))
            .await
            .map_err(|e| match e {
                FederationError::Refused { status, body } if (400..500).contains(&status) => {
                    let message = body
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("The invitee's server refused the invite")
                        .to_owned();
                    MatrixError::new(status, ErrorCode::Forbidden, message)
                }
                other => MatrixError::new(
                    502,
                    ErrorCode::Unknown,
                    format!("The invitee's server could not be asked: {other}"),
                ),
            })?;
        // The same event, signed by the invitee's server.
        let signed = answer.get("event").cloned().unwrap_or(Value::Null);
        let same = event_hashes::event_id(&signed, room.version)
            .ok()
            .as_deref()
            == Some(event_id);
        let keys = self
            .keys
            .keys_for(
                target.server_name(),
                &signed
                    .get("signatures")
                    .and_then(|s| s.get(target.server_name()))
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default(),
                crate::services::now_ms(),
            )
            .await;
        let lookup = |server: &str, id: &str| {
            (server == target.server_name())
                .then(|| keys.get(id).copied())
                .flatten()
        };
        let verified = pdu_checks::check_server_signature(
            room.version,
            &signed,
            target.server_name(),
            &lookup,
        ) == pdu_checks::SignatureCheck::Verified;
        if !same || !verified {
            tracing::info!(room = %room_id, event = %event_id, %target, "the invitee's server answered an invite we cannot check");
            return Err(MatrixError::new(
                502,
                ErrorCode::Unknown,
                "The invitee's server answered with an event that is not our invite, signed",
            ));
        }
        Ok(())
    }
}

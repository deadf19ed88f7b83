//! Inviting a user of another server into one of our rooms.
//!
//! Spec: server-server API, "Inviting to a room": the invite is built on the room's
//! current state and checked, but not kept yet; it goes to the invitee's server with `PUT
//! /_matrix/federation/v2/invite/{roomId}/{eventId}` (`room_version`, the event, and the
//! room's state as full PDUs, the create event among them, as v1.16 asks); that server
//! signs it and answers it back. The answer is checked (the same event, now with the
//! invitee's server's signature) and only then is the invite kept and sent to the other
//! servers in the room. A refusal is passed on to our client and leaves no trace in the
//! room.

use reqwest::Method;
use serde_json::{json, Value};

use super::client::FederationError;
use super::templates::refusal;
use super::Federation;
use crate::core::pdu::BuiltPdu;
use crate::core::url::encode;
use crate::core::{event_hashes, pdu_checks, ServerName, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::rooms::create::CreatedRoom;
use crate::services::rooms::Rooms;

impl Federation {
    /// Invites a new room's invitees of other servers, one after another; a failure is
    /// logged and the next goes on.
    pub async fn invite_all(&self, rooms: &Rooms, inviter: &UserId, created: CreatedRoom) {
        for target in &created.remote_invitees {
            let invited = async {
                let built = rooms
                    .build_invite(inviter, &created.room_id, target, None, created.is_direct)
                    .await?;
                self.invite_remote(rooms, &created.room_id, built, target)
                    .await
            };
            if let Err(e) = invited.await {
                tracing::warn!(room = %created.room_id, %target, error = %e.message, "a new room's invitee of another server was not invited");
            }
        }
    }

    /// Has `target`'s server sign our invite `built` in `room_id`, then keeps it.
    pub async fn invite_remote(
        &self,
        rooms: &Rooms,
        room_id: &str,
        built: BuiltPdu,
        target: &UserId,
    ) -> ServiceResult<()> {
        let room = rooms.known_room(room_id)?;
        let inviter = built
            .pdu
            .get("sender")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let body = json!({
            "room_version": room.version.as_str(),
            "event": built.pdu,
            "invite_room_state": rooms.invite_room_state(room.record.state, Some(&inviter))?,
        });
        let destination = ServerName::parse(target.server_name())
            .map_err(|e| ServiceError::invalid_param(format!("The invitee's server name: {e}")))?;
        let event_id = built.event_id;
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            encode(room_id),
            encode(&event_id)
        );
        let answer = self
            .client
            .request(&destination, Method::PUT, &path, Some(&body))
            .await
            .map_err(|e| match e {
                // Spec: a 400 `M_MISSING_PARAM`/`M_INVALID_PARAM` is our fault, not the
                // client's: a 5xx.
                FederationError::Refused { status: 400, body }
                    if matches!(
                        body.get("errcode").and_then(Value::as_str),
                        Some("M_MISSING_PARAM" | "M_INVALID_PARAM")
                    ) =>
                {
                    ServiceError::new(
                        ErrorKind::RemoteFailed,
                        ErrorCode::Unknown,
                        format!("The invitee's server refused our invite: {body}"),
                    )
                }
                other => refusal(other),
            })?;
        // The same event, signed by the invitee's server.
        let signed = answer.get("event").cloned().unwrap_or(Value::Null);
        let same = event_hashes::event_id(&signed, room.version)
            .ok()
            .as_deref()
            == Some(event_id.as_str());
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
            return Err(ServiceError::new(
                ErrorKind::RemoteFailed,
                ErrorCode::Unknown,
                "The invitee's server answered with an event that is not our invite, signed",
            ));
        }
        // What we keep is our event with their signature added, nothing else of theirs.
        let mut kept = body["event"].clone();
        if let (Some(theirs), Some(signatures)) = (
            signed
                .get("signatures")
                .and_then(|s| s.get(target.server_name())),
            kept.get_mut("signatures").and_then(Value::as_object_mut),
        ) {
            signatures.insert(target.server_name().to_owned(), theirs.clone());
        }
        rooms
            .keep_signed_invite(room_id, (&event_id, kept), target.server_name())
            .await
    }
}

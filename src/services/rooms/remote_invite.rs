//! Invites across servers, the rooms' side: an invite another server asks us to sign for
//! one of our users, and our invite of another server's user once that server signed it.
//!
//! Spec: server-server API, "Inviting to a room" and `PUT /_matrix/federation/v2/invite`:
//! before signing, the invite must be a PDU of the room's version whose hashes and
//! signatures check, an `m.room.member` `invite` whose sender is a user of the asking
//! server and whose `state_key` is one of ours (400 `M_INVALID_PARAM` otherwise), of a
//! room version we support (400 `M_INCOMPATIBLE_ROOM_VERSION`). Since v1.16
//! `invite_room_state` holds full PDUs of the room, the create event among them, each
//! signed and of the same room: we check so and, as the spec asks, refuse an invite whose
//! state fails in a room of version 12 or later, and only warn before that (keeping the
//! entries that have a stripped event's shape). A room we are in judges the invite as
//! any event of it (it must pass the auth rules); a room we are not in keeps it out of
//! band (see the writer's `out_of_band`).

use serde_json::{json, Value};

use super::receive::{verify_signatures, MissingSource, PduOutcome};
use super::state_store::ShortStateHash;
use super::writer::{OutOfBandMember, RemoteEvent};
use super::Rooms;
use crate::core::{event_hashes, pdu_checks, RoomVersion, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};

/// Entries of an invite's room state kept at most.
pub const MAX_STRIPPED_STATE: usize = 64;

/// State types an invite carries (spec: client-server API, "Stripped state",
/// the recommended set).
pub const STRIPPED_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
];

/// The body of `PUT /v2/invite`.
#[derive(Debug, serde::Deserialize)]
pub struct InviteOffer {
    /// The room's version.
    pub room_version: String,
    /// The invite event.
    pub event: Value,
    /// The room's state for the invitee to see (full PDUs since v1.16).
    #[serde(default)]
    pub invite_room_state: Option<Value>,
}

impl Rooms {
    /// Checks and signs an invite `origin` sent for one of our users; answers it with our
    /// signature added. `invitee_exists` says whether the invitee is an active account.
    pub async fn accept_remote_invite(
        &self,
        origin: &str,
        (room_id, event_id): (&str, &str),
        offer: InviteOffer,
        invitee_exists: &(dyn Fn(&UserId) -> bool + Sync),
        source: &dyn MissingSource,
    ) -> ServiceResult<Value> {
        let version = RoomVersion::from_id(&offer.room_version)
            .filter(|v| v.is_stable())
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::IncompatibleRoomVersion,
                    format!(
                        "This server does not support rooms of version {:?}",
                        offer.room_version
                    ),
                )
                .with("room_version", offer.room_version.as_str())
            })?;
        // A room we know (and its ACL): an invite from a denied server is refused.
        self.check_server_acl(room_id, origin)?;
        if let Some(room) = self.store.room(room_id)?.filter(|r| r.record.state != 0) {
            if room.version != version {
                return Err(ServiceError::invalid_param(format!(
                    "The room is of version {} here",
                    room.version
                )));
            }
        }
        let mut pdu = offer.event;
        pdu_checks::check_format(version, &pdu)
            .map_err(|e| ServiceError::invalid_param(format!("The invite is malformed: {e}")))?;
        let computed = event_hashes::event_id(&pdu, version).map_err(|e| {
            ServiceError::invalid_param(format!("The invite cannot be hashed: {e:?}"))
        })?;
        if computed != event_id {
            return Err(ServiceError::invalid_param(format!(
                "The invite's id is {computed}, not {event_id}"
            )));
        }
        let invitee = check_invite_pdu(origin, room_id, self.server_name.as_str(), &pdu)?;
        if !invitee_exists(&invitee) {
            return Err(ServiceError::forbidden(format!(
                "There is no user {invitee}"
            )));
        }
        verify_signatures(version, &pdu, source)
            .await
            .map_err(|why| ServiceError::invalid_param(format!("The invite: {why}")))?;
        if !event_hashes::content_hash_matches(&pdu, version).unwrap_or(false) {
            return Err(ServiceError::invalid_param(
                "The invite's content does not match its hash",
            ));
        }
        let stripped = match checked_room_state(
            version,
            room_id,
            offer.invite_room_state.as_ref(),
            source,
        )
        .await
        {
            Ok(stripped) => stripped,
            Err(why) if version.room_id_is_create_event_hash() => {
                return Err(ServiceError::invalid_param(format!(
                    "invite_room_state: {why}"
                )))
            }
            Err(why) => {
                tracing::warn!(%origin, room = %room_id, "an invite's room state is not as the spec asks (kept what has a stripped event's shape): {why}");
                shaped_room_state(offer.invite_room_state.as_ref())
            }
        };
        event_hashes::sign_event(
            &mut pdu,
            self.server_name.as_str(),
            &self.signing_key,
            version,
        )
        .map_err(|e| ServiceError::internal(format!("cannot sign the invite: {e:?}")))?;

        if self.has_local_member(room_id)? {
            // A room we are in: the invite is one of its events, judged as such now (it
            // also comes through the inviting server's transaction).
            let (_, outcome) = self.receive_pdu(origin, pdu.clone(), source).await?;
            let accepted = || -> ServiceResult<bool> {
                let Some(short) = self.store.state.find_event(event_id)? else {
                    return Ok(false);
                };
                Ok(super::graph::record(&self.store, short)?
                    .is_some_and(|r| r.status == super::graph::EventStatus::Accepted))
            };
            return match outcome {
                // Signed only when it is in the room (not when it was refused before).
                PduOutcome::Accepted | PduOutcome::AlreadyKnown if accepted()? => Ok(pdu),
                PduOutcome::Accepted | PduOutcome::AlreadyKnown => Err(ServiceError::forbidden(
                    "The invite is not allowed in this room",
                )),
                PduOutcome::Rejected(why) | PduOutcome::SoftFailed(why) => Err(
                    ServiceError::forbidden(format!("The invite is not allowed: {why}")),
                ),
                PduOutcome::Dropped(why) => Err(ServiceError::invalid_param(format!(
                    "The invite was refused: {why}"
                ))),
                PduOutcome::MissingEvents(ids) => Err(ServiceError::forbidden(format!(
                    "The invite names events this server cannot get: {}",
                    ids.join(", ")
                ))),
                PduOutcome::Outlier => Err(ServiceError::internal("an invite kept as an outlier")),
            };
        }
        self.writers
            .out_of_band(
                room_id,
                OutOfBandMember {
                    version,
                    event_id: event_id.to_owned(),
                    pdu: pdu.clone(),
                    stripped_state: Some(stripped),
                },
            )
            .await?;
        Ok(pdu)
    }

    /// Keeps our invite of another server's user, as that server signed it: it goes
    /// through the auth rules again (the room may have moved on since it was built) and
    /// on to the other servers in the room.
    pub async fn keep_signed_invite(
        &self,
        room_id: &str,
        (event_id, pdu): (&str, Value),
        invitee_server: &str,
    ) -> ServiceResult<()> {
        let event = RemoteEvent {
            event_id: event_id.to_owned(),
            pdu,
            signed_by: vec![
                self.server_name.as_str().to_owned(),
                invitee_server.to_owned(),
            ],
            outlier: false,
            forward: true,
            given_state: None,
            history_pos: None,
            redacted_by: 0,
            gap_states: Vec::new(),
        };
        match self.writers.receive(room_id, event).await? {
            PduOutcome::Accepted | PduOutcome::AlreadyKnown => Ok(()),
            PduOutcome::Rejected(why) | PduOutcome::SoftFailed(why) => Err(
                ServiceError::forbidden(format!("The invite is no longer allowed: {why}")),
            ),
            other => Err(ServiceError::internal(format!(
                "our signed invite was not kept: {other:?}"
            ))),
        }
    }

    /// The room state an invite of ours (or our answer to a knock) carries: the full
    /// PDUs of the recommended stripped state types in `snapshot`, and the inviter's
    /// member event.
    pub fn invite_room_state(
        &self,
        snapshot: ShortStateHash,
        inviter: Option<&str>,
    ) -> ServiceResult<Vec<Value>> {
        let mut out = Vec::new();
        for kind in STRIPPED_STATE_TYPES {
            if let Some(event) = self.store.state_event(snapshot, kind, "")? {
                out.push(event.pdu().clone());
            }
        }
        if let Some(inviter) = inviter {
            if let Some(member) = self.store.state_event(snapshot, "m.room.member", inviter)? {
                out.push(member.pdu().clone());
            }
        }
        Ok(out)
    }

    /// The stripped state another server sent with our user's invite or knock, if any.
    pub fn remote_stripped_state(&self, event_id: &str) -> ServiceResult<Option<Vec<Value>>> {
        let Some(short) = self.store.state.find_event(event_id)? else {
            return Ok(None);
        };
        self.store.stripped_state(short)
    }
}

/// The spec's checks of an invite event before the signature ones; answers the invitee.
fn check_invite_pdu(
    origin: &str,
    room_id: &str,
    our_server: &str,
    pdu: &Value,
) -> ServiceResult<UserId> {
    let field = |name: &str| pdu.get(name).and_then(Value::as_str);
    if field("type") != Some("m.room.member") {
        return Err(ServiceError::invalid_param(
            "The event is not an m.room.member event",
        ));
    }
    if field("room_id") != Some(room_id) {
        return Err(ServiceError::invalid_param("The event is of another room"));
    }
    let membership = pdu
        .get("content")
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str);
    if membership != Some("invite") {
        return Err(ServiceError::invalid_param("The event is not an invite"));
    }
    let sender_ok = field("sender")
        .and_then(|s| UserId::parse(s).ok())
        .is_some_and(|u| u.server_name() == origin);
    if !sender_ok {
        return Err(ServiceError::invalid_param(
            "The invite's sender is not a user of the requesting server",
        ));
    }
    field("state_key")
        .and_then(|s| UserId::parse(s).ok())
        .filter(|u| u.server_name() == our_server)
        .ok_or_else(|| ServiceError::invalid_param("The invitee is not a user of this server"))
}

/// `invite_room_state` (or `knock_room_state`) checked as the spec asks since v1.16 (full
/// PDUs of this room with good signatures, the create event among them), as the stripped
/// events a client sees; or why not.
pub(super) async fn checked_room_state(
    version: RoomVersion,
    room_id: &str,
    raw: Option<&Value>,
    source: &dyn MissingSource,
) -> Result<Vec<Value>, String> {
    let entries = raw
        .and_then(Value::as_array)
        .ok_or("it is not a list of events")?;
    if entries.len() > MAX_STRIPPED_STATE {
        return Err(format!("more than {MAX_STRIPPED_STATE} events"));
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut has_create = false;
    for entry in entries {
        let (is_create, stripped) = checked_entry(version, room_id, entry, source).await?;
        has_create |= is_create;
        out.extend(stripped);
    }
    if !has_create {
        return Err("the create event is missing".into());
    }
    Ok(out)
}

/// One entry of a room state sent with an invite or a knock, checked as a PDU of
/// `room_id` (format, room, signatures): whether it is the create event, and its stripped
/// form (`None` when it lacks a stripped event's fields).
pub(super) async fn checked_entry(
    version: RoomVersion,
    room_id: &str,
    entry: &Value,
    source: &dyn MissingSource,
) -> Result<(bool, Option<Value>), String> {
    pdu_checks::check_format(version, entry).map_err(|e| format!("an event: {e}"))?;
    let kind = entry.get("type").and_then(Value::as_str).unwrap_or("");
    let is_create =
        kind == "m.room.create" && entry.get("state_key").and_then(Value::as_str) == Some("");
    let its_room = if is_create && version.room_id_is_create_event_hash() {
        event_hashes::room_id_from_create_event(entry, version).ok()
    } else {
        entry
            .get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if its_room.as_deref() != Some(room_id) {
        return Err(format!("an {kind} event is of another room"));
    }
    verify_signatures(version, entry, source)
        .await
        .map_err(|why| format!("an {kind} event: {why}"))?;
    // Check 3 of receiving a PDU: content that does not match its hash is shown redacted
    // (an event redacted since is sent so, and an altered one shows nothing it claims).
    if !event_hashes::content_hash_matches(entry, version).unwrap_or(false) {
        let redacted = crate::core::redaction::redact(entry, version);
        return Ok((is_create, stripped_of(&redacted)));
    }
    Ok((is_create, stripped_of(entry)))
}

/// The entries of `raw` that have a stripped event's shape, as stripped events (the
/// older form of `invite_room_state`).
fn shaped_room_state(raw: Option<&Value>) -> Vec<Value> {
    raw.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_STRIPPED_STATE)
        .filter_map(stripped_of)
        .collect()
}

/// A stripped state event (`type`, `state_key`, `content`, `sender`), if `event` has
/// those.
pub(super) fn stripped_of(event: &Value) -> Option<Value> {
    let kind = event.get("type")?.as_str()?;
    let state_key = event.get("state_key")?.as_str()?;
    let sender = event.get("sender")?.as_str()?;
    let content = event.get("content").filter(|c| c.is_object())?;
    Some(json!({
        "type": kind,
        "state_key": state_key,
        "content": content,
        "sender": sender,
    }))
}

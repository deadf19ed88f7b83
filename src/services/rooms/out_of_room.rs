//! Our users' member events in rooms we are not in: the leave that rejects an invite or
//! retracts a knock, the knock itself, each made with a resident server (see the
//! federation service's `leaving` and `knocking`), and the leave we make alone when no
//! resident server can be reached.
//!
//! Spec: server-server API, "Leaving Rooms (Rejecting Invites)" and "Knocking". When
//! none of the room's servers answers, the invite is still rejected here, as Synapse
//! does: a leave of our own, naming the invite as its prev and auth event, signed by us
//! and sent nowhere, so the user is not left with an invite they cannot get rid of.

use serde_json::{json, Value};

use super::receive::{verify_signatures, MissingSource};
use super::remote_invite::{checked_entry, stripped_of, MAX_STRIPPED_STATE};
use super::writer::{OutOfBandMember, PduOutcome};
use super::Rooms;
use crate::core::pdu::{self, PduTemplate};
use crate::core::{event_hashes, pdu_checks, RoomId, RoomVersion, UserId};
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::now_ms;

impl Rooms {
    /// Keeps our user's member event (`event_id`, `pdu`) that a resident server of
    /// `room_id` (of `version`) accepted, with the room state it answered (a knock's).
    pub async fn keep_remote_member(
        &self,
        room_id: &str,
        version: RoomVersion,
        (event_id, pdu): (&str, Value),
        stripped_state: Option<Vec<Value>>,
    ) -> ServiceResult<()> {
        self.writers
            .out_of_band(
                room_id,
                OutOfBandMember {
                    version,
                    event_id: event_id.to_owned(),
                    pdu,
                    stripped_state,
                },
            )
            .await
    }

    /// A knock's answered room state as a client sees it, each entry checked as for an
    /// invite and dropped alone when it fails (spec: `send_knock`, entries "improperly
    /// signed or formatted SHOULD be removed"). Before room version 12 an entry may be a
    /// bare stripped event (no signatures), kept as it is.
    pub async fn knock_room_state(
        &self,
        room_id: &str,
        version: RoomVersion,
        raw: Option<&Value>,
        source: &dyn MissingSource,
    ) -> Vec<Value> {
        let entries = raw.and_then(Value::as_array).into_iter().flatten();
        let mut out = Vec::new();
        for entry in entries.take(MAX_STRIPPED_STATE) {
            if entry.get("signatures").is_none() && !version.room_id_is_create_event_hash() {
                out.extend(stripped_of(entry));
                continue;
            }
            match checked_entry(version, room_id, entry, source).await {
                Ok((_, stripped)) => out.extend(stripped),
                Err(why) => {
                    tracing::info!(room = %room_id, "an entry of a knock's room state is left out: {why}");
                }
            }
        }
        out
    }

    /// Whether `user` is invited to or knocking on `room_id` with no member of ours in the
    /// room: their leave then goes through another server.
    pub fn pending_out_of_room(&self, user: &UserId, room_id: &str) -> ServiceResult<bool> {
        let pending = matches!(
            self.membership_of(user.as_str(), room_id)?.as_deref(),
            Some("invite" | "knock")
        );
        Ok(pending && !self.has_local_member(room_id)?)
    }

    /// The servers that may let `user` leave (or join) `room_id` they are invited to or
    /// knocking on: the inviter's, those of the room state's senders, the room id's, and
    /// the room's other servers when we hold its state.
    pub fn servers_for_pending(&self, user: &UserId, room_id: &str) -> ServiceResult<Vec<String>> {
        let mut servers: Vec<String> = Vec::new();
        let mut add = |user_id: &str| {
            if let Ok(user) = UserId::parse(user_id) {
                let server = user.server_name().to_owned();
                if server != self.server_name.as_str() && !servers.contains(&server) {
                    servers.push(server);
                }
            }
        };
        if let Some(record) = self.store.membership(user.as_str(), room_id)? {
            if let Some(event) = self.store.event_by_id(&record.event_id)? {
                add(event.sender());
                for stripped in self.store.stripped_state(event.short)?.unwrap_or_default() {
                    if let Some(sender) = stripped.get("sender").and_then(Value::as_str) {
                        add(sender);
                    }
                }
            }
        }
        if let Some(server) = RoomId::parse(room_id)
            .ok()
            .and_then(|r| r.server_name().map(str::to_owned))
        {
            if server != self.server_name.as_str() && !servers.contains(&server) {
                servers.push(server);
            }
        }
        // An invite sent inside a room we hold (our last member left since) has no
        // stripped state and may come from one of ours: the room's other servers.
        for server in self.remote_servers(room_id)?.iter() {
            if !servers.contains(server) {
                servers.push(server.clone());
            }
        }
        Ok(servers)
    }

    /// A PDU `origin` sent for a room we are not in: when it is the end of one of our
    /// users' pending invite or knock (the inviter's server rescinding the invite with a
    /// kick or a ban, the room denying the knock), checked and kept out of band, so the
    /// user's `/sync` shows it left instead of an invite that can no longer be taken.
    /// Only an event naming the invite (or knock) we hold among its auth events, from the
    /// server that sent the invite (or, for a knock, one of the servers it went through),
    /// may end it. `None`: not such an event (it is dropped as before).
    pub(super) async fn rescinded_membership(
        &self,
        origin: &str,
        (room_id, pdu): (&str, &Value),
        source: &dyn MissingSource,
    ) -> ServiceResult<Option<(Option<String>, PduOutcome)>> {
        let field = |name: &str| pdu.get(name).and_then(Value::as_str);
        let membership = pdu
            .get("content")
            .and_then(|c| c.get("membership"))
            .and_then(Value::as_str);
        let (Some("m.room.member"), Some(target), Some(sender)) =
            (field("type"), field("state_key"), field("sender"))
        else {
            return Ok(None);
        };
        if !matches!(membership, Some("leave" | "ban")) || target == sender {
            return Ok(None);
        }
        let Ok(user) = UserId::parse(target) else {
            return Ok(None);
        };
        if user.server_name() != self.server_name.as_str()
            || sender.split_once(':').map(|(_, s)| s) != Some(origin)
            || !self.pending_out_of_room(&user, room_id)?
        {
            return Ok(None);
        }
        // Tied to the invite or knock we hold (a kick names the target's membership
        // among its auth events), and from the server that sent the invite (for a knock,
        // one of the servers the knock's answer came with).
        let Some(record) = self.store.membership(target, room_id)? else {
            return Ok(None);
        };
        let names_ours = pdu
            .get("auth_events")
            .and_then(Value::as_array)
            .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(&record.event_id)));
        if !names_ours {
            return Ok(None);
        }
        let from_sender = match record.membership.as_str() {
            "invite" => self
                .store
                .event_by_id(&record.event_id)?
                .and_then(|invite| invite.sender().split_once(':').map(|(_, s)| s.to_owned()))
                .is_some_and(|server| server == origin),
            _ => self
                .servers_for_pending(&user, room_id)?
                .iter()
                .any(|s| s == origin),
        };
        if !from_sender {
            return Ok(None);
        }
        let Some(room) = self.store.room(room_id)? else {
            return Ok(None);
        };
        let version = room.version;
        let refused = |why: String| Ok(Some((None, PduOutcome::Dropped(why))));
        if let Err(e) = pdu_checks::check_format(version, pdu) {
            return refused(format!("malformed: {e}"));
        }
        let event_id = match event_hashes::event_id(pdu, version) {
            Ok(id) => id,
            Err(e) => return refused(format!("no event id: {e:?}")),
        };
        let dropped = |why: String| Ok(Some((Some(event_id.clone()), PduOutcome::Dropped(why))));
        if let Err(why) = verify_signatures(version, pdu, source).await {
            return dropped(format!("the end of an invite is not signed: {why}"));
        }
        if !event_hashes::content_hash_matches(pdu, version).unwrap_or(false) {
            return dropped("the end of an invite fails its content hash".into());
        }
        self.keep_remote_member(room_id, version, (&event_id, pdu.clone()), None)
            .await?;
        Ok(Some((Some(event_id), PduOutcome::Accepted)))
    }

    /// Rejects `user`'s invite (or retracts their knock) here alone: a leave of ours after
    /// their member event, kept out of band and sent nowhere.
    pub async fn leave_alone(
        &self,
        user: &UserId,
        room_id: &str,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        let room = self.known_room(room_id)?;
        let record = self
            .store
            .membership(user.as_str(), room_id)?
            .ok_or_else(|| ServiceError::forbidden("You are not invited to this room"))?;
        let member = self
            .store
            .event_by_id(&record.event_id)?
            .ok_or_else(|| ServiceError::internal("the member event is not stored"))?;
        let mut content = json!({ "membership": "leave" });
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let depth = member
            .pdu()
            .get("depth")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            + 1;
        let member_hash = event_hashes::reference_hash(member.pdu(), room.version)
            .map_err(ServiceError::internal)?;
        let hash_of = |id: &str| (id == member.event_id).then_some(member_hash);
        let built = pdu::build_referencing(
            room.version,
            PduTemplate {
                room_id: Some(room_id.to_owned()),
                sender: user.as_str().to_owned(),
                kind: "m.room.member".into(),
                state_key: Some(user.as_str().to_owned()),
                content,
                prev_events: vec![member.event_id.clone()],
                auth_events: vec![member.event_id.clone()],
                depth,
                origin_server_ts: now_ms(),
                redacts: None,
            },
            &hash_of,
            self.server_name.as_str(),
            &self.signing_key,
        )
        .map_err(|e| ServiceError::internal(format!("cannot build the leave: {e:?}")))?;
        self.keep_remote_member(room_id, room.version, (&built.event_id, built.pdu), None)
            .await
    }
}

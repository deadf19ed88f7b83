//! Joining a room another server holds, as the joining server.
//!
//! Spec: server-server API, "Joining Rooms": `GET /make_join` to a resident server (with
//! every room version we support as `ver`), the template filled in (our content, our
//! timestamp), hashed and signed, then `PUT /v2/send_join` (the v1 form when the resident
//! server does not know v2). The answer is checked and taken in by the rooms service
//! ([`crate::services::rooms::remote_join`]). Resident servers are tried in order until
//! one lets us in; the last refusal is the answer.
//!
//! A restricted room we hold can need another server too: when the user meets its
//! conditions but none of our members may invite, a server of the room with a member who
//! may authorises the join ([`Federation::join_authorised_elsewhere`]; spec, "Restricted
//! rooms": "the joining server ... should try another resident server"; Synapse does the
//! same).

use serde_json::{Map, Value};

use super::source::FromOrigin;
use super::Federation;
use crate::core::{event_hashes, ServerName, UserId};
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::rooms::receive::PduOutcome;
use crate::services::rooms::Rooms;

/// Servers asked at most to authorise one restricted join.
const MAX_AUTHORISERS_ASKED: usize = 5;

impl Federation {
    /// Joins `user` to `room_id` through the first of `servers` that lets them in, with
    /// `content` (membership, display name, avatar, reason) in the join. Answers whether
    /// the room was taken in with a partial state (its member list is then to be fetched:
    /// see [`crate::services::partial_resync`]).
    pub async fn join_room(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        servers: &[String],
        content: Map<String, Value>,
    ) -> ServiceResult<bool> {
        let own = self.client.server_name().as_str().to_owned();
        let mut last = ServiceError::not_found("No server in the room is known to join through");
        let mut tried = Vec::new();
        for server in servers {
            if *server == own || tried.contains(server) {
                continue;
            }
            tried.push(server.clone());
            let Ok(destination) = ServerName::parse(server) else {
                continue;
            };
            match self
                .join_through(rooms, user, room_id, &destination, content.clone())
                .await
            {
                Ok(partial) => return Ok(partial),
                Err(e) => {
                    tracing::info!(room = %room_id, %server, error = %e.message, "joining through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_through(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        destination: &ServerName,
        content: Map<String, Value>,
    ) -> ServiceResult<bool> {
        let member = self
            .member_from_template(destination, (room_id, user), "join", content)
            .await?;
        let answer = self
            .send_member(destination, room_id, "join", &member)
            .await?;
        let version = member.version;
        // A restricted join comes back countersigned: that is the event to keep.
        let join = match answer.get("event") {
            Some(signed)
                if event_hashes::event_id(signed, version).ok().as_deref()
                    == Some(member.event_id.as_str()) =>
            {
                signed.clone()
            }
            _ => member.pdu,
        };
        let source = FromOrigin {
            federation: self,
            origin: destination.clone(),
        };
        let partial = rooms
            .join_through(
                room_id,
                version,
                (join, answer),
                destination.as_str(),
                &source,
            )
            .await?;
        Ok(partial.is_some())
    }

    /// Joins `user` to `room_id`, a restricted room we hold whose conditions they meet
    /// but whose join none of our members may authorise, through the room's other
    /// servers whose members may (most powerful first): `make_join` there names the
    /// authoriser, `send_join` comes back countersigned, and the join goes into the room
    /// like any event received, passed on to the other servers.
    pub async fn join_authorised_elsewhere(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        content: Map<String, Value>,
    ) -> ServiceResult<()> {
        let mut last = ServiceError::forbidden("No member of the room may authorise the join");
        let mut asked = 0;
        for server in rooms.remote_authorisers(room_id)? {
            if asked >= MAX_AUTHORISERS_ASKED {
                break;
            }
            let Ok(destination) = ServerName::parse(&server) else {
                continue;
            };
            if !rooms.server_allowed(room_id, &server)? {
                continue;
            }
            asked += 1;
            match self
                .authorised_join_through(rooms, user, room_id, &destination, content.clone())
                .await
            {
                Ok(()) => return Ok(()),
                // The join is in the room already: another server would make a second.
                Err((e, true)) => return Err(e),
                Err((e, false)) => {
                    tracing::info!(room = %room_id, %server, error = %e.message, "authorising the join through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn authorised_join_through(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        destination: &ServerName,
        content: Map<String, Value>,
    ) -> Result<(), (ServiceError, bool)> {
        let before_sent = |e| (e, false);
        let member = self
            .member_from_template(destination, (room_id, user), "join", content)
            .await
            .map_err(before_sent)?;
        let authoriser = member.pdu["content"]["join_authorised_via_users_server"]
            .as_str()
            .and_then(|u| u.split_once(':'))
            .map(|(_, server)| server);
        if authoriser != Some(destination.as_str()) {
            return Err(before_sent(ServiceError::forbidden(format!(
                "{destination} named none of its members to authorise the join"
            ))));
        }
        let answer = self
            .send_member(destination, room_id, "join", &member)
            .await
            .map_err(before_sent)?;
        let sent = |e| (e, true);
        let join = match answer.get("event") {
            Some(signed)
                if event_hashes::event_id(signed, member.version)
                    .ok()
                    .as_deref()
                    == Some(member.event_id.as_str()) =>
            {
                signed.clone()
            }
            _ => {
                return Err(sent(ServiceError::forbidden(format!(
                    "{destination} did not countersign the join"
                ))))
            }
        };
        let source = FromOrigin {
            federation: self,
            origin: destination.clone(),
        };
        let (_, outcome) = rooms
            .receive_membership_pdu(destination.as_str(), join, &source)
            .await
            .map_err(sent)?;
        let joined = match outcome {
            PduOutcome::Accepted => true,
            // Come first through the room (`/send`): what became of it is what counts.
            PduOutcome::AlreadyKnown => {
                rooms
                    .membership_of(user.as_str(), room_id)
                    .map_err(sent)?
                    .as_deref()
                    == Some("join")
            }
            _ => false,
        };
        if joined {
            return Ok(());
        }
        Err(sent(ServiceError::forbidden(format!(
            "The join was not allowed here: {outcome:?}"
        ))))
    }
}

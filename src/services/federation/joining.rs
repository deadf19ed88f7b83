//! Joining a room another server holds, as the joining server.
//!
//! Spec: server-server API, "Joining Rooms": `GET /make_join` to a resident server (with
//! every room version we support as `ver`), the template filled in (our content, our
//! timestamp), hashed and signed, then `PUT /v2/send_join` (the v1 form when the resident
//! server does not know v2). The answer is checked and taken in by the rooms service
//! ([`crate::services::rooms::remote_join`]). Resident servers are tried in order until
//! one lets us in; the last refusal is the answer.

use reqwest::Method;
use serde_json::{Map, Value};

use super::client::FederationError;
use super::source::FromOrigin;
use super::Federation;
use crate::core::url::encode;
use crate::core::{event_hashes, RoomVersion, ServerName, UserId};
use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::services::now_ms;
use crate::services::rooms::Rooms;

/// Fields of a `make_join` template that go into our join.
const TEMPLATE_FIELDS: [&str; 7] = [
    "room_id",
    "sender",
    "state_key",
    "type",
    "prev_events",
    "auth_events",
    "depth",
];

/// A resident server's refusal, passed on to our client as it was given (status and
/// Matrix error), other failures as 502.
fn refusal(error: FederationError) -> MatrixError {
    match error {
        FederationError::Refused { status, body } if (400..500).contains(&status) => {
            let errcode = body.get("errcode").and_then(Value::as_str).unwrap_or("");
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("The resident server refused the join")
                .to_owned();
            let code = match errcode {
                "M_FORBIDDEN" => ErrorCode::Forbidden,
                "M_NOT_FOUND" => ErrorCode::NotFound,
                "M_INCOMPATIBLE_ROOM_VERSION" => ErrorCode::IncompatibleRoomVersion,
                "M_UNABLE_TO_AUTHORISE_JOIN" => ErrorCode::UnableToAuthoriseJoin,
                "M_LIMIT_EXCEEDED" => ErrorCode::LimitExceeded,
                _ => ErrorCode::Unknown,
            };
            MatrixError::new(status, code, message)
        }
        other => MatrixError::new(
            502,
            ErrorCode::Unknown,
            format!("The resident server could not be asked: {other}"),
        ),
    }
}

impl Federation {
    /// Joins `user` to `room_id` through the first of `servers` that lets them in, with
    /// `content` (membership, display name, avatar, reason) in the join.
    pub async fn join_room(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        servers: &[String],
        content: Map<String, Value>,
    ) -> MatrixResult<()> {
        let own = self.client.server_name().as_str().to_owned();
        let mut last = MatrixError::not_found("No server in the room is known to join through");
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
                Ok(()) => return Ok(()),
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
    ) -> MatrixResult<()> {
        let versions: Vec<String> = RoomVersion::ALL
            .iter()
            .map(|v| format!("ver={}", v.as_str()))
            .collect();
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            encode(room_id),
            encode(user.as_str()),
            versions.join("&")
        );
        let answer = self
            .client
            .request(destination, Method::GET, &path, None)
            .await
            .map_err(refusal)?;
        let version = answer
            .get("room_version")
            .and_then(Value::as_str)
            .and_then(RoomVersion::from_id)
            .ok_or_else(|| {
                MatrixError::new(
                    400,
                    ErrorCode::UnsupportedRoomVersion,
                    "The room's version is not one this server supports",
                )
            })?;
        let template = answer
            .get("event")
            .and_then(Value::as_object)
            .ok_or_else(|| refusal(FederationError::BadResponse("no event template".into())))?;
        let field = |k: &str| template.get(k).and_then(Value::as_str);
        if field("type") != Some("m.room.member")
            || field("sender") != Some(user.as_str())
            || field("state_key") != Some(user.as_str())
            || field("room_id") != Some(room_id)
        {
            return Err(refusal(FederationError::BadResponse(
                "the template is not our user's join to this room".into(),
            )));
        }
        let mut pdu = Map::new();
        for key in TEMPLATE_FIELDS {
            if let Some(value) = template.get(key) {
                pdu.insert(key.to_owned(), value.clone());
            }
        }
        pdu.insert(
            "origin".into(),
            Value::from(self.client.server_name().as_str()),
        );
        let mut content = content;
        if let Some(via) = template
            .get("content")
            .and_then(|c| c.get("join_authorised_via_users_server"))
        {
            content.insert("join_authorised_via_users_server".into(), via.clone());
        }
        content.insert("membership".into(), Value::from("join"));
        pdu.insert("content".into(), Value::Object(content));
        pdu.insert("origin_server_ts".into(), Value::from(now_ms()));
        let mut pdu = Value::Object(pdu);
        event_hashes::hash_and_sign_event(
            &mut pdu,
            self.client.server_name().as_str(),
            &self.signing_key,
            version,
        )
        .map_err(|e| MatrixError::internal(format!("cannot sign our join: {e:?}")))?;
        let event_id = event_hashes::event_id(&pdu, version)
            .map_err(|e| MatrixError::internal(format!("cannot hash our join: {e:?}")))?;
        let tail = format!("{}/{}", encode(room_id), encode(&event_id));
        let v2 = format!("/_matrix/federation/v2/send_join/{tail}");
        let answer = match self
            .client
            .request(destination, Method::PUT, &v2, Some(&pdu))
            .await
        {
            Err(FederationError::Refused { status: 404, body })
                if body.get("errcode").and_then(Value::as_str) == Some("M_UNRECOGNIZED") =>
            {
                let v1 = format!("/_matrix/federation/v1/send_join/{tail}");
                let answer = self
                    .client
                    .request(destination, Method::PUT, &v1, Some(&pdu))
                    .await
                    .map_err(refusal)?;
                answer.get(1).cloned().unwrap_or(Value::Null)
            }
            other => other.map_err(refusal)?,
        };
        // A restricted join comes back countersigned: that is the event to keep.
        let join = match answer.get("event") {
            Some(signed)
                if event_hashes::event_id(signed, version).ok().as_deref()
                    == Some(event_id.as_str()) =>
            {
                signed.clone()
            }
            _ => pdu,
        };
        let source = FromOrigin {
            federation: self,
            origin: destination.clone(),
        };
        rooms
            .join_through(room_id, version, (join, &answer), &source)
            .await
    }
}

//! Our user's member event through a resident server's template: the first half of a
//! join, a leave (rejecting an invite) or a knock.
//!
//! Spec: server-server API, "Joining Rooms", "Leaving Rooms (Rejecting Invites)",
//! "Knocking": `GET /make_{join,leave,knock}/{roomId}/{userId}` (with every room version we
//! support as `ver`, except for a leave) answers a template; the template must be our
//! user's member event in that room; we fill in our content, `origin` and timestamp (and
//! in rooms v1 and v2 an event id of ours), hash and sign it. The `send_*` half is the
//! caller's.

use reqwest::Method;
use serde_json::{Map, Value};

use super::client::FederationError;
use super::Federation;
use crate::core::url::encode;
use crate::core::{event_hashes, RoomVersion, ServerName, UserId};
use crate::services::error::{ErrorCode, ErrorKind, ServiceError, ServiceResult};
use crate::services::now_ms;

/// Fields of a template that go into our event.
const TEMPLATE_FIELDS: [&str; 7] = [
    "room_id",
    "sender",
    "state_key",
    "type",
    "prev_events",
    "auth_events",
    "depth",
];

/// Our member event, made from a template and signed.
pub struct SignedMember {
    /// The room's version, as the resident server told it.
    pub version: RoomVersion,
    /// The event.
    pub pdu: Value,
    /// Its id.
    pub event_id: String,
}

/// A resident server's refusal, passed on to our client as it was given (its Matrix error,
/// and the kind its 4xx status means), other failures as a remote failure.
pub(super) fn refusal(error: FederationError) -> ServiceError {
    match error {
        FederationError::Refused { status, body } if (400..500).contains(&status) => {
            let errcode = body.get("errcode").and_then(Value::as_str).unwrap_or("");
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("The resident server refused the request")
                .to_owned();
            // Spec (invites, joins): the error "should be passed through to clients".
            // Errors about the caller's own account or token are not the client's,
            // though (a client would take them for its own session's): unknown, and a
            // 401 of theirs is no 401 of ours.
            let code = match ErrorCode::from_wire(errcode) {
                Some(
                    ErrorCode::UnknownToken
                    | ErrorCode::MissingToken
                    | ErrorCode::UserLocked
                    | ErrorCode::UserDeactivated
                    | ErrorCode::Unauthorized,
                )
                | None => ErrorCode::Unknown,
                Some(code) => code,
            };
            let kind = match status {
                401 => ErrorKind::RemoteFailed,
                _ => super::client::refusal_kind(status),
            };
            ServiceError::new(kind, code, message)
        }
        other => ServiceError::new(
            ErrorKind::RemoteFailed,
            ErrorCode::Unknown,
            format!("The resident server could not be asked: {other}"),
        ),
    }
}

/// Whether a `make_{membership}` template is `user`'s member event of that membership in
/// `room_id`. Spec (`make_join`, `make_leave`, `make_knock`): the room id, sender, state
/// key, type and `content.membership` are checked; otherwise the answer "MUST be
/// treated as malformed and discarded".
fn is_template_for(
    template: &Map<String, Value>,
    (room_id, user): (&str, &str),
    membership: &str,
) -> bool {
    let field = |k: &str| template.get(k).and_then(Value::as_str);
    let template_membership = template
        .get("content")
        .and_then(|c| c.get("membership"))
        .and_then(Value::as_str);
    field("type") == Some("m.room.member")
        && field("sender") == Some(user)
        && field("state_key") == Some(user)
        && field("room_id") == Some(room_id)
        && template_membership == Some(membership)
}

impl Federation {
    /// `make_{membership}` at `destination` for `user` in `room_id`, filled in with
    /// `content` (its `membership` is set here), hashed and signed.
    pub(super) async fn member_from_template(
        &self,
        destination: &ServerName,
        (room_id, user): (&str, &UserId),
        membership: &str,
        mut content: Map<String, Value>,
    ) -> ServiceResult<SignedMember> {
        let mut path = format!(
            "/_matrix/federation/v1/make_{membership}/{}/{}",
            encode(room_id),
            encode(user.as_str()),
        );
        if membership != "leave" {
            let versions: Vec<String> = RoomVersion::ALL
                .iter()
                .map(|v| format!("ver={}", v.as_str()))
                .collect();
            path = format!("{path}?{}", versions.join("&"));
        }
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
                ServiceError::new(
                    ErrorKind::Invalid,
                    ErrorCode::UnsupportedRoomVersion,
                    "The room's version is not one this server supports",
                )
            })?;
        let template = answer
            .get("event")
            .and_then(Value::as_object)
            .ok_or_else(|| refusal(FederationError::BadResponse("no event template".into())))?;
        if !is_template_for(template, (room_id, user.as_str()), membership) {
            return Err(refusal(FederationError::BadResponse(format!(
                "the template is not our user's {membership} in this room"
            ))));
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
        if membership == "join" {
            if let Some(via) = template
                .get("content")
                .and_then(|c| c.get("join_authorised_via_users_server"))
            {
                content.insert("join_authorised_via_users_server".into(), via.clone());
            }
        }
        content.insert("membership".into(), Value::from(membership));
        pdu.insert("content".into(), Value::Object(content));
        pdu.insert("origin_server_ts".into(), Value::from(now_ms()));
        if !version.event_ids_are_reference_hashes() {
            // Rooms v1 and v2: the id is ours to make (a template's is not taken).
            let id = crate::core::pdu::new_event_id(self.client.server_name().as_str());
            pdu.insert("event_id".into(), Value::from(id));
        }
        let mut pdu = Value::Object(pdu);
        event_hashes::hash_and_sign_event(
            &mut pdu,
            self.client.server_name().as_str(),
            &self.signing_key,
            version,
        )
        // What cannot be hashed came from the template (a float depth, prev_events not a
        // list): the other server's bad answer, not ours.
        .map_err(|e| {
            refusal(FederationError::BadResponse(format!(
                "the template cannot be signed: {e:?}"
            )))
        })?;
        let event_id = event_hashes::event_id(&pdu, version).map_err(|e| {
            refusal(FederationError::BadResponse(format!(
                "the template cannot be hashed: {e:?}"
            )))
        })?;
        Ok(SignedMember {
            version,
            pdu,
            event_id,
        })
    }

    /// `PUT /v2/send_{membership}` (for a join or leave, the v1 form when the server does
    /// not know v2, its answer unwrapped).
    pub(super) async fn send_member(
        &self,
        destination: &ServerName,
        room_id: &str,
        membership: &str,
        member: &SignedMember,
    ) -> ServiceResult<Value> {
        let tail = format!("{}/{}", encode(room_id), encode(&member.event_id));
        let has_v2 = membership != "knock";
        let first = if has_v2 {
            // Spec v1.6: a joining server that can take a partial state says so.
            let partial = membership == "join" && self.partial_state_joins;
            let query = if partial { "?omit_members=true" } else { "" };
            format!("/_matrix/federation/v2/send_{membership}/{tail}{query}")
        } else {
            format!("/_matrix/federation/v1/send_{membership}/{tail}")
        };
        match self
            .client
            .request(destination, Method::PUT, &first, Some(&member.pdu))
            .await
        {
            Err(FederationError::Refused { status: 404, body })
                if has_v2
                    && body.get("errcode").and_then(Value::as_str) == Some("M_UNRECOGNIZED") =>
            {
                let v1 = format!("/_matrix/federation/v1/send_{membership}/{tail}");
                let answer = self
                    .client
                    .request(destination, Method::PUT, &v1, Some(&member.pdu))
                    .await
                    .map_err(refusal)?;
                Ok(answer.get(1).cloned().unwrap_or(Value::Null))
            }
            other => other.map_err(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{is_template_for, refusal};
    use crate::services::error::ErrorCode;
    use crate::services::error::ErrorKind;
    use crate::services::federation::client::FederationError;

    #[test]
    fn another_servers_refusal_reaches_the_client_with_its_code() {
        let refused = |status, errcode: &str| {
            refusal(FederationError::Refused {
                status,
                body: json!({"errcode": errcode, "error": "no"}),
            })
        };
        let blocked = refused(403, "M_INVITE_BLOCKED");
        assert_eq!(blocked.errcode, Some(ErrorCode::InviteBlocked));
        assert_eq!(blocked.kind, ErrorKind::Forbidden);
        assert_eq!(blocked.message, "no");
        let bad = refused(400, "M_BAD_JSON");
        assert_eq!(bad.errcode, Some(ErrorCode::BadJson));
        // Their token errors are not about the client's token; unknown codes are unknown.
        let theirs = refused(401, "M_UNKNOWN_TOKEN");
        assert_eq!(theirs.errcode, Some(ErrorCode::Unknown));
        assert_eq!(theirs.kind, ErrorKind::RemoteFailed);
        assert_eq!(
            refused(403, "M_USER_DEACTIVATED").errcode,
            Some(ErrorCode::Unknown)
        );
        assert_eq!(refused(400, "M_MADE_UP").errcode, Some(ErrorCode::Unknown));
    }

    #[test]
    fn a_template_of_another_membership_is_malformed() {
        let template = |membership: &str| {
            json!({"type": "m.room.member", "sender": "@a:x", "state_key": "@a:x",
                   "room_id": "!r:x", "content": {"membership": membership}})
            .as_object()
            .cloned()
            .unwrap()
        };
        let ours = ("!r:x", "@a:x");
        assert!(is_template_for(&template("join"), ours, "join"));
        assert!(!is_template_for(&template("leave"), ours, "join"));
        assert!(!is_template_for(&template("join"), ours, "knock"));
        assert!(!is_template_for(
            &template("join"),
            ("!r:x", "@b:x"),
            "join"
        ));
        let mut no_content = template("join");
        no_content.remove("content");
        assert!(!is_template_for(&no_content, ours, "join"));
    }
}

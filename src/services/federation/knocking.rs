//! Knocking on a room none of our users is in.
//!
//! Spec: server-server API, "Knocking": `make_knock` (with the room versions we support)
//! then `PUT /v1/send_knock` at a server in the room; its answer's `knock_room_state` is
//! what the user sees of the room while they wait. Servers are tried in order until one
//! takes the knock; the last refusal is the answer.

use serde_json::{Map, Value};

use super::source::FromOrigin;
use super::Federation;
use crate::core::{ServerName, UserId};
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::rooms::Rooms;

impl Federation {
    /// `user` knocks on `room_id` through the first of `servers` that takes it, with
    /// `content` (display name, avatar, reason) in the knock.
    pub async fn knock_remote(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        servers: &[String],
        content: Map<String, Value>,
    ) -> ServiceResult<()> {
        let own = self.client.server_name().as_str().to_owned();
        let mut last = ServiceError::not_found("No server in the room is known to knock through");
        let mut tried: Vec<&String> = Vec::new();
        for server in servers {
            if *server == own || tried.contains(&server) {
                continue;
            }
            tried.push(server);
            let Ok(destination) = ServerName::parse(server) else {
                continue;
            };
            let attempt = async {
                let member = self
                    .member_from_template(&destination, (room_id, user), "knock", content.clone())
                    .await?;
                let answer = self
                    .send_member(&destination, room_id, "knock", &member)
                    .await?;
                Ok::<_, ServiceError>((member, answer))
            };
            match attempt.await {
                Ok((member, answer)) => {
                    let source = FromOrigin {
                        federation: self,
                        origin: destination,
                    };
                    let state = rooms
                        .knock_room_state(
                            room_id,
                            member.version,
                            answer.get("knock_room_state"),
                            &source,
                        )
                        .await;
                    return rooms
                        .keep_remote_member(
                            room_id,
                            member.version,
                            (&member.event_id, member.pdu),
                            Some(state),
                        )
                        .await;
                }
                Err(e) => {
                    tracing::info!(room = %room_id, %server, error = %e.message, "knocking through this server failed");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

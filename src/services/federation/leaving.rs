//! Rejecting an invite (or retracting a knock) of a room we are not in.
//!
//! Spec: server-server API, "Leaving Rooms (Rejecting Invites)": `make_leave` then `PUT
//! /v2/send_leave` at a server in the room (the inviter's first). Once one accepts it the
//! leave is kept out of band. When none can be reached or all refuse, the invite is
//! rejected here alone (see the rooms service's `out_of_room`), so that the user is not
//! stuck with it; the inviting side then still shows the invite until it expires there.

use serde_json::Map;

use super::Federation;
use crate::core::{ServerName, UserId};
use crate::services::error::ServiceResult;
use crate::services::rooms::Rooms;

impl Federation {
    /// `user` leaves `room_id`, which they are invited to or knocking on and which none
    /// of our users is in.
    pub async fn leave_remote(
        &self,
        rooms: &Rooms,
        user: &UserId,
        room_id: &str,
        reason: Option<String>,
    ) -> ServiceResult<()> {
        for server in rooms.servers_for_pending(user, room_id)? {
            let Ok(destination) = ServerName::parse(&server) else {
                continue;
            };
            let mut content = Map::new();
            if let Some(reason) = &reason {
                content.insert("reason".into(), reason.clone().into());
            }
            let attempt = async {
                let member = self
                    .member_from_template(&destination, (room_id, user), "leave", content)
                    .await?;
                self.send_member(&destination, room_id, "leave", &member)
                    .await?;
                Ok::<_, crate::services::error::ServiceError>(member)
            };
            match attempt.await {
                Ok(member) => {
                    return rooms
                        .keep_remote_member(
                            room_id,
                            member.version,
                            (&member.event_id, member.pdu),
                            None,
                        )
                        .await;
                }
                Err(e) => {
                    tracing::info!(room = %room_id, %server, error = %e.message, "leaving through this server failed");
                }
            }
        }
        tracing::warn!(room = %room_id, %user, "no server of the room took the leave: rejected here alone");
        rooms.leave_alone(user, room_id, reason).await
    }
}

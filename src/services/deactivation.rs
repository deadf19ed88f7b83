//! A deactivated account leaves its rooms.
//!
//! Spec: `POST /account/deactivate` says no more than "removing all ability for the user
//! to login again"; Synapse also makes the user leave every room they are joined to, and
//! rejects their pending invites and withdraws their knocks, so that member lists do not
//! keep a user who can never come back. We do the same, once the account is deactivated
//! (the leaves carry no display name: the profile is cleared first), in a task of its
//! own: a remote invite is rejected through its room's servers, which may be slow or
//! gone, and a client that gives up waiting must not cut the leaving short. A start-up
//! finishes what a stop interrupted (the deactivated accounts' remaining memberships).

use std::sync::Arc;

use super::Services;
use crate::core::UserId;

impl Services {
    /// Starts [`Services::leave_rooms_of_deactivated`] for `user` in a task of its own.
    pub fn start_leaving_rooms_of_deactivated(self: &Arc<Self>, user: UserId) {
        let services = Arc::clone(self);
        tokio::spawn(async move { services.leave_rooms_of_deactivated(&user).await });
    }

    /// At start-up: the deactivated accounts leave what they are still in.
    pub async fn finish_leaving_rooms_of_deactivated(&self) {
        match self.accounts.deactivated_users() {
            Ok(users) => {
                for user in users {
                    self.leave_rooms_of_deactivated(&user).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "the deactivated accounts could not be read")
            }
        }
    }

    /// Makes `user` leave every room they are joined to, reject their invites and
    /// withdraw their knocks (through the room's servers for a room we are not in). A
    /// room that refuses is logged and skipped.
    pub async fn leave_rooms_of_deactivated(&self, user: &UserId) {
        let memberships = match self.rooms.store().memberships_of(user.as_str()) {
            Ok(memberships) => memberships,
            Err(e) => {
                tracing::warn!(%user, error = %e.message, "the deactivated user's rooms could not be read");
                return;
            }
        };
        for (room_id, record) in memberships {
            if !matches!(record.membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let left = match self.rooms.pending_out_of_room(user, &room_id) {
                Ok(true) => {
                    self.federation
                        .leave_remote(&self.rooms, user, &room_id, None)
                        .await
                }
                Ok(false) => self.rooms.leave(user, &room_id, None).await,
                Err(e) => Err(e),
            };
            if let Err(e) = left {
                tracing::info!(%user, room = %room_id, error = %e.message, "the deactivated user did not leave the room");
            }
        }
    }
}

//! Who shares rooms with a user on other servers: the servers that must hear of the user's
//! device-list and presence changes (spec: server-server API, "Device Management",
//! "Presence"). The accounts and presence services ask through [`RoomMates`], so they
//! need not hold the rooms service.

use super::Rooms;
use crate::services::error::ServiceResult;

/// Who shares rooms with a user on other servers (the rooms service answers).
pub trait RoomMates: Send + Sync {
    /// The other servers with a member joined to a room `user_id` is joined to.
    fn remote_servers_sharing(&self, user_id: &str) -> ServiceResult<Vec<String>>;

    /// The other servers with a member joined to `room_id` and to no other room
    /// `user_id` is joined to: those that start sharing a room with the user when the
    /// user joins `room_id`.
    fn servers_new_to(&self, user_id: &str, room_id: &str) -> ServiceResult<Vec<String>>;
}

impl RoomMates for Rooms {
    fn remote_servers_sharing(&self, user_id: &str) -> ServiceResult<Vec<String>> {
        let mut servers: Vec<String> = Vec::new();
        for room_id in self.joined_rooms(user_id)? {
            servers.extend(self.remote_servers(&room_id)?.iter().cloned());
        }
        servers.sort_unstable();
        servers.dedup();
        Ok(servers)
    }

    fn servers_new_to(&self, user_id: &str, room_id: &str) -> ServiceResult<Vec<String>> {
        let mut new: Vec<String> = self.remote_servers(room_id)?.to_vec();
        for other in self.joined_rooms(user_id)? {
            if new.is_empty() {
                break;
            }
            if other != room_id {
                let servers = self.remote_servers(&other)?;
                new.retain(|s| !servers.contains(s));
            }
        }
        Ok(new)
    }
}

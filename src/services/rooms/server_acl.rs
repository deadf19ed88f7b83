//! Whether a server may take part in a room, by its `m.room.server_acl` (spec:
//! server-server API, "Server Access Control Lists (ACLs)"; the rules are in
//! [`crate::core::server_acl`]). The compiled ACL is kept per room with the state
//! snapshot it was read at, and compiled again only when the ACL event itself changed.

use std::sync::Arc;

use super::event_store::Room;
use super::Rooms;
use crate::core::server_acl::ServerAcl;
use crate::services::error::{ServiceError, ServiceResult};

/// Rooms whose ACL is remembered at most (the map is emptied past this).
const ACLS_CACHED: usize = 10_000;

/// A room's ACL as of a state snapshot: the snapshot, the ACL event's short id (0: none)
/// and the compiled ACL.
pub(super) type CachedAcl = (u64, u64, Option<Arc<ServerAcl>>);

impl Rooms {
    /// Whether `server` may take part in `room_id` (a room we do not know has no ACL).
    pub fn server_allowed(&self, room_id: &str, server: &str) -> ServiceResult<bool> {
        Ok(self
            .server_acl(room_id)?
            .is_none_or(|acl| acl.allows(server)))
    }

    /// 403 `M_FORBIDDEN` when the room's ACL denies `server`.
    pub fn check_server_acl(&self, room_id: &str, server: &str) -> ServiceResult<()> {
        if self.server_allowed(room_id, server)? {
            Ok(())
        } else {
            Err(ServiceError::forbidden(format!(
                "The room's server ACL denies {server}"
            )))
        }
    }

    /// [`Rooms::server_allowed`] for a room the caller has read already (the receive path,
    /// once per PDU: no second read of the room).
    pub(super) fn server_allowed_in(&self, room: &Room, server: &str) -> ServiceResult<bool> {
        Ok(self
            .server_acl_at(&room.record.room_id, room.record.state)?
            .is_none_or(|acl| acl.allows(server)))
    }

    fn server_acl(&self, room_id: &str) -> ServiceResult<Option<Arc<ServerAcl>>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(None);
        };
        self.server_acl_at(room_id, room.record.state)
    }

    fn server_acl_at(&self, room_id: &str, snapshot: u64) -> ServiceResult<Option<Arc<ServerAcl>>> {
        let cached = self.cached_acls().get(room_id).cloned();
        if let Some((at, _, acl)) = &cached {
            if *at == snapshot {
                return Ok(acl.clone());
            }
        }
        let event = self.store.state_event(snapshot, "m.room.server_acl", "")?;
        let short = event.as_ref().map_or(0, |e| e.short);
        let acl = match (cached, event) {
            (Some((_, was, acl)), _) if was == short => acl,
            (_, Some(event)) => Some(Arc::new(ServerAcl::compile(event.content()))),
            (_, None) => None,
        };
        let mut cache = self.cached_acls();
        if cache.len() >= ACLS_CACHED {
            cache.clear();
        }
        cache.insert(room_id.to_owned(), (snapshot, short, acl.clone()));
        Ok(acl)
    }

    fn cached_acls(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, CachedAcl>> {
        self.server_acls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

//! `RoomEventFilter`: which events a client wants.
//!
//! Spec: client-server API, "Filtering" (`RoomEventFilter`): `types`, `not_types` (with `*`
//! wildcards), `senders`, `not_senders`, `contains_url`, `lazy_load_members`,
//! `include_redundant_members`, `limit`. An exclusion wins over an inclusion.

use serde::Deserialize;
use serde_json::Value;

use super::event_store::StoredEvent;
use crate::services::error::{ServiceError, ServiceResult};

/// A parsed `RoomEventFilter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomEventFilter {
    /// Event types to include (`*` matches any run of characters).
    pub types: Option<Vec<String>>,
    /// Event types to exclude.
    pub not_types: Vec<String>,
    /// Senders to include.
    pub senders: Option<Vec<String>>,
    /// Senders to exclude.
    pub not_senders: Vec<String>,
    /// Only events with (true) or without (false) a `url` in their content.
    pub contains_url: Option<bool>,
    /// Send only the member events of the senders of the returned events.
    pub lazy_load_members: bool,
    /// With lazy loading: also member events the client already has.
    pub include_redundant_members: bool,
    /// The most events to return.
    pub limit: Option<u64>,
    /// Rooms to include (in `/sync` filters).
    pub rooms: Option<Vec<String>>,
    /// Rooms to exclude.
    pub not_rooms: Vec<String>,
    /// Whether `/sync` splits notification counts by thread.
    pub unread_thread_notifications: bool,
}

/// Spec: "A '*' can be used as a wildcard to match any sequence of characters."
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl RoomEventFilter {
    /// Parses the `filter` query parameter (a JSON object).
    pub fn parse(text: Option<&str>) -> ServiceResult<Self> {
        match text {
            None | Some("") => Ok(Self::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                ServiceError::invalid_param(format!("filter is not a valid RoomEventFilter: {e}"))
            }),
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        if !self.matches_type_and_sender(event.kind(), event.sender()) {
            return false;
        }
        if let Some(wanted) = self.contains_url {
            let has = event.content().get("url").is_some_and(Value::is_string);
            if has != wanted {
                return false;
            }
        }
        true
    }

    /// Whether a room passes `rooms` and `not_rooms`.
    pub fn matches_room(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
    }

    /// Whether an event of this type from this sender passes (`sender` may be empty for
    /// events without one, such as account data).
    pub fn matches_type_and_sender(&self, kind: &str, sender: &str) -> bool {
        if self.not_types.iter().any(|p| glob_matches(p, kind)) {
            return false;
        }
        if let Some(types) = &self.types {
            if !types.iter().any(|p| glob_matches(p, kind)) {
                return false;
            }
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders {
            if !senders.iter().any(|s| s == sender) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_the_spec_says() {
        assert!(glob_matches("m.room.message", "m.room.message"));
        assert!(glob_matches("m.*", "m.room.message"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("m.*.message", "m.room.message"));
        assert!(glob_matches("*.message", "m.room.message"));
        assert!(!glob_matches("m.room", "m.room.message"));
        assert!(!glob_matches("*.member", "m.room.message"));
        assert!(!glob_matches("m.*.x", "m.x"));
    }
}

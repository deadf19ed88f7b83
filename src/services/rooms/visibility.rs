//! Who may read what: history visibility.
//!
//! Spec: client-server API, "Room History Visibility", "Server behaviour": the rules are
//! applied with the state of the room at each event (the state before it; for
//! `m.room.history_visibility` events and the user's own member events, before or after):
//!
//! 1. `world_readable`: allow.
//! 2. The user's membership was `join`: allow.
//! 3. `shared` and the user joined at any point after the event: allow.
//! 4. `invited` and the membership was `invite`: allow.
//! 5. Otherwise deny.
//!
//! A missing or unknown value counts as `shared`.

use std::collections::HashMap;

use serde_json::Value;

use super::event_store::{EventStore, Room, StoredEvent};
use super::records::MembershipRecord;
use super::state_store::ShortStateHash;
use crate::error::MatrixResult;

/// The history visibility and the viewer's membership in one snapshot.
#[derive(Debug, Clone)]
struct SnapshotView {
    visibility: String,
    membership: Option<String>,
}

/// Visibility decisions for one viewer in one room, caching per state snapshot (a run of
/// messages shares one snapshot, so a page of events costs a few state reads).
pub struct VisibilityCheck<'a> {
    store: &'a EventStore,
    user_id: &'a str,
    last_join_pos: u64,
    views: HashMap<ShortStateHash, SnapshotView>,
}

fn content_str<'e>(event: &'e StoredEvent, key: &str) -> Option<&'e str> {
    event.content().get(key).and_then(Value::as_str)
}

impl<'a> VisibilityCheck<'a> {
    /// A check for `user_id`, whose membership record in the room is `record`.
    pub fn new(store: &'a EventStore, user_id: &'a str, record: Option<&MembershipRecord>) -> Self {
        Self {
            store,
            user_id,
            last_join_pos: record.map_or(0, |r| r.last_join_pos),
            views: HashMap::new(),
        }
    }

    fn view(&mut self, snapshot: ShortStateHash) -> MatrixResult<SnapshotView> {
        if let Some(view) = self.views.get(&snapshot) {
            return Ok(view.clone());
        }
        let view = if snapshot == 0 {
            SnapshotView {
                visibility: "shared".into(),
                membership: None,
            }
        } else {
            let visibility = self
                .store
                .state_event(snapshot, "m.room.history_visibility", "")?
                .and_then(|e| content_str(&e, "history_visibility").map(str::to_owned))
                .filter(|v| {
                    matches!(
                        v.as_str(),
                        "world_readable" | "shared" | "invited" | "joined"
                    )
                })
                .unwrap_or_else(|| "shared".into());
            let membership = self
                .store
                .state_event(snapshot, "m.room.member", self.user_id)?
                .and_then(|e| content_str(&e, "membership").map(str::to_owned));
            SnapshotView {
                visibility,
                membership,
            }
        };
        self.views.insert(snapshot, view.clone());
        Ok(view)
    }

    fn allowed_at(&mut self, snapshot: ShortStateHash, pos: u64) -> MatrixResult<bool> {
        let view = self.view(snapshot)?;
        Ok(match view.visibility.as_str() {
            "world_readable" => true,
            _ if view.membership.as_deref() == Some("join") => true,
            "shared" => self.last_join_pos > pos,
            "invited" => view.membership.as_deref() == Some("invite"),
            _ => false,
        })
    }

    /// Whether the viewer may see `event`.
    pub fn can_see(&mut self, event: &StoredEvent) -> MatrixResult<bool> {
        if self.allowed_at(event.meta.state_before, event.meta.pos)? {
            return Ok(true);
        }
        let before_or_after = event.kind() == "m.room.history_visibility"
            || (event.kind() == "m.room.member" && event.state_key() == Some(self.user_id));
        if before_or_after {
            return self.allowed_at(event.meta.state_after, event.meta.pos);
        }
        Ok(false)
    }

    /// Whether the room's current history visibility is `world_readable`.
    pub fn world_readable(store: &EventStore, room: &Room) -> MatrixResult<bool> {
        Ok(store
            .state_event(room.record.state, "m.room.history_visibility", "")?
            .is_some_and(|e| content_str(&e, "history_visibility") == Some("world_readable")))
    }
}

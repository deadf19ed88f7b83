//! Which events another server may read (`/event`, and later `/state`, `/backfill`,
//! `/get_missing_events`).
//!
//! Spec: the client-server API's "Room History Visibility" applied to a server as the sum
//! of its users, with the state before the event, as Synapse does:
//! 1. `world_readable` or `shared` (or a missing/unknown value): any server with a member
//!    in the room, then or now, may read it;
//! 2. `invited`: a server one of whose users was joined or invited then;
//! 3. `joined`: a server one of whose users was joined then.
//!
//! A server that never had a member in the room reads nothing but `world_readable`
//! history.

use serde_json::Value;

use super::event_store::EventStore;
use super::state_store::ShortStateHash;
use crate::services::error::ServiceResult;

/// The memberships `server`'s users have in `snapshot`. Only their member events are
/// read: the snapshot's keys are resolved in one batched read and filtered by server, so
/// a room of many members costs no read of every member event (any server may ask).
fn memberships_of(
    store: &EventStore,
    snapshot: ShortStateHash,
    server: &str,
) -> ServiceResult<Vec<String>> {
    let suffix = format!(":{server}");
    let map = store.state.load(snapshot)?;
    let keys: Vec<_> = map.keys().copied().collect();
    let names = store.state.state_keys_of(&keys)?;
    let mut theirs: Vec<_> = keys
        .iter()
        .zip(&names)
        .filter(|(_, (kind, state_key))| kind == "m.room.member" && state_key.ends_with(&suffix))
        .filter_map(|(key, _)| map.get(key).copied())
        .collect();
    theirs.sort_unstable();
    Ok(store
        .events(&theirs)?
        .iter()
        .filter_map(|e| {
            e.content()
                .get("membership")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect())
}

/// Whether a server is a member of the room now.
#[derive(Debug, Clone, Copy)]
pub enum Member {
    /// Counted as one whatever the state says (a reset grant, see
    /// [`reset_out`](super::reset_out)).
    Yes,
    /// As the room's current state, this snapshot, says.
    In(ShortStateHash),
}

/// Whether `server` may read an event whose state before it is `before`, in a room of
/// which it is a member now or not (`now`).
pub fn server_may_see(
    store: &EventStore,
    server: &str,
    before: ShortStateHash,
    now: Member,
) -> ServiceResult<bool> {
    let visibility = store
        .state_event(before, "m.room.history_visibility", "")?
        .and_then(|e| {
            e.content()
                .get("history_visibility")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    if visibility.as_deref() == Some("world_readable") {
        return Ok(true);
    }
    let then = memberships_of(store, before, server)?;
    let joined_then = then.iter().any(|m| m == "join");
    match visibility.as_deref() {
        Some("joined") => Ok(joined_then),
        Some("invited") => Ok(joined_then || then.iter().any(|m| m == "invite")),
        _ => {
            if joined_then {
                return Ok(true);
            }
            match now {
                Member::Yes => Ok(true),
                Member::In(current) => Ok(memberships_of(store, current, server)?
                    .iter()
                    .any(|m| m == "join")),
            }
        }
    }
}

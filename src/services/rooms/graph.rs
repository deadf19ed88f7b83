//! The event graph: every event's `prev_events` and `auth_events` edges, its depth and
//! its status, and the room's forward extremities.
//!
//! Spec: server-server API, "PDUs" (`prev_events`, `auth_events`, `depth`) and "Rejection"
//! / "Soft failure". An event is *accepted* (in the timeline and, if it is a state event,
//! in state), an *outlier* (held for its own sake, such as the auth chain of a join, with
//! no state or timeline place), *soft-failed* (stored with its state, but neither an
//! extremity nor shown to clients) or *rejected* (kept so that it is not fetched again,
//! never in state, timeline or extremities). Local events are always accepted; the other
//! statuses come with events from other servers.
//!
//! Owns the tables `shorteventid_graph` and `prev_shorteventid_child`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event_store::EventStore;
use super::state_store::ShortEventId;
use crate::error::{MatrixError, MatrixResult};
use crate::services::records::{decode, encode};
use crate::storage::{keys, Batch, Table};

/// Prev events a local event names at most (the deepest extremities first), as Synapse
/// does; the spec allows 20.
pub const LOCAL_PREV_EVENTS: usize = 10;

/// Spec (room versions 6 and later): depth stays below the largest canonical integer; a
/// room already there keeps it.
pub const MAX_DEPTH: u64 = (1 << 53) - 1;

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventStatus {
    /// In the timeline and, for a state event, in state.
    Accepted,
    /// Held without a place in state or the timeline.
    Outlier,
    /// Passed the checks against its auth events and the state before it but not against
    /// the room's current state: stored, never an extremity, not served to clients.
    SoftFailed,
    /// Failed the checks against its auth events or the state before it.
    Rejected {
        /// The rule that refused it.
        reason: String,
    },
}

/// An event's place in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphRecord {
    /// The PDU's `depth`.
    pub depth: u64,
    /// Short ids of its `prev_events` (those this server knows).
    pub prev: Vec<ShortEventId>,
    /// Short ids of its `auth_events` (those this server knows).
    pub auth: Vec<ShortEventId>,
    /// Accepted, outlier, soft-failed or rejected.
    #[serde(flatten)]
    pub status: EventStatus,
}

/// The forward extremities after `event_id` joins the graph (spec: server-server API,
/// "Forward extremities" in the PDU section, as a set): its `prev_events` stop being
/// extremities, and it becomes one unless an event already names it as a prev event (it
/// arrived after its successor).
pub fn next_extremities(
    current: &[String],
    prev_events: &[String],
    event_id: &str,
    has_children: bool,
) -> Vec<String> {
    let mut next: Vec<String> = current
        .iter()
        .filter(|e| !prev_events.contains(e) && e.as_str() != event_id)
        .cloned()
        .collect();
    if !has_children {
        next.push(event_id.to_owned());
    }
    next
}

/// The ids a PDU lists under `key` (`prev_events` or `auth_events`).
pub fn event_ids<'p>(pdu: &'p Value, key: &str) -> impl Iterator<Item = &'p str> {
    pdu.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn child_key(prev: ShortEventId, child: ShortEventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&prev.to_be_bytes());
    key.extend_from_slice(&child.to_be_bytes());
    key
}

/// Writes the graph record of event `short` (its PDU `pdu`) and its child edges into
/// `batch`; answers the record.
pub fn write(
    store: &EventStore,
    batch: &mut Batch<'_>,
    short: ShortEventId,
    pdu: &Value,
    status: EventStatus,
) -> MatrixResult<GraphRecord> {
    let shorts = |key: &str| -> MatrixResult<Vec<ShortEventId>> {
        let mut out = Vec::new();
        for id in event_ids(pdu, key) {
            if let Some(short) = store.state.find_event(id)? {
                out.push(short);
            }
        }
        Ok(out)
    };
    let record = GraphRecord {
        depth: pdu.get("depth").and_then(Value::as_u64).unwrap_or(0),
        prev: shorts("prev_events")?,
        auth: shorts("auth_events")?,
        status,
    };
    for prev in &record.prev {
        batch.put(Table::PrevShorteventidChild, child_key(*prev, short), b"");
    }
    batch.put(
        Table::ShorteventidGraph,
        short.to_be_bytes(),
        encode(&record),
    );
    Ok(record)
}

/// The graph record of an event (`None` for events stored before the graph was kept).
pub fn record(store: &EventStore, short: ShortEventId) -> MatrixResult<Option<GraphRecord>> {
    store
        .db
        .get(Table::ShorteventidGraph, short.to_be_bytes())?
        .map(|bytes| decode(Table::ShorteventidGraph, &bytes))
        .transpose()
}

/// The events that name `short` among their `prev_events`.
pub fn children(store: &EventStore, short: ShortEventId) -> MatrixResult<Vec<ShortEventId>> {
    let prefix = short.to_be_bytes();
    let mut out = Vec::new();
    for entry in store.db.scan_prefix(Table::PrevShorteventidChild, &prefix) {
        let (key, _) = entry?;
        let child = key
            .get(8..16)
            .and_then(keys::read_u64)
            .ok_or_else(|| MatrixError::internal("corrupt record in prev_shorteventid_child"))?;
        out.push(child);
    }
    Ok(out)
}

/// The prev events and depth of a new local event: the deepest [`LOCAL_PREV_EVENTS`]
/// extremities, and one more than the deepest of them (at most [`MAX_DEPTH`]).
/// `room_depth` stands in for extremities stored before the graph was kept.
pub fn local_prev_events(
    store: &EventStore,
    extremities: &[String],
    room_depth: u64,
) -> MatrixResult<(Vec<String>, u64)> {
    let mut known: Vec<(u64, &String)> = Vec::with_capacity(extremities.len());
    for id in extremities {
        let depth = match store.state.find_event(id)? {
            Some(short) => record(store, short)?.map_or(room_depth, |r| r.depth),
            None => room_depth,
        };
        known.push((depth, id));
    }
    if known.len() > LOCAL_PREV_EVENTS {
        known.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        known.truncate(LOCAL_PREV_EVENTS);
    }
    let depth = known.iter().map(|(d, _)| *d).max().unwrap_or(0);
    let prev = known.into_iter().map(|(_, id)| id.clone()).collect();
    Ok((prev, depth.saturating_add(1).min(MAX_DEPTH)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_event_replaces_the_extremities_it_names() {
        assert_eq!(
            next_extremities(&ids(&["$a"]), &ids(&["$a"]), "$b", false),
            ids(&["$b"])
        );
        // A merge of two branches.
        assert_eq!(
            next_extremities(&ids(&["$a", "$b"]), &ids(&["$a", "$b"]), "$c", false),
            ids(&["$c"])
        );
    }

    #[test]
    fn an_event_on_an_old_point_forks_the_graph() {
        assert_eq!(
            next_extremities(&ids(&["$b"]), &ids(&["$a"]), "$c", false),
            ids(&["$b", "$c"])
        );
    }

    #[test]
    fn a_late_event_with_a_successor_is_not_an_extremity() {
        // $c (prev $b) came first; $b arrives now, naming $a.
        assert_eq!(
            next_extremities(&ids(&["$a", "$c"]), &ids(&["$a"]), "$b", true),
            ids(&["$c"])
        );
    }

    #[test]
    fn the_record_keeps_its_status_in_storage_form() {
        let record = GraphRecord {
            depth: 4,
            prev: vec![1, 2],
            auth: vec![3],
            status: EventStatus::Rejected {
                reason: "sender not in room".into(),
            },
        };
        let bytes = encode(&record);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"status\":\"rejected\""), "{text}");
        let back: GraphRecord = decode(Table::ShorteventidGraph, &bytes).unwrap();
        assert_eq!(back, record);
    }
}

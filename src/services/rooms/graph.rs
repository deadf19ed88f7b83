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
//! Owns the tables `shorteventid_graph`, `prev_shorteventid_child` and
//! `eventid_pendingchild`.

use serde::{Deserialize, Serialize};

use super::event_store::EventStore;
use super::state_store::{ShortEventId, ShortStateKey};
use crate::core::pdu::MAX_DEPTH;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::{decode, encode};
use crate::storage::{keys, Batch, Table};

/// Prev events a local event names at most (the deepest extremities first), as Synapse
/// does; the spec allows 20.
pub const LOCAL_PREV_EVENTS: usize = 10;

/// Forward extremities a room keeps at most. Each new event resolves the states of all of
/// them into the room's current state, so a member who forks the graph on purpose (one
/// branch per event) could otherwise make every later event cost more. At the cap a new
/// fork (an event that replaces no extremity) does not become one; nothing already an
/// extremity is dropped, so forks (whose depths their senders choose) cannot push the
/// room's state back to an old point. Well above what honest servers make: a local event
/// merges up to [`LOCAL_PREV_EVENTS`] at a time.
pub const MAX_EXTREMITIES: usize = 50;

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
    /// Kept for our user's sake as another server sent it, with no check against the
    /// room (an invite to a room we are not in; our leave or knock there): unknown to the
    /// room's checks until it comes again with the room, and never served.
    OutOfBand,
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

/// Writes the graph record of event `short` and its child edges into `batch`, and for a
/// state event (whose short state key is `state_key`) its place in the auth index.
pub fn write(
    batch: &mut Batch<'_>,
    short: ShortEventId,
    record: &GraphRecord,
    state_key: Option<ShortStateKey>,
) {
    super::auth_index::note_children(batch, short, &record.auth, state_key);
    for prev in &record.prev {
        batch.put(
            Table::PrevShorteventidChild,
            keys::u64_pair(*prev, short),
            b"",
        );
    }
    batch.put(
        Table::ShorteventidGraph,
        short.to_be_bytes(),
        encode(record),
    );
}

/// The graph record of an event (`None` for events stored before the graph was kept).
pub fn record(store: &EventStore, short: ShortEventId) -> ServiceResult<Option<GraphRecord>> {
    store
        .db
        .get(Table::ShorteventidGraph, short.to_be_bytes())?
        .map(|bytes| decode(Table::ShorteventidGraph, &bytes))
        .transpose()
}

/// The graph records of several events, in order, in one read.
pub fn records(
    store: &EventStore,
    shorts: &[ShortEventId],
) -> ServiceResult<Vec<Option<GraphRecord>>> {
    store
        .db
        .multi_get(
            Table::ShorteventidGraph,
            shorts.iter().map(|s| s.to_be_bytes()),
        )?
        .into_iter()
        .map(|bytes| {
            bytes
                .map(|b| decode(Table::ShorteventidGraph, &b))
                .transpose()
        })
        .collect()
}

/// Whether `short` is held only out of band (see [`EventStatus::OutOfBand`]): the room's
/// checks treat it as unknown. Only a new event is ever stored out of band (the writer's
/// `out_of_band` keeps an event it holds as it is), so an event read as held otherwise is
/// remembered as such.
pub fn is_out_of_band(store: &EventStore, short: ShortEventId) -> ServiceResult<bool> {
    if store.held_in_room.get(&short).is_some() {
        return Ok(false);
    }
    let Some(record) = record(store, short)? else {
        return Ok(false);
    };
    if record.status == EventStatus::OutOfBand {
        return Ok(true);
    }
    store.held_in_room.insert(short, std::sync::Arc::new(()));
    Ok(false)
}

/// The events that name `short` among their `prev_events`.
pub fn children(store: &EventStore, short: ShortEventId) -> ServiceResult<Vec<ShortEventId>> {
    let prefix = short.to_be_bytes();
    let mut out = Vec::new();
    for entry in store.db.scan_prefix(Table::PrevShorteventidChild, &prefix) {
        let (key, _) = entry?;
        let child = key
            .get(8..16)
            .and_then(keys::read_u64)
            .ok_or_else(|| ServiceError::internal("corrupt record in prev_shorteventid_child"))?;
        out.push(child);
    }
    Ok(out)
}

/// Notes, in `batch`, `child` (being accepted) as a successor of those of its `prev_ids`
/// that are not held: when one arrives later, it is not a forward extremity.
pub fn note_unknown_prevs(
    store: &EventStore,
    batch: &mut Batch<'_>,
    prev_ids: &[String],
    child: ShortEventId,
) -> ServiceResult<()> {
    for id in prev_ids {
        if store.state.find_event(id)?.is_none() {
            store.pending_parents.note(id);
            batch.put(
                Table::EventidPendingchild,
                pending_child_key(id, child),
                b"",
            );
        }
    }
    Ok(())
}

fn pending_child_key(event_id: &str, child: ShortEventId) -> Vec<u8> {
    keys::join(&[event_id.as_bytes(), &child.to_be_bytes()])
}

/// Whether an accepted event of room `room` names `short` (`event_id`) among its prev
/// events, stored before or after it: then it is not a forward extremity. (An event id
/// can be named before its event exists, from another room too.) A `fresh` short id,
/// interned in the event's own batch, is named by no edge yet: only the events waiting
/// for its id are looked at. Their entries go in `batch` (the event's own, which places
/// it): once it is held nobody waits for it.
pub fn has_accepted_child(
    store: &EventStore,
    batch: &mut Batch<'_>,
    (short, event_id): (ShortEventId, &str),
    room: u64,
    fresh: bool,
) -> ServiceResult<bool> {
    let mut children = if fresh {
        Vec::new()
    } else {
        children(store, short)?
    };
    if store.pending_parents.may_be_awaited(event_id) {
        let prefix = keys::prefix(event_id.as_bytes());
        for entry in store.db.scan_prefix(Table::EventidPendingchild, &prefix) {
            let (key, _) = entry?;
            batch.delete(Table::EventidPendingchild, &key);
            let child = key
                .get(prefix.len()..)
                .and_then(keys::read_u64)
                .ok_or_else(|| ServiceError::internal("corrupt record in eventid_pendingchild"))?;
            children.push(child);
        }
    }
    for child in children {
        if record(store, child)?.is_some_and(|r| r.status == EventStatus::Accepted)
            && store.meta(child)?.room == room
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Events walked at most by [`prevs_before_failed`].
const FAILED_WALK_LIMIT: usize = 200;

/// The prev events of `failed` (an event's prev events that were soft-failed or
/// rejected here with a state of ours), and on through soft-failed or rejected ones (at
/// most [`FAILED_WALK_LIMIT`] events): an event
/// accepted on top of them makes them no forward extremities either, as Synapse does
/// (`_get_prevs_before_rejected`). Otherwise an event another server accepted and we
/// soft-failed leaves its prev event dangling as an extremity, and the room's state keeps
/// resolving an old state in.
pub fn prevs_before_failed(
    store: &EventStore,
    failed: Vec<ShortEventId>,
) -> ServiceResult<std::collections::HashSet<String>> {
    // Only events judged with a state of ours: a rejected event without one (refused
    // before its state was known, such as one naming another room's event) says
    // nothing about what it was built on, and must not take our extremities away.
    let failed_with_state = |short: ShortEventId| -> ServiceResult<bool> {
        let failed = record(store, short)?.is_some_and(|r| {
            matches!(
                r.status,
                EventStatus::SoftFailed | EventStatus::Rejected { .. }
            )
        });
        Ok(failed && store.meta(short)?.state_before != 0)
    };
    let mut out = std::collections::HashSet::new();
    let mut queue = failed;
    let mut seen = std::collections::HashSet::new();
    while let Some(short) = queue.pop() {
        if !seen.insert(short) || seen.len() > FAILED_WALK_LIMIT {
            continue;
        }
        let Some(node) = record(store, short)? else {
            continue;
        };
        for prev in node.prev {
            out.insert(store.state.event_id_of(prev)?);
            if failed_with_state(prev)? {
                queue.push(prev);
            }
        }
    }
    Ok(out)
}

/// A forward extremity as a room's writer keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extremity {
    /// The event id.
    pub id: String,
    /// Its short id.
    pub short: ShortEventId,
    /// Its depth.
    pub depth: u64,
}

/// The extremities of a room record with their short ids and depths; `room_depth` stands
/// in for events stored before the graph was kept.
pub fn load_extremities(
    store: &EventStore,
    ids: &[String],
    room_depth: u64,
) -> ServiceResult<Vec<Extremity>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(short) = store.state.find_event(id)? else {
            return Err(ServiceError::internal(format!(
                "extremity {id} is not stored"
            )));
        };
        let depth = record(store, short)?.map_or(room_depth, |r| r.depth);
        out.push(Extremity {
            id: id.clone(),
            short,
            depth,
        });
    }
    Ok(out)
}

/// The forward extremities after `event_id` joined them (`next`), held to
/// [`MAX_EXTREMITIES`]: past it, `event_id` is left out when it made the set grow (a
/// fork); nothing else is dropped.
pub fn cap_extremities(mut next: Vec<String>, before: usize, event_id: &str) -> Vec<String> {
    if next.len() > MAX_EXTREMITIES && next.len() > before {
        next.retain(|e| e != event_id);
    }
    next
}

/// The prev events of a new local event and its depth: the deepest
/// [`LOCAL_PREV_EVENTS`] extremities, and one more than the deepest (at most
/// [`MAX_DEPTH`]).
pub fn local_prev_events(extremities: &[Extremity]) -> (Vec<&Extremity>, u64) {
    let mut chosen: Vec<&Extremity> = extremities.iter().collect();
    if chosen.len() > LOCAL_PREV_EVENTS {
        chosen.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| a.id.cmp(&b.id)));
        chosen.truncate(LOCAL_PREV_EVENTS);
    }
    let depth = chosen.iter().map(|e| e.depth).max().unwrap_or(0);
    (chosen, depth.saturating_add(1).min(MAX_DEPTH))
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
    fn at_the_cap_a_new_fork_is_left_out_and_nothing_else_is_dropped() {
        let full: Vec<String> = (0..MAX_EXTREMITIES).map(|i| format!("$e{i:03}")).collect();
        // A fork: the set would grow past the cap.
        let mut forked = full.clone();
        forked.push("$fork".to_owned());
        assert_eq!(cap_extremities(forked, full.len(), "$fork"), full);
        // An event replacing one of them: the set does not grow; it stays.
        let mut replaced = full[1..].to_vec();
        replaced.push("$next".to_owned());
        assert_eq!(
            cap_extremities(replaced.clone(), full.len(), "$next"),
            replaced
        );
        // Below the cap: as is.
        let few = vec!["$a".to_owned(), "$b".to_owned()];
        assert_eq!(cap_extremities(few.clone(), 1, "$b"), few);
    }

    #[test]
    fn a_local_event_names_the_deepest_ten_extremities_and_goes_one_deeper() {
        let extremities: Vec<Extremity> = (0..12)
            .map(|i| Extremity {
                id: format!("$e{i:02}"),
                short: i,
                depth: 100 + i,
            })
            .collect();
        let (prev, depth) = local_prev_events(&extremities);
        assert_eq!(prev.len(), LOCAL_PREV_EVENTS);
        assert!(
            prev.iter().all(|e| e.depth >= 102),
            "the two shallowest are left"
        );
        assert_eq!(depth, 112);
        let (prev, depth) = local_prev_events(&extremities[..1]);
        assert_eq!((prev.len(), depth), (1, 101));
        let deepest = Extremity {
            id: "$x".into(),
            short: 99,
            depth: MAX_DEPTH,
        };
        assert_eq!(local_prev_events(&[deepest]).1, MAX_DEPTH);
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

//! A room's past fetched from other servers (backfill): where it is missing, and taking
//! in what another server's `/backfill` answers.
//!
//! Spec: server-server API, "Backfilling and retrieving missing events": the events a
//! server asks for are the prev events of the oldest events it holds (`v`), and the
//! answer goes through the checks on receipt of a PDU like any other. Each event is
//! placed before every event the room held (at a history position, see
//! [`crate::services::stream`]), oldest first, so `/messages` pages on into it. The
//! state before an event whose prev events we still lack is asked for with
//! `/state_ids` (its state events fetched when we lack them), as Synapse does.
//! The requests themselves are the federation service's.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::graph::{self, EventStatus};
use super::receive::{room_of, Budget, Kind, MissingSource, PduOutcome, Prepare};
use super::writer::RemoteEvent;
use super::Rooms;
use crate::core::pdu;
use crate::services::error::ServiceResult;

/// Oldest timeline events whose prev events are looked at for the backfill points.
const OLDEST_LOOKED_AT: usize = 20;
/// Events a backfill answer may hold at most (we ask for no more than 100).
pub const MAX_BACKFILL_EVENTS: usize = 100;
/// Events fetched for one backfill's checks (auth events, state events) at most.
const FETCH_BUDGET: usize = 500;
/// `/state_ids` requests one backfill makes at most (one per event whose prev events
/// are missing; history in one line needs one).
const STATE_REQUESTS: usize = 3;

impl Rooms {
    /// The events a backfill of `room_id` starts from: the prev events of the room's
    /// oldest events that it does not hold with a place. Empty when its history is
    /// whole (it starts at its create event) or the room is unknown.
    pub fn backfill_points(&self, room_id: &str) -> ServiceResult<Vec<String>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(Vec::new());
        };
        let oldest = self
            .store
            .timeline(room.short, 0, u64::MAX, false, OLDEST_LOOKED_AT)?;
        if oldest
            .first()
            .is_some_and(|(first, _)| *first <= self.store.stream.history_floor())
        {
            // A room of a database from before the history space: no place for history.
            return Ok(Vec::new());
        }
        let shorts: Vec<u64> = oldest.iter().map(|(_, s)| *s).collect();
        let mut points = Vec::new();
        for event in self.store.events(&shorts)? {
            for id in pdu::event_ids(event.pdu(), "prev_events") {
                if !self.has_place(id)? && !points.iter().any(|p| p == id) {
                    points.push(id.to_owned());
                }
            }
        }
        Ok(points)
    }

    /// Whether the event is held in the timeline of `room_id` (with a place, not
    /// rejected nor soft-failed).
    pub fn holds_in_timeline(&self, room_id: &str, event_id: &str) -> ServiceResult<bool> {
        let Some(short) = self.store.state.find_event(event_id)? else {
            return Ok(false);
        };
        let Some(room) = self.store.room(room_id)? else {
            return Ok(false);
        };
        if self.store.event(short)?.meta.room != room.short {
            return Ok(false);
        }
        Ok(matches!(
            graph::record(&self.store, short)?.map(|r| r.status),
            Some(status) if !matches!(
                status,
                EventStatus::Outlier
                    | EventStatus::OutOfBand
                    | EventStatus::SoftFailed
                    | EventStatus::Rejected { .. }
            )
        ))
    }

    /// Whether the event is held with a timeline place (or judged, for a rejected one).
    pub(super) fn has_place(&self, event_id: &str) -> ServiceResult<bool> {
        let Some(short) = self.store.state.find_event(event_id)? else {
            return Ok(false);
        };
        Ok(!matches!(
            graph::record(&self.store, short)?.map(|r| r.status),
            None | Some(EventStatus::Outlier | EventStatus::OutOfBand)
        ))
    }

    /// Takes in `pdus`, `origin`'s answer to our backfill of `room_id` from `points`
    /// (the `v` we asked with): each event checked and placed before the room's oldest,
    /// oldest first, fetching through `source` what the checks lack. Only the points and
    /// what they reach through the answer's `prev_events` are history: anything else in
    /// the answer is left out. Answers how many events got a place.
    pub async fn receive_history(
        &self,
        origin: &str,
        (room_id, points): (&str, &[String]),
        pdus: Vec<Value>,
        source: &dyn MissingSource,
    ) -> ServiceResult<usize> {
        let mut budget = Budget(FETCH_BUDGET, STATE_REQUESTS);
        let none = HashSet::new();
        let mut prepared = Vec::new();
        for pdu in pdus.into_iter().take(MAX_BACKFILL_EVENTS) {
            if room_of(&pdu).as_deref() != Some(room_id) {
                tracing::info!(%origin, room = %room_id, "a backfill answer holds an event of another room");
                continue;
            }
            match self
                .prepare(origin, pdu, Kind::History, (source, &mut budget), &none)
                .await?
            {
                Prepare::Ready(ready) => prepared.push(ready.event),
                Prepare::Done(id, PduOutcome::AlreadyKnown) => {
                    tracing::trace!(event = ?id, "backfilled event already held")
                }
                Prepare::Done(id, outcome) => {
                    tracing::info!(%origin, event = ?id, ?outcome, "a backfilled event was not taken")
                }
            }
        }
        let events = oldest_first(reachable_from(points, prepared));
        let Some(block) = self.store.stream.reserve_history(events.len() as u64)? else {
            if !events.is_empty() {
                tracing::warn!(room = %room_id, "no history position is left: backfilled events are not placed");
            }
            return Ok(0);
        };
        let mut placed = 0;
        let mut state_requests = STATE_REQUESTS;
        for (mut event, pos) in events.into_iter().zip(block) {
            let mut lacking = false;
            for id in pdu::event_ids(&event.pdu, "prev_events") {
                lacking |= !self.has_place(id)?;
            }
            if lacking {
                if state_requests == 0 {
                    continue;
                }
                state_requests -= 1;
                let state = self
                    .state_before(origin, room_id, &event.event_id, source, &mut budget)
                    .await?;
                let Some(state) = state else {
                    tracing::info!(%origin, event = %event.event_id, "the state before a backfilled event is unknown: not placed");
                    continue;
                };
                event.given_state = Some(state);
            }
            event.history_pos = Some(pos);
            let id = event.event_id.clone();
            match self.writers.receive(room_id, event).await? {
                PduOutcome::Accepted => placed += 1,
                outcome => {
                    tracing::info!(%origin, event = %id, ?outcome, "a backfilled event was not placed")
                }
            }
        }
        Ok(placed)
    }
}

/// The events among `events` that are `points` or reached from them through the
/// `prev_events` of events among them.
fn reachable_from(points: &[String], events: Vec<RemoteEvent>) -> Vec<RemoteEvent> {
    let by_id: HashMap<&str, &RemoteEvent> =
        events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let mut reached: HashSet<String> = HashSet::new();
    let mut todo: Vec<&str> = points.iter().map(String::as_str).collect();
    while let Some(id) = todo.pop() {
        let Some(event) = by_id.get(id) else {
            continue;
        };
        if reached.insert(id.to_owned()) {
            todo.extend(pdu::event_ids(&event.pdu, "prev_events"));
        }
    }
    events
        .into_iter()
        .filter(|e| reached.contains(&e.event_id))
        .collect()
}

/// The events in an order where each comes after those of its prev events that are
/// among them (by depth, then id, among those free to go), whatever depths they claim.
fn oldest_first(events: Vec<RemoteEvent>) -> Vec<RemoteEvent> {
    let index: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id.clone(), i))
        .collect();
    let mut waiting_on = vec![0usize; events.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    for (i, event) in events.iter().enumerate() {
        let mut prevs: Vec<usize> = pdu::event_ids(&event.pdu, "prev_events")
            .filter_map(|id| index.get(id).copied())
            .filter(|&p| p != i)
            .collect();
        prevs.sort_unstable();
        prevs.dedup();
        waiting_on[i] = prevs.len();
        for p in prevs {
            children[p].push(i);
        }
    }
    let key = |e: &RemoteEvent| {
        let depth = e.pdu.get("depth").and_then(Value::as_u64).unwrap_or(0);
        (depth, e.event_id.clone())
    };
    let mut free: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        if waiting_on[i] == 0 {
            free.insert(key(event), i);
        }
    }
    let mut order = Vec::with_capacity(events.len());
    while let Some((_, i)) = free.pop_first() {
        order.push(i);
        for &child in &children[i] {
            waiting_on[child] -= 1;
            if waiting_on[child] == 0 {
                free.insert(key(&events[child]), child);
            }
        }
    }
    // A cycle (impossible with hashed event ids) leaves its events out.
    let mut slots: Vec<Option<RemoteEvent>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str, depth: u64, prevs: &[&str]) -> RemoteEvent {
        RemoteEvent {
            event_id: id.to_owned(),
            pdu: json!({ "depth": depth, "prev_events": prevs }),
            signed_by: Vec::new(),
            outlier: false,
            forward: false,
            given_state: None,
            history_pos: None,
            redacted_by: 0,
            gap_states: Vec::new(),
        }
    }

    #[test]
    fn only_what_the_points_reach_is_history() {
        let events = vec![
            event("$b", 2, &["$a"]),
            event("$a", 1, &[]),
            // Not reached from the point: slipped in by the answering server.
            event("$later", 9, &["$b"]),
            event("$elsewhere", 1, &[]),
        ];
        let mut ids: Vec<String> = reachable_from(&["$b".to_owned()], events)
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["$a", "$b"]);
    }

    #[test]
    fn history_is_ordered_by_its_edges_whatever_depths_it_claims() {
        // c's claimed depth is below its prev event's: the edge wins.
        let events = vec![
            event("$d", 4, &["$b", "$c"]),
            event("$c", 1, &["$a"]),
            event("$b", 3, &["$a"]),
            event("$a", 2, &["$unknown"]),
        ];
        let ids: Vec<String> = oldest_first(events)
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(ids, ["$a", "$c", "$b", "$d"]);
    }
}

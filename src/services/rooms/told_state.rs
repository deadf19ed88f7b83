//! The state of a room at an event as another server tells it (`/state_ids`), for the
//! events whose prev events we cannot place: history fetched by backfill, and live
//! events whose prev events we lack or hold only as outliers (no state of ours).
//!
//! Spec: server-server API, "Retrieving events" (`GET /state_ids/{roomId}`, the state
//! before an event). As Synapse does (`_resolve_state_at_missing_prevs`), a live event
//! takes the state *after* each prev event it lacks from the server that sent it (the
//! state before the prev event, and the prev event itself when it is a state event), and
//! the room's writer resolves those with the states after the prev events it holds: the
//! state of our own side of a fork is resolved with another server's word, not replaced
//! by it.

use super::graph::{self, EventStatus};
use super::receive::{Budget, Kind, MissingSource};
use super::state_store::{ShortStateHash, StateMap};
use super::Rooms;
use crate::services::error::ServiceResult;

/// State events a `/state_ids` answer may name at most (rooms bigger than this are
/// not taken through a gap).
const MAX_STATE_IDS: usize = 200_000;

impl Rooms {
    /// The state before `event_id` as `source` tells it, saved as a snapshot, with the
    /// map. `None` when the source cannot tell or one of its events cannot be had.
    pub(super) async fn state_before(
        &self,
        origin: &str,
        room_id: &str,
        event_id: &str,
        source: &dyn MissingSource,
        budget: &mut Budget,
    ) -> ServiceResult<Option<(ShortStateHash, StateMap)>> {
        let Some(map) = self
            .told_state(origin, room_id, event_id, source, budget)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((self.save_told(room_id, &map)?, map)))
    }

    /// The state after `prev_id`, a prev event we cannot place, as `source` tells it:
    /// the state before it and, unless we rejected it, the event itself when it is a
    /// state event of the room (fetched as an outlier when not held). `None` when the
    /// source cannot tell or the event cannot be had.
    pub(super) async fn state_after_prev(
        &self,
        origin: &str,
        room_id: &str,
        prev_id: &str,
        source: &dyn MissingSource,
        budget: &mut Budget,
    ) -> ServiceResult<Option<ShortStateHash>> {
        let held = |rooms: &Self| -> ServiceResult<Option<(u64, Option<EventStatus>)>> {
            let Some(short) = rooms.store.state.find_event(prev_id)? else {
                return Ok(None);
            };
            let status = graph::record(&rooms.store, short)?.map(|r| r.status);
            Ok((status != Some(EventStatus::OutOfBand)).then_some((short, status)))
        };
        if budget.1 == 0 {
            tracing::info!(%origin, event = %prev_id, "no more state asks for this PDU");
            return Ok(None);
        }
        // The prev event itself first (a prev event that cannot be had costs no state
        // request), even with the budget spent by the gap filling (one per prev event;
        // the caller asks for a few prev events at most).
        if held(self)?.is_none() {
            let wanted = [prev_id.to_owned()];
            let mut spare = Budget(1, 0);
            let allowance = if budget.0 > 0 {
                &mut *budget
            } else {
                &mut spare
            };
            self.fetch_and_receive(origin, room_id, &wanted, Kind::Outlier, source, allowance)
                .await?;
        }
        let Some((short, status)) = held(self)? else {
            return Ok(None);
        };
        let Some(mut map) = self
            .told_state(origin, room_id, prev_id, source, budget)
            .await?
        else {
            return Ok(None);
        };
        // The state after a rejected event is the state before it.
        if !matches!(status, Some(EventStatus::Rejected { .. })) {
            let event = self.store.event(short)?;
            if event.meta.room != self.store.room(room_id)?.map_or(0, |r| r.short) {
                return Ok(None);
            }
            if let Some(state_key) = event.state_key() {
                map.insert(self.store.state.state_key(event.kind(), state_key)?, short);
            }
        }
        Ok(Some(self.save_told(room_id, &map)?))
    }

    /// The state before `event_id` as `source` tells it: its state events, fetched (as
    /// outliers, each checked against its own auth events) when not held. `None` when
    /// the source cannot tell, names too many, or one of them cannot be had, is not a
    /// state event of the room, or was rejected; or when it has no create event.
    async fn told_state(
        &self,
        origin: &str,
        room_id: &str,
        event_id: &str,
        source: &dyn MissingSource,
        budget: &mut Budget,
    ) -> ServiceResult<Option<StateMap>> {
        if budget.1 == 0 {
            tracing::info!(%origin, event = %event_id, "no more state asks for this PDU");
            return Ok(None);
        }
        budget.1 -= 1;
        let Some(mut ids) = source.state_ids(room_id, event_id).await else {
            return Ok(None);
        };
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > MAX_STATE_IDS {
            tracing::info!(%origin, event = %event_id, told = ids.len(), "a state too big to take is refused");
            return Ok(None);
        }
        let mut lacking = Vec::new();
        for id in &ids {
            let held = match self.store.state.find_event(id)? {
                Some(short) => !graph::is_out_of_band(&self.store, short)?,
                None => false,
            };
            if !held {
                lacking.push(id.clone());
            }
        }
        if lacking.len() > budget.0 {
            tracing::info!(%origin, event = %event_id, lacking = lacking.len(), "too many state events to fetch for the state at an event");
            return Ok(None);
        }
        self.fetch_and_receive(origin, room_id, &lacking, Kind::Outlier, source, budget)
            .await?;
        let room_short = self.store.room(room_id)?.map_or(0, |r| r.short);
        let mut map = StateMap::with_capacity_and_hasher(ids.len(), Default::default());
        for id in &ids {
            let Some(short) = self.store.state.find_event(id)? else {
                return Ok(None);
            };
            if !matches!(
                graph::record(&self.store, short)?.map(|r| r.status),
                Some(EventStatus::Accepted | EventStatus::Outlier | EventStatus::SoftFailed)
            ) {
                return Ok(None);
            }
            let event = self.store.event(short)?;
            let Some(state_key) = event.state_key() else {
                return Ok(None);
            };
            if event.meta.room != room_short {
                return Ok(None);
            }
            let key = self.store.state.state_key(event.kind(), state_key)?;
            if map.insert(key, short).is_some_and(|other| other != short) {
                tracing::info!(%origin, event = %event_id, "the state told at an event names two events for one key");
                return Ok(None);
            }
        }
        let has_create = self
            .store
            .state
            .find_state_key("m.room.create", "")?
            .is_some_and(|key| map.contains_key(&key));
        if !has_create {
            tracing::info!(%origin, event = %event_id, "the state told at an event has no create event");
            return Ok(None);
        }
        Ok(Some(map))
    }

    /// Saves a told state as the changes from the room's current state (most of a state
    /// told for a gap is the room's state already): the same snapshot when nothing
    /// differs.
    fn save_told(&self, room_id: &str, map: &StateMap) -> ServiceResult<ShortStateHash> {
        let current = self.store.room(room_id)?.map_or(0, |r| r.record.state);
        let base = self.store.state.load(current)?;
        if base == *map && current != 0 {
            return Ok(current);
        }
        let mut changes: Vec<_> = map
            .iter()
            .filter(|(key, short)| base.get(key) != Some(short))
            .map(|(key, short)| (*key, Some(*short)))
            .collect();
        changes.extend(
            base.keys()
                .filter(|key| !map.contains_key(key))
                .map(|key| (*key, None)),
        );
        let mut batch = self.store.db.batch();
        let parent = (current != 0).then_some(current);
        let snapshot = self.store.state.save(parent, &changes, &mut batch)?;
        self.store.db.write_relaxed(batch)?;
        Ok(snapshot)
    }
}

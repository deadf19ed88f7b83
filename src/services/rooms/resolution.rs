//! State resolution over stored snapshots: [`crate::core::state_res`] given the room's
//! tables as its event source.
//!
//! Spec: `rooms/v2.md` and `rooms/v12.md`, "State resolution". The snapshots (short ids)
//! become the algorithm's maps of `(type, state_key)` to event id, the result comes back
//! as short ids. Keys every snapshot maps to the same event need no resolution; the
//! algorithm is told so through [`ResolutionEvents::differing_keys`].
//!
//! Not built yet: an auth chain index (chain cover). The auth difference is the
//! algorithm's default, walking the auth chains of every state's events, so its cost
//! follows the size of the room's state rather than the conflict.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::event_store::EventStore;
use super::graph::{self, EventStatus};
use super::state_store::{ShortEventId, ShortStateHash, StateMap};
use crate::core::state_res::{self, ResolutionEvents};
use crate::core::RoomVersion;
use crate::error::{MatrixError, MatrixResult};

/// An event that takes part in a resolution before its batch is written: its short id,
/// id and PDU.
pub type Unwritten<'a> = (ShortEventId, &'a str, &'a Value);

/// The resolved state of stored snapshots (at least two), as short ids.
pub fn resolve_snapshots(
    store: &EventStore,
    version: RoomVersion,
    snapshots: &[ShortStateHash],
) -> MatrixResult<StateMap> {
    let maps: Vec<StateMap> = snapshots
        .iter()
        .map(|s| store.state.load(*s))
        .collect::<MatrixResult<_>>()?;
    resolve_maps(store, version, &maps, None)
}

/// The resolved state of `maps`, as short ids; `unwritten` is an event some map holds
/// whose batch is not written yet.
pub fn resolve_maps(
    store: &EventStore,
    version: RoomVersion,
    maps: &[StateMap],
    unwritten: Option<Unwritten<'_>>,
) -> MatrixResult<StateMap> {
    let mut keys = HashMap::new();
    let mut ids: HashMap<ShortEventId, String> = HashMap::new();
    let mut cache = HashMap::new();
    if let Some((short, id, pdu)) = unwritten {
        ids.insert(short, id.to_owned());
        cache.insert(id.to_owned(), Some((Arc::new(pdu.clone()), false)));
    }
    let mut named = Vec::with_capacity(maps.len());
    let mut differing = HashSet::new();
    for map in maps {
        let mut out = state_res::StateMap::with_capacity(map.len());
        for (key, event) in map {
            if !keys.contains_key(key) {
                keys.insert(*key, store.state.state_key_of(*key)?);
            }
            if !ids.contains_key(event) {
                ids.insert(*event, store.state.event_id_of(*event)?);
            }
            if maps.iter().any(|m| m.get(key) != Some(event)) {
                differing.insert(keys[key].clone());
            }
            out.insert(keys[key].clone(), ids[event].clone());
        }
        named.push(out);
    }
    let events = StoredEvents {
        store,
        differing,
        cache: RefCell::new(cache),
        error: RefCell::default(),
    };
    let refs: Vec<&state_res::StateMap> = named.iter().collect();
    let resolved = state_res::resolve(version, &refs, &events);
    if let Some(e) = events.error.into_inner() {
        return Err(e);
    }
    let by_id: HashMap<&str, ShortEventId> = ids.iter().map(|(s, id)| (id.as_str(), *s)).collect();
    let mut out = StateMap::with_capacity(resolved.len());
    for ((kind, state_key), event_id) in resolved {
        let key = store.state.state_key(&kind, &state_key)?;
        // Mostly an event of one of the states; also one of their auth chains' (the auth
        // difference takes part in the iterative auth checks and can win).
        let event = match by_id.get(event_id.as_str()) {
            Some(short) => *short,
            None => store.state.find_event(&event_id)?.ok_or_else(|| {
                MatrixError::internal("state resolution chose an event that is not stored")
            })?,
        };
        out.insert(key, event);
    }
    Ok(out)
}

/// A stored event's PDU and whether it was rejected.
type Looked = (Arc<Value>, bool);

/// Stored events as the algorithm asks for them, each read once.
struct StoredEvents<'a> {
    store: &'a EventStore,
    differing: HashSet<(String, String)>,
    cache: RefCell<HashMap<String, Option<Looked>>>,
    /// The first storage error met (the trait has no error path; it is reported after).
    error: RefCell<Option<MatrixError>>,
}

impl StoredEvents<'_> {
    fn lookup(&self, event_id: &str) -> Option<Looked> {
        if let Some(hit) = self.cache.borrow().get(event_id) {
            return hit.clone();
        }
        let found = match self.read(event_id) {
            Ok(found) => found,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        };
        self.cache
            .borrow_mut()
            .insert(event_id.to_owned(), found.clone());
        found
    }

    fn read(&self, event_id: &str) -> MatrixResult<Option<Looked>> {
        let Some(event) = self.store.event_by_id(event_id)? else {
            return Ok(None);
        };
        let rejected = matches!(
            graph::record(self.store, event.short)?.map(|r| r.status),
            Some(EventStatus::Rejected { .. })
        );
        Ok(Some((Arc::new(event.pdu().clone()), rejected)))
    }
}

impl ResolutionEvents for StoredEvents<'_> {
    fn event(&self, event_id: &str) -> Option<Arc<Value>> {
        self.lookup(event_id).map(|(pdu, _)| pdu)
    }

    fn is_rejected(&self, event_id: &str) -> bool {
        self.lookup(event_id).is_some_and(|(_, rejected)| rejected)
    }

    /// Stored events had their sender's signature and, for a restricted join, the
    /// authorising server's verified on arrival (local events are ours): a signature of
    /// one of those servers is one that was checked.
    fn signed_by(&self, event: &Value, server: &str) -> bool {
        let server_of = |user: &str| user.split_once(':').map(|(_, s)| s.to_owned());
        let sender = event.get("sender").and_then(Value::as_str).unwrap_or("");
        let authoriser = event
            .get("content")
            .and_then(|c| c.get("join_authorised_via_users_server"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let checked = server_of(sender).as_deref() == Some(server)
            || server_of(authoriser).as_deref() == Some(server);
        checked
            && event
                .get("signatures")
                .and_then(|s| s.get(server))
                .is_some()
    }

    fn differing_keys(
        &self,
        _states: &[&state_res::StateMap],
    ) -> Option<HashSet<(String, String)>> {
        Some(self.differing.clone())
    }
}

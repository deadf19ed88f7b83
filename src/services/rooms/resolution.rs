//! State resolution over stored snapshots: [`crate::core::state_res`] given the room's
//! tables as its event source.
//!
//! Spec: `rooms/v2.md` and `rooms/v12.md`, "State resolution". The states are compared
//! as short ids; only the conflicted keys and their events become the algorithm's
//! strings, the unconflicted state map is read a key at a time as the auth rules ask,
//! and the auth difference comes from [`super::auth_index`]. So what a resolution costs
//! beyond comparing the states' short ids follows the conflict, not the size of the
//! state or the age of the room. The result comes back as short ids.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::auth_index;
use super::event_store::EventStore;
use super::graph::{self, EventStatus};
use super::state_store::{ShortEventId, ShortIdHash, ShortStateHash, ShortStateKey, StateMap};

/// The keys where the states differ.
type KeySet = HashSet<ShortStateKey, ShortIdHash>;
use crate::core::state_res::{self, Conflict, ResolutionEvents};
use crate::core::RoomVersion;
use crate::services::error::{ServiceError, ServiceResult};

/// An event that takes part in a resolution before its batch is written: its short id,
/// id and PDU.
pub type Unwritten<'a> = (ShortEventId, &'a str, &'a Value);

/// The resolved state of stored snapshots (at least two), as short ids.
pub fn resolve_snapshots(
    store: &EventStore,
    version: RoomVersion,
    snapshots: &[ShortStateHash],
) -> ServiceResult<StateMap> {
    let maps: Vec<StateMap> = snapshots
        .iter()
        .map(|s| store.state.load(*s))
        .collect::<ServiceResult<_>>()?;
    let maps: Vec<&StateMap> = maps.iter().collect();
    resolve_maps(store, version, &maps, None)
}

/// The resolved state of `maps`, as short ids; `unwritten` is an event some map holds
/// whose batch is not written yet. The maps are borrowed: the writer hands in the room's
/// current state as it holds it.
pub fn resolve_maps(
    store: &EventStore,
    version: RoomVersion,
    maps: &[&StateMap],
    unwritten: Option<Unwritten<'_>>,
) -> ServiceResult<StateMap> {
    let Some(&first) = maps.first() else {
        return Ok(StateMap::default());
    };
    let conflicted = conflicted_keys(maps);
    if conflicted.is_empty() {
        return Ok(first.clone());
    }
    let names = Names::new(store, unwritten);
    let unwritten_auth = match unwritten {
        Some((short, _, pdu)) => {
            let mut auth = Vec::new();
            for id in crate::core::pdu::event_ids(pdu, "auth_events") {
                if let Some(a) = store.state.find_event(id)? {
                    auth.push(a);
                }
            }
            Some((short, auth))
        }
        None => None,
    };
    let per_state = conflicted_events(maps, &conflicted);
    // State resolution v1 (room version 1) has no use for the auth difference.
    let difference = if version.state_res_v1() {
        Some(HashSet::new())
    } else {
        index_difference(
            store,
            maps,
            (&conflicted, &per_state),
            unwritten_auth.as_ref().map(|(s, a)| (*s, a.as_slice())),
        )?
    };

    // What the algorithm starts from, read in bulk: the conflicted events, the auth
    // difference, and their auth events.
    let mut cache = names.pdus();
    let mut wanted: Vec<ShortEventId> = per_state.iter().flatten().copied().collect();
    wanted.extend(difference.iter().flatten());
    prefetch(store, &names, wanted, &mut cache)?;
    let conflicted: Vec<ShortStateKey> = conflicted.into_iter().collect();
    let named = store.state.state_keys_of(&conflicted)?;
    let mut keys = HashMap::with_capacity(conflicted.len());
    for (key, name) in conflicted.iter().zip(&named) {
        let values = maps
            .iter()
            .map(|m| m.get(key).map(|e| names.event_id(*e)).transpose())
            .collect::<ServiceResult<Vec<_>>>()?;
        keys.insert(name.clone(), values);
    }
    // The short keys of the conflicted keys, which the changes are mostly of.
    let shorts_of: HashMap<(String, String), ShortStateKey> =
        named.into_iter().zip(conflicted.iter().copied()).collect();
    let difference = match difference {
        Some(indexed) => indexed
            .into_iter()
            .map(|e| names.event_id(e))
            .collect::<ServiceResult<HashSet<_>>>()?,
        None => walked_difference(store, maps, &names, &cache)?,
    };

    let changes = {
        let lookups = RefCell::new(HashMap::new());
        let unconflicted = |key: &(String, String)| -> Option<String> {
            if let Some(hit) = lookups.borrow().get(key) {
                return Clone::clone(hit);
            }
            let found = names.unconflicted(first, key);
            lookups.borrow_mut().insert(key.clone(), found.clone());
            found
        };
        let conflict = Conflict {
            keys,
            unconflicted: &unconflicted,
        };
        let events = StoredEvents {
            store,
            cache: RefCell::new(cache),
            error: RefCell::default(),
        };
        let changes = state_res::resolve_conflict(version, &conflict, difference, &events);
        if let Some(e) = events.error.take() {
            return Err(e);
        }
        drop_elsewhere(events.cache.into_inner());
        changes
    };
    if let Some(e) = names.error.into_inner() {
        return Err(e);
    }
    let by_id: HashMap<String, ShortEventId> = names
        .ids
        .into_inner()
        .into_iter()
        .map(|(short, id)| (id, short))
        .collect();
    let mut out = first.clone();
    for (name, event_id) in changes {
        let key = match shorts_of.get(&name) {
            Some(key) => *key,
            None => store.state.state_key(&name.0, &name.1)?,
        };
        let Some(event_id) = event_id else {
            out.remove(&key);
            continue;
        };
        // Mostly an event of one of the states; also one of their auth chains' (the auth
        // difference takes part in the iterative auth checks and can win).
        let event = match by_id.get(&event_id) {
            Some(short) => *short,
            None => store.state.find_event(&event_id)?.ok_or_else(|| {
                ServiceError::internal("state resolution chose an event that is not stored")
            })?,
        };
        out.insert(key, event);
    }
    Ok(out)
}

/// The auth difference of stored snapshots, as event ids, from the auth index (what a
/// resolution of them uses; for tests and diagnostics).
pub fn auth_difference(
    store: &EventStore,
    snapshots: &[ShortStateHash],
) -> ServiceResult<HashSet<String>> {
    let maps: Vec<StateMap> = snapshots
        .iter()
        .map(|s| store.state.load(*s))
        .collect::<ServiceResult<_>>()?;
    let maps: Vec<&StateMap> = maps.iter().collect();
    let conflicted = conflicted_keys(&maps);
    let per_state = conflicted_events(&maps, &conflicted);
    let names = Names::new(store, None);
    match index_difference(store, &maps, (&conflicted, &per_state), None)? {
        Some(indexed) => indexed.into_iter().map(|e| names.event_id(e)).collect(),
        None => walked_difference(store, &maps, &names, &HashMap::new()),
    }
}

/// The auth difference of `maps` by walking the auth chains of all their events (the
/// algorithm's own way, whose cost follows the size of the states): when the index
/// cannot answer.
fn walked_difference(
    store: &EventStore,
    maps: &[&StateMap],
    names: &Names<'_>,
    cache: &HashMap<String, Option<Looked>>,
) -> ServiceResult<HashSet<String>> {
    let mut named = Vec::with_capacity(maps.len());
    for &map in maps {
        let mut out = state_res::StateMap::with_capacity(map.len());
        for (key, event) in map {
            out.insert(store.state.state_key_of(*key)?, names.event_id(*event)?);
        }
        named.push(out);
    }
    let events = StoredEvents {
        store,
        cache: RefCell::new(cache.clone()),
        error: RefCell::default(),
    };
    let refs: Vec<&state_res::StateMap> = named.iter().collect();
    let difference = state_res::auth_difference(&events, &refs);
    match events.error.into_inner() {
        Some(e) => Err(e),
        None => Ok(difference),
    }
}

/// The auth difference of `maps`, whose conflicted keys and events are `conflicted`,
/// from the index (`None`: it cannot answer).
fn index_difference(
    store: &EventStore,
    maps: &[&StateMap],
    (conflicted, per_state): (&KeySet, &[Vec<ShortEventId>]),
    unwritten: Option<(ShortEventId, &[ShortEventId])>,
) -> ServiceResult<Option<HashSet<ShortEventId>>> {
    let Some(&first) = maps.first() else {
        return Ok(Some(HashSet::new()));
    };
    let in_unconflicted = |event: ShortEventId, key: ShortStateKey| {
        !conflicted.contains(&key) && first.get(&key) == Some(&event)
    };
    auth_index::auth_difference(store, per_state, unwritten, &in_unconflicted)
}

/// Each map's events of the conflicted keys.
fn conflicted_events(maps: &[&StateMap], conflicted: &KeySet) -> Vec<Vec<ShortEventId>> {
    maps.iter()
        .map(|m| {
            conflicted
                .iter()
                .filter_map(|k| m.get(k).copied())
                .collect()
        })
        .collect()
}

/// Reads `wanted` and their auth events in bulk into `cache`, and their ids into `names`:
/// the events a resolution asks for first, each read one at a time otherwise.
fn prefetch(
    store: &EventStore,
    names: &Names<'_>,
    mut wanted: Vec<ShortEventId>,
    cache: &mut HashMap<String, Option<Looked>>,
) -> ServiceResult<()> {
    let mut seen: HashSet<ShortEventId> = names.ids.borrow().keys().copied().collect();
    for _ in 0..2 {
        wanted.retain(|s| seen.insert(*s));
        if wanted.is_empty() {
            break;
        }
        let (ids, pdus): (Vec<String>, Vec<Option<Vec<u8>>>) =
            store.ids_and_pdus(&wanted)?.into_iter().unzip();
        let parsed = parse_all(&pdus);
        let records = graph::records(store, &wanted)?;
        let mut next = Vec::new();
        for (((short, id), pdu), record) in wanted.iter().zip(ids).zip(parsed).zip(records) {
            names.ids.borrow_mut().insert(*short, id.clone());
            let Some(pdu) = pdu else {
                continue;
            };
            let rejected = matches!(
                record.as_ref().map(|r| &r.status),
                Some(EventStatus::Rejected { .. })
            );
            if let Some(record) = record {
                next.extend(record.auth);
            }
            cache.insert(id, Some((Arc::new(pdu), rejected)));
        }
        wanted = next;
    }
    Ok(())
}

/// Each stored PDU parsed as [`parse_for_resolution`] does, on two threads when there are
/// enough to pay for starting the second: parsing is most of reading a resolution's
/// events, and the writer waits for it.
fn parse_all(pdus: &[Option<Vec<u8>>]) -> Vec<Option<Value>> {
    /// Fewer PDUs than this per thread are parsed on the caller's thread alone.
    const PER_THREAD: usize = 256;
    let parse = |part: &[Option<Vec<u8>>]| -> Vec<Option<Value>> {
        part.iter()
            .map(|pdu| pdu.as_deref().and_then(parse_for_resolution))
            .collect()
    };
    if pdus.len() < 2 * PER_THREAD {
        return parse(pdus);
    }
    let (mine, theirs) = pdus.split_at(pdus.len() / 2);
    std::thread::scope(|scope| {
        // A thread the system will not start (limits, memory) leaves it all to this one.
        let Ok(other) = std::thread::Builder::new().spawn_scoped(scope, || parse(theirs)) else {
            return parse(pdus);
        };
        let mut out = parse(mine);
        match other.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
}

/// A stored PDU as state resolution reads it: without `hashes` and `unsigned`, and with
/// `signatures` reduced to the signing servers' names (each an empty object), which is
/// all the auth rules ask of them ([`StoredEvents::signed_by`], for restricted joins: the
/// signatures themselves were verified on receipt). Those are a good part of a member
/// event's bytes and allocations.
fn parse_for_resolution(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice::<ForResolution>(bytes)
        .ok()
        .map(|parsed| Value::Object(parsed.0))
}

/// A PDU's top-level object read in one pass the way [`parse_for_resolution`] keeps it.
struct ForResolution(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for ForResolution {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ForResolutionVisitor)
    }
}

struct ForResolutionVisitor;

impl<'de> serde::de::Visitor<'de> for ForResolutionVisitor {
    type Value = ForResolution;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a PDU object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<ForResolution, A::Error> {
        use serde::de::IgnoredAny;
        let mut out = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = match &*name {
                "hashes" | "unsigned" => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                // Kept as it is when it is not an object (it was checked on receipt).
                "signatures" => match map.next_value::<Value>()? {
                    Value::Object(servers) => servers
                        .into_iter()
                        .map(|(server, _)| (server, Value::Object(serde_json::Map::new())))
                        .collect(),
                    other => other,
                },
                _ => map.next_value::<Value>()?,
            };
            out.insert(name, value);
        }
        Ok(ForResolution(out))
    }
}

/// Drops `value` on a thread of the blocking pool rather than the room writer's: a
/// resolution's thousands of parsed events take milliseconds to free.
fn drop_elsewhere<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(value));
        }
        Err(_) => drop(value),
    }
}

/// The keys not every map holds the same event for.
fn conflicted_keys(maps: &[&StateMap]) -> KeySet {
    let mut out = KeySet::default();
    let Some((&first, rest)) = maps.split_first() else {
        return out;
    };
    for (key, event) in first {
        if rest.iter().any(|m| m.get(key) != Some(event)) {
            out.insert(*key);
        }
    }
    for map in rest {
        out.extend(map.keys().filter(|k| !first.contains_key(*k)));
    }
    out
}

/// Short ids turned into the algorithm's strings, each read once.
struct Names<'a> {
    store: &'a EventStore,
    ids: RefCell<HashMap<ShortEventId, String>>,
    unwritten: Option<(String, Arc<Value>)>,
    /// The first storage error met by a lookup that has no error path.
    error: RefCell<Option<ServiceError>>,
}

impl<'a> Names<'a> {
    fn new(store: &'a EventStore, unwritten: Option<Unwritten<'_>>) -> Self {
        let mut ids = HashMap::new();
        if let Some((short, id, _)) = unwritten {
            ids.insert(short, id.to_owned());
        }
        Self {
            store,
            ids: RefCell::new(ids),
            unwritten: unwritten.map(|(_, id, pdu)| (id.to_owned(), Arc::new(pdu.clone()))),
            error: RefCell::default(),
        }
    }

    fn event_id(&self, short: ShortEventId) -> ServiceResult<String> {
        if let Some(id) = self.ids.borrow().get(&short) {
            return Ok(id.clone());
        }
        let id = self.store.state.event_id_of(short)?;
        self.ids.borrow_mut().insert(short, id.clone());
        Ok(id)
    }

    /// The event the unconflicted state map (`first` outside the conflicted keys, which
    /// the algorithm never asks for) holds for `key`.
    fn unconflicted(
        &self,
        first: &StateMap,
        (kind, state_key): &(String, String),
    ) -> Option<String> {
        let found = (|| {
            let Some(key) = self.store.state.find_state_key(kind, state_key)? else {
                return Ok(None);
            };
            first.get(&key).map(|e| self.event_id(*e)).transpose()
        })();
        found.unwrap_or_else(|e| {
            self.error.borrow_mut().get_or_insert(e);
            None
        })
    }

    /// The PDUs known without a read (the unwritten event's), as the event cache starts.
    fn pdus(&self) -> HashMap<String, Option<Looked>> {
        self.unwritten
            .iter()
            .map(|(id, pdu)| (id.clone(), Some((Arc::clone(pdu), false))))
            .collect()
    }
}

/// A stored event's PDU and whether it was rejected.
type Looked = (Arc<Value>, bool);

/// Stored events as the algorithm asks for them, each read once.
struct StoredEvents<'a> {
    store: &'a EventStore,
    cache: RefCell<HashMap<String, Option<Looked>>>,
    /// The first storage error met (the trait has no error path; it is reported after).
    error: RefCell<Option<ServiceError>>,
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

    fn read(&self, event_id: &str) -> ServiceResult<Option<Looked>> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_parsed_for_resolution_keep_what_the_auth_rules_read() {
        let pdu = json!({
            "type": "m.room.member",
            "state_key": "@a:x",
            "sender": "@a:x",
            "room_id": "!r:x",
            "content": {
                "membership": "join",
                "join_authorised_via_users_server": "@r:y",
                "third_party_invite": {"signed": {"signatures": {"z": {"ed25519:1": "s"}}}}
            },
            "signatures": {"x": {"ed25519:1": "s1"}, "y": {"ed25519:2": "s2"}},
            "hashes": {"sha256": "h"},
            "unsigned": {"age": 1},
            "auth_events": ["$a"],
            "prev_events": ["$p"],
            "depth": 3,
            "origin_server_ts": 5
        });
        let parsed = parse_for_resolution(&serde_json::to_vec(&pdu).unwrap()).unwrap();
        assert_eq!(parsed["signatures"], json!({"x": {}, "y": {}}));
        let mut expected = pdu.clone();
        for field in ["hashes", "unsigned", "signatures"] {
            expected.as_object_mut().unwrap().remove(field);
        }
        let mut kept = parsed.clone();
        kept.as_object_mut().unwrap().remove("signatures");
        assert_eq!(kept, expected);
        assert_eq!(
            parse_for_resolution(br#"{"signatures": 5, "type": "x"}"#),
            Some(json!({"signatures": 5, "type": "x"}))
        );
        assert_eq!(parse_for_resolution(b"[1]"), None);
        assert_eq!(parse_for_resolution(b"{\"a\":"), None);

        // A restricted join stays signed by its authorising server.
        let (_dir, _db, store) = crate::services::rooms::event_store::open_temp_store();
        let events = StoredEvents {
            store: &store,
            cache: RefCell::default(),
            error: RefCell::default(),
        };
        assert!(events.signed_by(&parsed, "y"));
        assert!(events.signed_by(&parsed, "x"));
        assert!(!events.signed_by(&parsed, "z"));
        let unsigned_by_y = parse_for_resolution(
            &serde_json::to_vec(&json!({
                "sender": "@a:x",
                "content": {"join_authorised_via_users_server": "@r:y"},
                "signatures": {"x": {"ed25519:1": "s1"}}
            }))
            .unwrap(),
        )
        .unwrap();
        assert!(!events.signed_by(&unsigned_by_y, "y"));
    }
}

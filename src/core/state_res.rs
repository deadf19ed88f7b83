//! State resolution: the room state before an event whose `prev_events` lead to several
//! states.
//!
//! Spec: `rooms/v1.md` (state resolution v1, in [`v1`]), `rooms/v2.md` ("State
//! resolution", the algorithm of room versions 2 to 11) and
//! `rooms/v12.md` (version 2.1: the iterative auth checks of step 2 start from an empty
//! state, and the full conflicted set also holds the *conflicted state subgraph*). Pure:
//! events come from the caller through [`ResolutionEvents`], as the spec's algorithm is
//! written, so the storage layer can answer from its tables and its auth chain index,
//! and tests from a few events in memory.
//!
//! The algorithm, as the spec numbers it:
//! 1. the power events of the full conflicted set, with the events of their auth chains
//!    that are in that set, sorted by the reverse topological power ordering;
//! 2. the iterative auth checks over them, from the unconflicted state map (v2) or from
//!    an empty one (v2.1), give a partially resolved state;
//! 3. the other events of the full conflicted set, in mainline order of that state's
//!    power levels;
//! 4. the iterative auth checks over those, from the partially resolved state;
//! 5. the unconflicted state map laid over the result.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::auth_rules::{self, AuthContext, AuthState};
use super::power_levels::{Power, PowerLevels};
use super::room_version::RoomVersion;

/// A state map: `(type, state_key)` to an event id.
pub type StateMap = HashMap<(String, String), String>;

/// What the algorithm asks of the caller.
pub trait ResolutionEvents {
    /// The PDU of an event, if the caller has it (a missing event takes no part). The
    /// caller vouches that `event_id` is the event's id as its room version derives it
    /// (checked when the event arrived): the auth rules then take a create event's id
    /// from here rather than hashing it again.
    fn event(&self, event_id: &str) -> Option<Arc<Value>>;

    /// Whether the event was rejected (its auth events are then not used for others).
    fn is_rejected(&self, event_id: &str) -> bool;

    /// Whether `event` carries a valid signature of `server` (asked by the auth rules of
    /// restricted joins; the caller checked signatures when the event arrived).
    fn signed_by(&self, event: &Value, server: &str) -> bool;
}

/// Resolves `states` (the states after each `prev_event`) into one.
pub fn resolve(
    version: RoomVersion,
    states: &[&StateMap],
    events: &dyn ResolutionEvents,
) -> StateMap {
    let mut resolved = states.first().map(|s| (*s).clone()).unwrap_or_default();
    for (key, value) in resolve_changes(version, states, events) {
        match value {
            Some(id) => resolved.insert(key, id),
            None => resolved.remove(&key),
        };
    }
    resolved
}

/// A change of the resolved state against the first state given: the key's new event,
/// or `None` when the key is not in the resolved state.
pub type StateChange = ((String, String), Option<String>);

/// Resolves `states` as [`resolve`] does, answering only where the result differs from
/// `states[0]`. Compares the states key by key and walks every state event's auth chain
/// for the auth difference; storage, which keeps snapshots as deltas and an auth chain
/// index, calls [`resolve_conflict`] with both already known.
pub fn resolve_changes(
    version: RoomVersion,
    states: &[&StateMap],
    events: &dyn ResolutionEvents,
) -> Vec<StateChange> {
    let Some(base) = states.first() else {
        return Vec::new();
    };
    let unconflicted = |key: &(String, String)| base.get(key).cloned();
    let conflict = Conflict {
        keys: split(states),
        unconflicted: &unconflicted,
    };
    if conflict.keys.is_empty() {
        return Vec::new();
    }
    let difference = if version.state_res_v1() {
        HashSet::new() // state resolution v1 has no use for it
    } else {
        auth_difference(events, states)
    };
    resolve_conflict(version, &conflict, difference, events)
}

/// The states to resolve, told by where they differ (spec: "Unconflicted state map and
/// conflicted state set").
pub struct Conflict<'a> {
    /// The keys not every state maps to the same event, each with every state's event
    /// for it in the order of the states (`None`: that state has no such key).
    pub keys: HashMap<(String, String), Vec<Option<String>>>,
    /// The unconflicted state map: the event every state holds for a key outside `keys`
    /// (asked for the few keys the auth rules read, never listed).
    pub unconflicted: &'a Lookup<'a>,
}

/// A state map read a key at a time.
pub type Lookup<'a> = dyn Fn(&(String, String)) -> Option<String> + 'a;

/// The resolution of the states `conflict` describes, as changes against the first of
/// them (the work and the answer follow the conflict, not the size of the state).
/// `difference` is the states' auth difference (spec: "Auth difference"; room version 1,
/// resolved by state resolution v1, does not read it).
pub fn resolve_conflict(
    version: RoomVersion,
    conflict: &Conflict<'_>,
    difference: HashSet<String>,
    events: &dyn ResolutionEvents,
) -> Vec<StateChange> {
    if conflict.keys.is_empty() {
        return Vec::new();
    }
    if version.state_res_v1() {
        return v1::resolve_conflict(version, conflict, events);
    }
    let conflicted: BTreeSet<String> = conflict
        .keys
        .values()
        .flatten()
        .flatten()
        .cloned()
        .collect();
    let mut cache = Events::new(events);

    // The full conflicted set: only events we have take part.
    let mut full: HashSet<String> = conflicted.iter().cloned().collect();
    full.extend(difference);
    if version.state_res_starts_empty() {
        full.extend(conflicted_subgraph(&mut cache, &conflicted));
    }
    full.retain(|id| cache.get(id).is_some());

    // Step 1: power events and their auth chains within the full conflicted set.
    let power: Vec<String> = full
        .iter()
        .filter(|id| cache.get(id).is_some_and(|e| is_power_event(&e)))
        .cloned()
        .collect();
    let mut picked: HashSet<String> = power.iter().cloned().collect();
    for id in &power {
        for auth in auth_chain(events, std::iter::once(id.as_str())) {
            if full.contains(&auth) {
                picked.insert(auth);
            }
        }
    }
    let sorted_power = reverse_topological_power_sort(version, &mut cache, &picked);

    // Step 2: from the unconflicted state map (v2) or an empty one (v2.1).
    let mut partial = Partial {
        unconflicted: (!version.state_res_starts_empty()).then_some(conflict.unconflicted),
        conflicted_keys: &conflict.keys,
        changes: HashMap::new(),
    };
    iterative_auth_checks(version, &mut cache, &mut partial, &sorted_power);

    // Step 3: the rest, by mainline order of the partial state's power levels.
    let rest: Vec<String> = full.difference(&picked).cloned().collect();
    let power_levels = partial.get(&("m.room.power_levels".to_owned(), String::new()));
    let sorted_rest = mainline_sort(&mut cache, power_levels.as_deref(), rest);

    // Step 4.
    iterative_auth_checks(version, &mut cache, &mut partial, &sorted_rest);

    // Step 5: the unconflicted state map wins; against the first state, only the
    // conflicted keys and keys no state had can change.
    let mut changes: Vec<StateChange> = Vec::new();
    for (key, values) in &conflict.keys {
        let value = partial.changes.remove(key);
        if values.first().and_then(Option::as_ref) != value.as_ref() {
            changes.push((key.clone(), value));
        }
    }
    for (key, value) in partial.changes {
        if (conflict.unconflicted)(&key).is_none() {
            changes.push((key, Some(value)));
        }
    }
    changes
}

/// The keys not every state maps to the same event, with each state's event for them
/// (spec: "Unconflicted state map and conflicted state set"; the unconflicted state map
/// is the first state without those keys).
fn split(states: &[&StateMap]) -> HashMap<(String, String), Vec<Option<String>>> {
    let mut keys: HashSet<&(String, String)> = HashSet::new();
    let Some((first, rest)) = states.split_first() else {
        return HashMap::new();
    };
    for (key, value) in first.iter() {
        if rest.iter().any(|s| s.get(key) != Some(value)) {
            keys.insert(key);
        }
    }
    for state in rest {
        for key in state.keys() {
            if !first.contains_key(key) {
                keys.insert(key);
            }
        }
    }
    keys.into_iter()
        .map(|key| {
            let values = states.iter().map(|s| s.get(key).cloned()).collect();
            (key.clone(), values)
        })
        .collect()
}

/// The auth difference of the states: every event in the auth chain of some state's
/// events but not of every state's (spec: "Auth difference"), by walking the auth
/// chains of all their events: its cost follows the size of the states (storage answers
/// from its index instead).
pub fn auth_difference<E: ResolutionEvents + ?Sized>(
    events: &E,
    states: &[&StateMap],
) -> HashSet<String> {
    let chains: Vec<HashSet<String>> = states
        .iter()
        .map(|state| auth_chain(events, state.values().map(String::as_str)))
        .collect();
    let Some((first, rest)) = chains.split_first() else {
        return HashSet::new();
    };
    let union: HashSet<&String> = chains.iter().flatten().collect();
    union
        .into_iter()
        .filter(|id| !(first.contains(*id) && rest.iter().all(|c| c.contains(*id))))
        .cloned()
        .collect()
}

/// The state the iterative auth checks build: what they applied, over the unconflicted
/// state map when the algorithm starts from it (read through, never copied).
struct Partial<'a> {
    unconflicted: Option<&'a Lookup<'a>>,
    conflicted_keys: &'a HashMap<(String, String), Vec<Option<String>>>,
    changes: HashMap<(String, String), String>,
}

impl Partial<'_> {
    fn get(&self, key: &(String, String)) -> Option<String> {
        if let Some(id) = self.changes.get(key) {
            return Some(id.clone());
        }
        let unconflicted = self.unconflicted?;
        if self.conflicted_keys.contains_key(key) {
            return None;
        }
        unconflicted(key)
    }
}

/// The events reachable from `start` through `auth_events` (not `start` itself, unless
/// reached again).
pub fn auth_chain<'a, E: ResolutionEvents + ?Sized>(
    events: &E,
    start: impl Iterator<Item = &'a str>,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut todo: Vec<String> = Vec::new();
    for id in start {
        if let Some(event) = events.event(id) {
            todo.extend(auth_events(&event));
        }
    }
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(event) = events.event(&id) {
            todo.extend(auth_events(&event).filter(|a| !seen.contains(a)));
        }
    }
    seen
}

fn auth_events(event: &Value) -> impl Iterator<Item = String> + '_ {
    super::pdu::event_ids(event, "auth_events").map(str::to_owned)
}

fn str_field<'e>(event: &'e Value, key: &str) -> Option<&'e str> {
    event.get(key).and_then(Value::as_str)
}

fn timestamp(event: &Value) -> i64 {
    event
        .get("origin_server_ts")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Spec: "Power events".
fn is_power_event(event: &Value) -> bool {
    let Some(state_key) = str_field(event, "state_key") else {
        return false;
    };
    match str_field(event, "type") {
        Some("m.room.power_levels" | "m.room.join_rules") => true,
        Some("m.room.member") => {
            let membership = event
                .get("content")
                .and_then(|c| c.get("membership"))
                .and_then(Value::as_str);
            matches!(membership, Some("leave" | "ban"))
                && str_field(event, "sender") != Some(state_key)
        }
        _ => false,
    }
}

/// Events fetched once per resolution.
struct Events<'a> {
    source: &'a dyn ResolutionEvents,
    fetched: HashMap<String, Option<Arc<Value>>>,
}

impl<'a> Events<'a> {
    fn new(source: &'a dyn ResolutionEvents) -> Self {
        Self {
            source,
            fetched: HashMap::new(),
        }
    }

    fn get(&mut self, id: &str) -> Option<Arc<Value>> {
        if let Some(known) = self.fetched.get(id) {
            return known.clone();
        }
        let event = self.source.event(id);
        self.fetched.insert(id.to_owned(), event.clone());
        event
    }

    /// The event's auth event of this type (and state key), if any.
    fn auth_event_of_type(
        &mut self,
        event: &Value,
        kind: &str,
        state_key: &str,
    ) -> Option<(String, Arc<Value>)> {
        for id in auth_events(event) {
            if let Some(auth) = self.get(&id) {
                if str_field(&auth, "type") == Some(kind)
                    && str_field(&auth, "state_key") == Some(state_key)
                {
                    return Some((id, auth));
                }
            }
        }
        None
    }

    /// The room's create event: among the event's auth events, or (v12, where it is not
    /// one of them) the event whose id the room id is made from.
    fn create_event(&mut self, version: RoomVersion, event: &Value) -> Option<Arc<Value>> {
        if version.room_id_is_create_event_hash() {
            let room_id = str_field(event, "room_id")?;
            return self.get(&format!("${}", room_id.strip_prefix('!')?));
        }
        self.auth_event_of_type(event, "m.room.create", "")
            .map(|(_, e)| e)
    }
}

/// Spec (v12): "Conflicted state subgraph": the events on auth paths from one event of
/// the conflicted state set to another, endpoints included.
fn conflicted_subgraph(events: &mut Events<'_>, conflicted: &BTreeSet<String>) -> HashSet<String> {
    // Every event reachable from the conflicted set, with its auth edges.
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    let mut todo: Vec<String> = conflicted.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        if edges.contains_key(&id) {
            continue;
        }
        let next: Vec<String> = events
            .get(&id)
            .map(|e| auth_events(&e).collect())
            .unwrap_or_default();
        todo.extend(next.iter().filter(|n| !edges.contains_key(*n)).cloned());
        edges.insert(id, next);
    }
    // Which of them lead to a conflicted event (depth first, without recursion).
    let mut leads: HashMap<&str, bool> = HashMap::new();
    for start in edges.keys() {
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        while let Some((id, child)) = stack.pop() {
            if leads.contains_key(id) && child == 0 {
                continue;
            }
            let next = edges.get(id).map(Vec::as_slice).unwrap_or(&[]);
            if child < next.len() {
                stack.push((id, child + 1));
                let n = next[child].as_str();
                if !leads.contains_key(n) && edges.contains_key(n) {
                    stack.push((n, 0));
                }
                continue;
            }
            let reaches = conflicted.contains(id)
                || next.iter().any(|n| leads.get(n.as_str()) == Some(&true));
            leads.insert(id, reaches);
        }
    }
    // On a path between two conflicted events: reached from one (all of `edges` are)
    // and leading to one.
    leads
        .into_iter()
        .filter(|(_, reaches)| *reaches)
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// The sender's power "when looking at their respective auth events".
fn sender_power(version: RoomVersion, events: &mut Events<'_>, event: &Value) -> Power {
    let sender = str_field(event, "sender").unwrap_or("");
    let create = events.create_event(version, event);
    let levels = events
        .auth_event_of_type(event, "m.room.power_levels", "")
        .map(|(_, e)| e);
    PowerLevels::new(version, create.as_deref(), levels.as_deref()).user(sender)
}

/// Greater power first, then the smaller `origin_server_ts` (the event id breaks ties).
type SortKey = (Reverse<Power>, i64);

/// Spec: "Reverse topological power ordering": Kahn's algorithm over the auth edges
/// within `ids`, taking at each step the smallest ready event by (greater sender power,
/// smaller `origin_server_ts`, smaller event id).
fn reverse_topological_power_sort(
    version: RoomVersion,
    events: &mut Events<'_>,
    ids: &HashSet<String>,
) -> Vec<String> {
    // For each event, its auth events within the set (to wait for) and who waits on it.
    let mut waiting_on: HashMap<&str, usize> = HashMap::new();
    let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut keys: HashMap<&str, SortKey> = HashMap::new();
    for id in ids {
        let Some(event) = events.get(id) else {
            continue;
        };
        let within: BTreeSet<String> = auth_events(&event).filter(|a| ids.contains(a)).collect();
        waiting_on.insert(id, within.len());
        for auth in within {
            if let Some(auth) = ids.get(&auth) {
                dependents.entry(auth.as_str()).or_default().push(id);
            }
        }
        let power = sender_power(version, events, &event);
        keys.insert(id, (Reverse(power), timestamp(&event)));
    }
    let mut ready: BinaryHeap<Reverse<(SortKey, &str)>> = waiting_on
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| Reverse((keys[id], *id)))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    while let Some(Reverse((_, id))) = ready.pop() {
        out.push(id.to_owned());
        for dependent in dependents.get(id).into_iter().flatten() {
            if let Some(n) = waiting_on.get_mut(dependent) {
                *n -= 1;
                if *n == 0 {
                    ready.push(Reverse((keys[dependent], *dependent)));
                }
            }
        }
    }
    out
}

/// Spec: "Mainline ordering" based on the power levels event `power_levels`: events
/// based on an earlier event of its mainline first (those based on none before all),
/// then by `origin_server_ts`, then by event id.
fn mainline_sort(
    events: &mut Events<'_>,
    power_levels: Option<&str>,
    ids: Vec<String>,
) -> Vec<String> {
    let mut mainline: HashMap<String, usize> = HashMap::new();
    let mut next = power_levels.map(str::to_owned);
    while let Some(id) = next {
        if mainline.contains_key(&id) {
            break; // a cycle: not a valid graph, stop rather than loop
        }
        let event = events.get(&id);
        mainline.insert(id, mainline.len());
        next = event.and_then(|e| {
            events
                .auth_event_of_type(&e, "m.room.power_levels", "")
                .map(|(id, _)| id)
        });
    }
    let mut keyed: Vec<(Reverse<usize>, i64, String)> = ids
        .into_iter()
        .map(|id| {
            let Some(event) = events.get(&id) else {
                return (Reverse(usize::MAX), 0, id);
            };
            let mut position = usize::MAX;
            let mut seen = HashSet::new();
            let mut current = event.clone();
            while let Some((pl_id, pl)) =
                events.auth_event_of_type(&current, "m.room.power_levels", "")
            {
                if let Some(i) = mainline.get(&pl_id) {
                    position = *i;
                    break;
                }
                if !seen.insert(pl_id) {
                    break;
                }
                current = pl;
            }
            (Reverse(position), timestamp(&event), id)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, id)| id).collect()
}

/// The state an event is checked against in the iterative auth checks: its own
/// (unrejected) auth events, overridden by the resolved state wherever that holds a key
/// the auth rules need.
/// Each event comes with its id (the key it was fetched by).
struct CheckState(HashMap<(String, String), (String, Arc<Value>)>);

impl AuthState for CheckState {
    fn get(&self, event_type: &str, state_key: &str) -> Option<&Value> {
        self.0
            .get(&(event_type.to_owned(), state_key.to_owned()))
            .map(|(_, e)| e.as_ref())
    }

    fn create_event_id(&self) -> Option<&str> {
        self.0
            .get(&("m.room.create".to_owned(), String::new()))
            .map(|(id, _)| id.as_str())
    }
}

/// Spec: "Iterative auth checks": each event applied to `state` if the auth rules allow
/// it, in order.
fn iterative_auth_checks(
    version: RoomVersion,
    events: &mut Events<'_>,
    state: &mut Partial<'_>,
    ordered: &[String],
) {
    for id in ordered {
        let Some(event) = events.get(id) else {
            continue;
        };
        let (Some(kind), Some(state_key)) =
            (str_field(&event, "type"), str_field(&event, "state_key"))
        else {
            continue;
        };
        let mut check = HashMap::new();
        for auth_id in auth_events(&event) {
            if events.source.is_rejected(&auth_id) {
                continue;
            }
            if let Some(auth) = events.get(&auth_id) {
                if let (Some(t), Some(k)) =
                    (str_field(&auth, "type"), str_field(&auth, "state_key"))
                {
                    check.insert(
                        (t.to_owned(), k.to_owned()),
                        (auth_id.clone(), auth.clone()),
                    );
                }
            }
        }
        let mut needed = auth_rules::auth_event_keys(version, &event);
        needed.push(("m.room.create".to_owned(), String::new()));
        for key in needed {
            if let Some(in_state) = state.get(&key) {
                if let Some(resolved) = events.get(&in_state) {
                    check.insert(key, (in_state, resolved));
                }
            }
        }
        if version.room_id_is_create_event_hash() && kind != "m.room.create" {
            let create_key = ("m.room.create".to_owned(), String::new());
            if let std::collections::hash_map::Entry::Vacant(slot) = check.entry(create_key) {
                let room_id = str_field(&event, "room_id").unwrap_or("");
                let id = format!("${}", room_id.strip_prefix('!').unwrap_or(room_id));
                if let Some(create) = events.create_event(version, &event) {
                    slot.insert((id, create));
                }
            }
        }
        let source = events.source;
        let signed_by = |server: &str| source.signed_by(&event, server);
        let ctx = AuthContext {
            version,
            signed_by: &signed_by,
        };
        if auth_rules::check(&ctx, &event, &CheckState(check)).is_ok() {
            state
                .changes
                .insert((kind.to_owned(), state_key.to_owned()), id.clone());
        }
    }
}

#[path = "state_res_v1.rs"]
mod v1;

#[cfg(test)]
#[path = "state_res_tests.rs"]
mod tests;

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
use std::collections::{BinaryHeap, HashMap, HashSet};
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
    let mut cache = Events::new(events);
    let mut conflicted: Vec<Ix> = Vec::new();
    for id in conflict.keys.values().flatten().flatten() {
        conflicted.push(cache.ix(id));
    }
    conflicted.sort_unstable();
    conflicted.dedup();

    // The full conflicted set: only events we have take part.
    let mut full = Marks::default();
    let mut members: Vec<Ix> = Vec::new();
    let mut add = |cache: &mut Events<'_>, full: &mut Marks, ix: Ix| {
        if full.insert(ix) && cache.load(ix) {
            members.push(ix);
        }
    };
    for &ix in &conflicted {
        add(&mut cache, &mut full, ix);
    }
    for id in &difference {
        let ix = cache.ix(id);
        add(&mut cache, &mut full, ix);
    }
    if version.state_res_starts_empty() {
        for ix in conflicted_subgraph(&mut cache, &conflicted) {
            add(&mut cache, &mut full, ix);
        }
    }
    // `full` now also marks events we lack; only `members` take part.
    let mut in_full = Marks::default();
    for &ix in &members {
        in_full.insert(ix);
    }

    // Step 1: power events and their auth chains within the full conflicted set, walked
    // as Synapse and ruma walk them: through auth edges whose both ends are in the full
    // conflicted set. The spec's words ("the events in the auth chain of P which also
    // belong to the full conflicted set") would also take an event reached only through
    // an event outside that set; every other implementation leaves it to step 3, and a
    // resolution that differs from theirs splits the room's state between servers.
    let power: Vec<Ix> = members
        .iter()
        .copied()
        .filter(|&ix| cache.node(ix).power)
        .collect();
    let mut picked = Marks::default();
    let mut picked_list: Vec<Ix> = Vec::new();
    for &ix in &power {
        if picked.insert(ix) {
            picked_list.push(ix);
        }
    }
    let mut walk = power.clone();
    while let Some(ix) = walk.pop() {
        for n in 0..cache.node(ix).auth.len() {
            let auth = cache.node(ix).auth[n];
            if in_full.contains(auth) && picked.insert(auth) {
                picked_list.push(auth);
                walk.push(auth);
            }
        }
    }
    let sorted_power = reverse_topological_power_sort(version, &mut cache, &picked, &picked_list);

    // Step 2: from the unconflicted state map (v2) or an empty one (v2.1).
    let mut partial = Partial {
        unconflicted: (!version.state_res_starts_empty()).then_some(conflict.unconflicted),
        conflicted_keys: &conflict.keys,
        changes: HashMap::new(),
    };
    iterative_auth_checks(version, &mut cache, &mut partial, &sorted_power);

    // Step 3: the rest, by mainline order of the partial state's power levels.
    let rest: Vec<Ix> = members
        .iter()
        .copied()
        .filter(|&ix| !picked.contains(ix))
        .collect();
    let power_levels = partial.get(
        &("m.room.power_levels".to_owned(), String::new()),
        &mut cache,
    );
    let sorted_rest = mainline_sort(&mut cache, power_levels, rest);

    // Step 4.
    iterative_auth_checks(version, &mut cache, &mut partial, &sorted_rest);

    // Step 5: the unconflicted state map wins; against the first state, only the
    // conflicted keys and keys no state had can change.
    let mut changes: Vec<StateChange> = Vec::new();
    for (key, values) in &conflict.keys {
        let value = partial
            .changes
            .remove(key)
            .map(|ix| cache.node(ix).id.clone());
        if values.first().and_then(Option::as_ref) != value.as_ref() {
            changes.push((key.clone(), value));
        }
    }
    for (key, ix) in partial.changes {
        if (conflict.unconflicted)(&key).is_none() {
            changes.push((key, Some(cache.node(ix).id.clone())));
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
    changes: HashMap<(String, String), Ix>,
}

impl Partial<'_> {
    fn get(&self, key: &(String, String), events: &mut Events<'_>) -> Option<Ix> {
        if let Some(ix) = self.changes.get(key) {
            return Some(*ix);
        }
        let unconflicted = self.unconflicted?;
        if self.conflicted_keys.contains_key(key) {
            return None;
        }
        unconflicted(key).map(|id| events.ix(&id))
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

/// An event's index in [`Events`]: the algorithm's sets, edges and sorts work on these,
/// not on event id strings.
type Ix = u32;

/// A set of [`Ix`].
#[derive(Default)]
struct Marks(Vec<bool>);

impl Marks {
    /// Marks `ix`; whether it was unmarked.
    fn insert(&mut self, ix: Ix) -> bool {
        let i = ix as usize;
        if i >= self.0.len() {
            self.0.resize(i + 1, false);
        }
        !std::mem::replace(&mut self.0[i], true)
    }

    fn contains(&self, ix: Ix) -> bool {
        self.0.get(ix as usize).copied().unwrap_or(false)
    }
}

/// An event as the algorithm reads it, fetched once, with the fields it asks most.
struct Node {
    id: String,
    /// Whether the caller was asked for it yet.
    loaded: bool,
    event: Option<Arc<Value>>,
    /// `(type, state_key)` of a state event.
    key: Option<(String, String)>,
    /// Its auth events (indices; fetched only when asked).
    auth: Vec<Ix>,
    power: bool,
    timestamp: i64,
    rejected: Option<bool>,
}

/// Events fetched once per resolution, each given an index.
struct Events<'a> {
    source: &'a dyn ResolutionEvents,
    index: HashMap<String, Ix>,
    nodes: Vec<Node>,
}

impl<'a> Events<'a> {
    fn new(source: &'a dyn ResolutionEvents) -> Self {
        Self {
            source,
            index: HashMap::new(),
            nodes: Vec::new(),
        }
    }

    /// The index of `id` (not fetched yet).
    fn ix(&mut self, id: &str) -> Ix {
        if let Some(ix) = self.index.get(id) {
            return *ix;
        }
        let ix = self.nodes.len() as Ix;
        self.nodes.push(Node {
            id: id.to_owned(),
            loaded: false,
            event: None,
            key: None,
            auth: Vec::new(),
            power: false,
            timestamp: 0,
            rejected: None,
        });
        self.index.insert(id.to_owned(), ix);
        ix
    }

    /// Fetches the event at `ix` if not done yet; whether the caller has it.
    fn load(&mut self, ix: Ix) -> bool {
        let i = ix as usize;
        if self.nodes[i].loaded {
            return self.nodes[i].event.is_some();
        }
        self.nodes[i].loaded = true;
        let Some(event) = self.source.event(&self.nodes[i].id) else {
            return false;
        };
        let auth: Vec<Ix> = auth_events(&event).map(|id| self.ix(&id)).collect();
        let node = &mut self.nodes[i];
        node.key = match (str_field(&event, "type"), str_field(&event, "state_key")) {
            (Some(kind), Some(state_key)) => Some((kind.to_owned(), state_key.to_owned())),
            _ => None,
        };
        node.power = is_power_event(&event);
        node.timestamp = timestamp(&event);
        node.auth = auth;
        node.event = Some(event);
        true
    }

    fn node(&self, ix: Ix) -> &Node {
        &self.nodes[ix as usize]
    }

    /// The event with this id, if the caller has it.
    fn get(&mut self, id: &str) -> Option<Arc<Value>> {
        let ix = self.ix(id);
        self.load(ix);
        self.node(ix).event.clone()
    }

    fn is_rejected(&mut self, ix: Ix) -> bool {
        if let Some(known) = self.node(ix).rejected {
            return known;
        }
        let rejected = self.source.is_rejected(&self.node(ix).id);
        self.nodes[ix as usize].rejected = Some(rejected);
        rejected
    }

    /// The event's auth event of this type (and state key), if any.
    fn auth_of_type(&mut self, ix: Ix, kind: &str, state_key: &str) -> Option<Ix> {
        self.load(ix);
        for n in 0..self.node(ix).auth.len() {
            let auth = self.node(ix).auth[n];
            if self.load(auth)
                && self
                    .node(auth)
                    .key
                    .as_ref()
                    .is_some_and(|(k, s)| k == kind && s == state_key)
            {
                return Some(auth);
            }
        }
        None
    }

    /// The room's create event: among the event's auth events, or (v12, where it is not
    /// one of them) the event whose id the room id is made from.
    fn create_event(&mut self, version: RoomVersion, ix: Ix) -> Option<Ix> {
        if version.room_id_is_create_event_hash() {
            let event = self.node(ix).event.clone()?;
            let room_id = str_field(&event, "room_id")?;
            let create = self.ix(&format!("${}", room_id.strip_prefix('!')?));
            return self.load(create).then_some(create);
        }
        self.auth_of_type(ix, "m.room.create", "")
    }
}

/// Spec (v12): "Conflicted state subgraph": the events on auth paths from one event of
/// the conflicted state set to another, endpoints included.
fn conflicted_subgraph(events: &mut Events<'_>, conflicted: &[Ix]) -> Vec<Ix> {
    let mut is_conflicted = Marks::default();
    for &ix in conflicted {
        is_conflicted.insert(ix);
    }
    // Every event reachable from the conflicted set.
    let mut reached = Marks::default();
    let mut all: Vec<Ix> = Vec::new();
    let mut todo: Vec<Ix> = conflicted.to_vec();
    while let Some(ix) = todo.pop() {
        if !reached.insert(ix) {
            continue;
        }
        all.push(ix);
        events.load(ix);
        todo.extend(
            events
                .node(ix)
                .auth
                .iter()
                .filter(|n| !reached.contains(**n)),
        );
    }
    // Which of them lead to a conflicted event (depth first, without recursion). An
    // event already entered is not entered again: one still on the stack would mean an
    // auth cycle (never in a consistent graph), which must not make the walk endless.
    let mut entered = Marks::default();
    let mut done = Marks::default();
    let mut leads = Marks::default();
    for &start in &all {
        let mut stack: Vec<(Ix, usize)> = vec![(start, 0)];
        while let Some((ix, child)) = stack.pop() {
            if child == 0 && !entered.insert(ix) {
                continue;
            }
            let next = &events.node(ix).auth;
            if child < next.len() {
                stack.push((ix, child + 1));
                let n = next[child];
                if !entered.contains(n) && reached.contains(n) {
                    stack.push((n, 0));
                }
                continue;
            }
            let reaches = is_conflicted.contains(ix) || next.iter().any(|n| leads.contains(*n));
            done.insert(ix);
            if reaches {
                leads.insert(ix);
            }
        }
    }
    // On a path between two conflicted events: reached from one (all of `all` are) and
    // leading to one.
    all.into_iter().filter(|ix| leads.contains(*ix)).collect()
}

/// The sender's power "when looking at their respective auth events".
fn sender_power(version: RoomVersion, events: &mut Events<'_>, ix: Ix) -> Power {
    let create = events.create_event(version, ix);
    let levels = events.auth_of_type(ix, "m.room.power_levels", "");
    let event = events.node(ix).event.as_deref();
    let sender = event.and_then(|e| str_field(e, "sender")).unwrap_or("");
    let create = create.and_then(|c| events.node(c).event.as_deref());
    let levels = levels.and_then(|l| events.node(l).event.as_deref());
    PowerLevels::new(version, create, levels).user(sender)
}

/// Greater power first, then the smaller `origin_server_ts` (the event id breaks ties).
type SortKey = (Reverse<Power>, i64);

/// Spec: "Reverse topological power ordering": Kahn's algorithm over the auth edges
/// within `ids`, taking at each step the smallest ready event by (greater sender power,
/// smaller `origin_server_ts`, smaller event id).
fn reverse_topological_power_sort(
    version: RoomVersion,
    events: &mut Events<'_>,
    within: &Marks,
    ids: &[Ix],
) -> Vec<Ix> {
    // For each event, its auth events within the set (to wait for) and who waits on it.
    let mut waiting_on: HashMap<Ix, usize> = HashMap::new();
    let mut dependents: HashMap<Ix, Vec<Ix>> = HashMap::new();
    let mut keys: HashMap<Ix, SortKey> = HashMap::new();
    for &ix in ids {
        if !events.load(ix) {
            continue;
        }
        let mut inside: Vec<Ix> = events
            .node(ix)
            .auth
            .iter()
            .copied()
            .filter(|a| within.contains(*a))
            .collect();
        inside.sort_unstable();
        inside.dedup();
        waiting_on.insert(ix, inside.len());
        for auth in inside {
            dependents.entry(auth).or_default().push(ix);
        }
        let power = sender_power(version, events, ix);
        keys.insert(ix, (Reverse(power), events.node(ix).timestamp));
    }
    let id = |ix: Ix| events.node(ix).id.as_str();
    let mut ready: BinaryHeap<Reverse<(SortKey, &str, Ix)>> = waiting_on
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(ix, _)| Reverse((keys[ix], id(*ix), *ix)))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    while let Some(Reverse((_, _, ix))) = ready.pop() {
        out.push(ix);
        for dependent in dependents.get(&ix).into_iter().flatten() {
            if let Some(n) = waiting_on.get_mut(dependent) {
                *n -= 1;
                if *n == 0 {
                    ready.push(Reverse((keys[dependent], id(*dependent), *dependent)));
                }
            }
        }
    }
    out
}

/// Spec: "Mainline ordering" based on the power levels event `power_levels`: events
/// based on an earlier event of its mainline first (those based on none before all),
/// then by `origin_server_ts`, then by event id.
fn mainline_sort(events: &mut Events<'_>, power_levels: Option<Ix>, ids: Vec<Ix>) -> Vec<Ix> {
    let mut mainline: HashMap<Ix, usize> = HashMap::new();
    let mut next = power_levels;
    while let Some(ix) = next {
        if mainline.contains_key(&ix) {
            break; // a cycle: not a valid graph, stop rather than loop
        }
        mainline.insert(ix, mainline.len());
        next = events.auth_of_type(ix, "m.room.power_levels", "");
    }
    // The mainline position a power levels event leads to, once found.
    let mut leads_to: HashMap<Ix, usize> = HashMap::new();
    let mut keyed: Vec<(Reverse<usize>, i64, Ix)> = ids
        .into_iter()
        .map(|ix| {
            if !events.load(ix) {
                return (Reverse(usize::MAX), 0, ix);
            }
            let mut position = usize::MAX;
            let mut walked: Vec<Ix> = Vec::new();
            // Power levels events walked for the first time: few, as the others are in
            // `leads_to` (a `HashSet` allocates only when one is).
            let mut seen: HashSet<Ix> = HashSet::new();
            let mut current = ix;
            while let Some(pl) = events.auth_of_type(current, "m.room.power_levels", "") {
                if let Some(i) = mainline.get(&pl).or_else(|| leads_to.get(&pl)) {
                    position = *i;
                    break;
                }
                if !seen.insert(pl) {
                    break;
                }
                walked.push(pl);
                current = pl;
            }
            for pl in walked {
                leads_to.insert(pl, position);
            }
            (Reverse(position), events.node(ix).timestamp, ix)
        })
        .collect();
    keyed.sort_by(|a, b| {
        (a.0, a.1, events.node(a.2).id.as_str()).cmp(&(b.0, b.1, events.node(b.2).id.as_str()))
    });
    keyed.into_iter().map(|(_, _, ix)| ix).collect()
}

/// The state an event is checked against in state resolution v1: its candidates, each
/// with the id it was fetched by.
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

/// The state an event is checked against in the iterative auth checks: its own
/// (unrejected) auth events, overridden by the resolved state wherever that holds a key
/// the auth rules need. A handful of entries, each a key and an event; a later entry
/// for a key replaces an earlier one.
struct IterativeState<'e> {
    nodes: &'e [Node],
    entries: Vec<(&'e str, &'e str, Ix)>,
}

impl<'e> IterativeState<'e> {
    fn set(&mut self, kind: &'e str, state_key: &'e str, ix: Ix) {
        match self
            .entries
            .iter_mut()
            .find(|(k, s, _)| *k == kind && *s == state_key)
        {
            Some(entry) => entry.2 = ix,
            None => self.entries.push((kind, state_key, ix)),
        }
    }

    fn find(&self, event_type: &str, state_key: &str) -> Option<&'e Node> {
        self.entries
            .iter()
            .find(|(k, s, _)| *k == event_type && *s == state_key)
            .map(|(_, _, ix)| &self.nodes[*ix as usize])
    }
}

impl AuthState for IterativeState<'_> {
    fn get(&self, event_type: &str, state_key: &str) -> Option<&Value> {
        self.find(event_type, state_key)?.event.as_deref()
    }

    fn create_event_id(&self) -> Option<&str> {
        self.find("m.room.create", "").map(|n| n.id.as_str())
    }
}

/// Where an entry of an event's [`IterativeState`] comes from.
enum Entry {
    /// One of its auth events (under that event's key).
    Auth(Ix),
    /// The resolved state's event for the `n`th key the auth rules need.
    Needed(usize, Ix),
    /// The room's create event (v12).
    Create(Ix),
}

/// Spec: "Iterative auth checks": each event applied to `state` if the auth rules allow
/// it, in order.
fn iterative_auth_checks(
    version: RoomVersion,
    events: &mut Events<'_>,
    state: &mut Partial<'_>,
    ordered: &[Ix],
) {
    let create_key = ("m.room.create".to_owned(), String::new());
    let mut entries: Vec<Entry> = Vec::new();
    for &ix in ordered {
        if !events.load(ix) || events.node(ix).key.is_none() {
            continue;
        }
        let Some(event) = events.node(ix).event.clone() else {
            continue;
        };
        entries.clear();
        for n in 0..events.node(ix).auth.len() {
            let auth = events.node(ix).auth[n];
            if events.is_rejected(auth) {
                continue;
            }
            if events.load(auth) && events.node(auth).key.is_some() {
                entries.push(Entry::Auth(auth));
            }
        }
        let mut needed = auth_rules::auth_event_keys(version, &event);
        needed.push(create_key.clone());
        for (n, key) in needed.iter().enumerate() {
            if let Some(in_state) = state.get(key, events) {
                if events.load(in_state) {
                    entries.push(Entry::Needed(n, in_state));
                }
            }
        }
        let is_create = events
            .node(ix)
            .key
            .as_ref()
            .is_some_and(|(kind, _)| kind == "m.room.create");
        if version.room_id_is_create_event_hash() && !is_create {
            if let Some(create) = events.create_event(version, ix) {
                entries.push(Entry::Create(create));
            }
        }

        let mut check = IterativeState {
            nodes: &events.nodes,
            entries: Vec::with_capacity(entries.len()),
        };
        let mut create_from_room_id = None;
        for entry in &entries {
            match *entry {
                Entry::Auth(auth) => {
                    if let Some((kind, state_key)) = &check.nodes[auth as usize].key {
                        check.set(kind, state_key, auth);
                    }
                }
                Entry::Needed(n, found) => check.set(&needed[n].0, &needed[n].1, found),
                Entry::Create(create) => create_from_room_id = Some(create),
            }
        }
        // v12: the create event the room id names, where nothing else gave one.
        if let Some(create) = create_from_room_id {
            if check.find("m.room.create", "").is_none() {
                check.entries.push(("m.room.create", "", create));
            }
        }
        let source = events.source;
        let signed_by = |server: &str| source.signed_by(&event, server);
        let ctx = AuthContext {
            version,
            signed_by: &signed_by,
        };
        if auth_rules::check(&ctx, &event, &check).is_ok() {
            if let Some(key) = events.node(ix).key.clone() {
                state.changes.insert(key, ix);
            }
        }
    }
}

#[path = "state_res_v1.rs"]
mod v1;

#[cfg(test)]
#[path = "state_res_tests.rs"]
mod tests;

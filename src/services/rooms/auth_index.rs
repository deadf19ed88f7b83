//! The auth index: which state events name an event among their `auth_events`, and each
//! event's auth height. With it, the auth difference of a state resolution costs what
//! the conflict costs instead of what the room's age does (Synapse keeps a "chain cover"
//! for the same purpose; this is a simpler equivalent).
//!
//! Spec: `rooms/v2.md`, "Auth difference": the events in the auth chain of some state's
//! events but not of every state's. Write `U` for the events every state holds (the
//! unconflicted state map) and `C_i` for state `i`'s events of the conflicted keys; the
//! auth chain of state `i` is `A(U) ∪ A(C_i)`, so the difference is
//! `(∪ A(C_i)) − (∩ A(C_i)) − A(U)`. It is found in two steps:
//! 1. Walk back from the conflicted events along auth edges, the greatest auth height
//!    first, noting which states reach each event. Auth heights fall along every auth
//!    edge, so an event taken from the walk has been reached from everything above it.
//!    Once every event still waiting is reached from every state, all below them is in
//!    every chain and the walk stops: it covers where the states' auth chains differ.
//! 2. An event reached from some states but not all is in the difference unless an
//!    event of `U` reaches it. That is asked forwards, along the index of auth children
//!    (only state events are ever auth events, so only they are indexed), until an event
//!    the unconflicted state holds is met.
//!
//! An event's auth height is one more than the greatest of its held auth events' (0
//! without any), computed the first time a resolution needs it and kept (forgotten when
//! the event is written again). The walk checks that heights fall along every edge it
//! follows; if a kept one does not, the heights it met are forgotten and the caller
//! walks the states' whole auth chains for this resolution.
//!
//! An event's auth edges are its graph record's; for an event stored before the graph
//! was kept, or held out of band (stored without its edges), those its PDU names that
//! are held. An out-of-band event's edges grow as its auth events arrive, so its height
//! (and any worked out above it) is never kept.
//!
//! Owns the tables `auth_shorteventid_child` and `shorteventid_authheight`.

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};

use serde_json::Value;

use super::event_store::EventStore;
use super::graph::{self, EventStatus};
use super::state_store::{ShortEventId, ShortIdHash, ShortStateKey};

/// Sets and maps of short ids.
type IdSet = HashSet<ShortEventId, ShortIdHash>;
type IdMap<V> = HashMap<ShortEventId, V, ShortIdHash>;
use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::{keys, Batch, Table};

/// States a resolution compares at most (one bit each); the writer resolves the states of
/// at most 20 prev events, or of the room's extremities (at most
/// [`graph::MAX_EXTREMITIES`] and the new event).
pub const MAX_STATES: usize = 64;

/// `Meta` key set once every stored event is in the index of auth children.
const BUILT_KEY: &[u8] = b"rooms.auth_children_indexed";

/// Notes, in `batch`, event `short` (a state event whose key is `state_key`) as an auth
/// child of each of `auth`, whatever its status: the index follows the graph's shape
/// (an event later rejected may still be in a state taken from another server, or on
/// the auth path of one that is).
pub fn note_children(
    batch: &mut Batch<'_>,
    short: ShortEventId,
    auth: &[ShortEventId],
    state_key: Option<ShortStateKey>,
) {
    let Some(state_key) = state_key else {
        return;
    };
    for parent in auth {
        batch.put(
            Table::AuthShorteventidChild,
            keys::u64_pair(*parent, short),
            state_key.to_be_bytes(),
        );
    }
}

/// The short state key of a PDU, if it is a state event (interning a key never seen).
pub fn state_key_of(store: &EventStore, pdu: &Value) -> ServiceResult<Option<ShortStateKey>> {
    let (Some(kind), Some(state_key)) = (
        pdu.get("type").and_then(Value::as_str),
        pdu.get("state_key").and_then(Value::as_str),
    ) else {
        return Ok(None);
    };
    store.state.state_key(kind, state_key).map(Some)
}

/// Indexes the auth children of every stored state event, once (a database from before
/// the index). Blocking; run at start-up before the rooms writer takes events.
pub fn build_if_missing(store: &EventStore) -> ServiceResult<()> {
    if store.db.get(Table::Meta, BUILT_KEY)?.is_some() {
        return Ok(());
    }
    let mut batch = store.db.batch();
    let mut pending = 0usize;
    let mut indexed = 0usize;
    for entry in store
        .db
        .scan_range(Table::ShortroomidShorteventidPdu, &[], &[0xff; 17], false)
    {
        let (key, bytes) = entry?;
        // Only state events are indexed: most events are not, and need no parse.
        if !bytes.windows(11).any(|w| w == b"\"state_key\"") {
            continue;
        }
        let short = key
            .get(8..)
            .and_then(keys::read_u64)
            .ok_or_else(|| ServiceError::internal("corrupt key in shortroomid_shorteventid_pdu"))?;
        let Ok(pdu) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let Some(state_key) = state_key_of(store, &pdu)? else {
            continue;
        };
        let (auth, _) = auth_edges(store, short, Some(&pdu))?;
        note_children(&mut batch, short, &auth, Some(state_key));
        indexed += 1;
        pending += auth.len();
        if pending >= 10_000 {
            store
                .db
                .write_relaxed(std::mem::replace(&mut batch, store.db.batch()))?;
            pending = 0;
        }
    }
    batch.put(Table::Meta, BUILT_KEY, b"1");
    store.db.commit_blocking(batch)?;
    if indexed > 0 {
        tracing::info!(
            events = indexed,
            "indexed the auth children of stored state events"
        );
    }
    Ok(())
}

/// An event's auth edges to events held: its graph record's, or, for an event without
/// one (stored before the graph was kept) or held out of band (stored without its
/// edges), those its PDU names. `pdu` spares reading it when the caller has it. The flag
/// says whether the edges are final: an out-of-band event's grow as its auth events
/// arrive, so no height worked out from them is kept.
fn auth_edges(
    store: &EventStore,
    short: ShortEventId,
    pdu: Option<&Value>,
) -> ServiceResult<(Vec<ShortEventId>, bool)> {
    let record = graph::record(store, short)?;
    let out_of_band = match record {
        Some(record) if record.status != EventStatus::OutOfBand => {
            return Ok((record.auth, true));
        }
        Some(_) => true,
        None => false,
    };
    let read;
    let pdu = match pdu {
        Some(pdu) => pdu,
        None => {
            let Some(bytes) = store.pdu_of(short)? else {
                return Ok((Vec::new(), !out_of_band));
            };
            read = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
            &read
        }
    };
    Ok((held_auth_events(store, pdu)?, !out_of_band))
}

/// The short ids of the auth events a PDU names that are held.
pub fn held_auth_events(store: &EventStore, pdu: &Value) -> ServiceResult<Vec<ShortEventId>> {
    let mut out = Vec::new();
    for id in crate::core::pdu::event_ids(pdu, "auth_events") {
        if let Some(held) = store.state.find_event(id)? {
            out.push(held);
        }
    }
    Ok(out)
}

/// Forgets the auth height kept for `short`, in `batch`: an event written again (held
/// out of band, now with the room) may have other auth edges than when it was worked out.
pub fn forget_height(batch: &mut Batch<'_>, short: ShortEventId) {
    batch.delete(Table::ShorteventidAuthheight, short.to_be_bytes());
}

/// The auth difference of states given by their conflicted events (`conflicted[i]`:
/// state `i`'s events of the conflicted keys), as the module docs describe; `None` when
/// the index cannot answer (a kept auth height found stale: the heights met are
/// forgotten, and the caller walks the states' auth chains instead).
/// `in_unconflicted(event, key)` answers whether the unconflicted state map holds
/// `event` (whose short state key is `key`). `unwritten` is an event among the
/// conflicted whose graph record is not written yet, with its auth events.
pub fn auth_difference(
    store: &EventStore,
    conflicted: &[Vec<ShortEventId>],
    unwritten: Option<(ShortEventId, &[ShortEventId])>,
    in_unconflicted: &dyn Fn(ShortEventId, ShortStateKey) -> bool,
) -> ServiceResult<Option<HashSet<ShortEventId>>> {
    if conflicted.len() > MAX_STATES {
        return Err(ServiceError::internal(format!(
            "state resolution over {} states, more than {MAX_STATES}",
            conflicted.len()
        )));
    }
    let mut edges = Edges::new(store, unwritten);
    let Some(reached) = walk_back(&mut edges, conflicted)? else {
        tracing::warn!("an auth height kept for state resolution was stale; forgetting those met");
        edges.forget_heights()?;
        return Ok(None);
    };
    edges.keep_heights()?;
    let full = all_states(conflicted.len());
    let mut forward = Forward::new(store, in_unconflicted);
    let mut out = HashSet::new();
    for (event, reach) in reached {
        if reach != 0 && reach != full && !forward.reaches_unconflicted(event)? {
            out.insert(event);
        }
    }
    Ok(Some(out))
}

fn all_states(count: usize) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// What the backward walk knows of an event: the states whose conflicted events reach it
/// through auth edges, and the states it is itself a conflicted event of.
#[derive(Clone, Copy, Default)]
struct Marks {
    reach: u64,
    own: u64,
}

/// Step 1: every event the walk met, with the states reaching it; `None` if an auth
/// edge does not fall in height (a kept height gone stale): the walk cannot answer.
fn walk_back(
    edges: &mut Edges<'_>,
    conflicted: &[Vec<ShortEventId>],
) -> ServiceResult<Option<IdMap<u64>>> {
    let full = all_states(conflicted.len());
    let mut marks: IdMap<Marks> = IdMap::default();
    for (i, events) in conflicted.iter().enumerate() {
        for event in events {
            marks.entry(*event).or_default().own |= 1 << i;
        }
    }
    let starts: Vec<ShortEventId> = marks.keys().copied().collect();
    edges.read_ahead(&starts)?;
    let mut waiting = BinaryHeap::new();
    // Events waiting that not every state reaches yet: the walk goes on while any is.
    let mut open = 0usize;
    for event in marks.keys() {
        waiting.push((edges.height(*event)?, *event));
        open += 1;
    }
    while open > 0 {
        let Some((_, event)) = waiting.pop() else {
            break;
        };
        let Marks { reach, own } = marks[&event];
        if reach != full {
            open -= 1;
        }
        let passes = reach | own;
        let height = edges.height(event)?;
        for parent in edges.auth_of(event)? {
            if edges.height(parent)? >= height {
                return Ok(None);
            }
            match marks.entry(parent) {
                Entry::Vacant(slot) => {
                    slot.insert(Marks {
                        reach: passes,
                        own: 0,
                    });
                    waiting.push((edges.height(parent)?, parent));
                    if passes != full {
                        open += 1;
                    }
                }
                Entry::Occupied(mut slot) => {
                    // Not taken from the walk yet: its height is below `event`'s.
                    let marks = slot.get_mut();
                    let was_open = marks.reach != full;
                    marks.reach |= passes;
                    if was_open && marks.reach == full {
                        open -= 1;
                    }
                }
            }
        }
    }
    Ok(Some(marks.into_iter().map(|(e, m)| (e, m.reach)).collect()))
}

/// A kept auth height.
fn decode_height(bytes: &[u8]) -> ServiceResult<u32> {
    let bytes: [u8; 4] = bytes
        .try_into()
        .map_err(|_| ServiceError::internal("corrupt record in shorteventid_authheight"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// Auth edges and heights as the walk reads them, each once.
struct Edges<'a> {
    store: &'a EventStore,
    auth: IdMap<Vec<ShortEventId>>,
    heights: IdMap<u32>,
    /// Heights worked out by this walk, to keep.
    new_heights: Vec<(ShortEventId, u32)>,
    /// Events whose edges may still grow (held out of band), and those above them: their
    /// heights are worked out each time, never kept.
    unsettled: IdSet,
    unwritten: Option<ShortEventId>,
}

impl<'a> Edges<'a> {
    fn new(store: &'a EventStore, unwritten: Option<(ShortEventId, &[ShortEventId])>) -> Self {
        let mut auth = IdMap::default();
        if let Some((short, edges)) = unwritten {
            auth.insert(short, edges.to_vec());
        }
        Self {
            store,
            auth,
            heights: IdMap::default(),
            new_heights: Vec::new(),
            unsettled: IdSet::default(),
            unwritten: unwritten.map(|(short, _)| short),
        }
    }

    fn auth_of(&mut self, event: ShortEventId) -> ServiceResult<Vec<ShortEventId>> {
        if let Some(known) = self.auth.get(&event) {
            return Ok(known.clone());
        }
        let (edges, settled) = auth_edges(self.store, event, None)?;
        if !settled {
            self.unsettled.insert(event);
        }
        self.auth.insert(event, edges.clone());
        Ok(edges)
    }

    fn stored_height(&self, event: ShortEventId) -> ServiceResult<Option<u32>> {
        self.store
            .db
            .get(Table::ShorteventidAuthheight, event.to_be_bytes())?
            .map(|bytes| decode_height(&bytes))
            .transpose()
    }

    /// Reads the kept heights and the graph records of `events` in two batched reads:
    /// the walk starts from thousands of conflicted events, each read alone otherwise.
    /// What is not found is read (or worked out) as the walk meets it.
    fn read_ahead(&mut self, events: &[ShortEventId]) -> ServiceResult<()> {
        let wanted: Vec<ShortEventId> = events
            .iter()
            .copied()
            .filter(|e| Some(*e) != self.unwritten && !self.heights.contains_key(e))
            .collect();
        let heights = self.store.db.multi_get(
            Table::ShorteventidAuthheight,
            wanted.iter().map(|e| e.to_be_bytes()),
        )?;
        for (event, bytes) in wanted.iter().zip(heights) {
            if let Some(bytes) = bytes {
                self.heights.insert(*event, decode_height(&bytes)?);
            }
        }
        // As `auth_edges` takes them: a graph record's edges are final unless it is held
        // out of band.
        for (event, record) in wanted.iter().zip(graph::records(self.store, &wanted)?) {
            match record {
                Some(record) if record.status != EventStatus::OutOfBand => {
                    self.auth.entry(*event).or_insert(record.auth);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The event's auth height, working out those of its auth chain not known yet
    /// (depth first, without recursion).
    fn height(&mut self, event: ShortEventId) -> ServiceResult<u32> {
        if let Some(h) = self.heights.get(&event) {
            return Ok(*h);
        }
        let mut stack = vec![(event, false)];
        let mut on_path = IdSet::default();
        while let Some((node, expanded)) = stack.pop() {
            if self.heights.contains_key(&node) {
                continue;
            }
            if !expanded {
                if Some(node) != self.unwritten {
                    if let Some(h) = self.stored_height(node)? {
                        self.heights.insert(node, h);
                        continue;
                    }
                }
                if !on_path.insert(node) {
                    return Err(ServiceError::internal("a cycle of auth events"));
                }
                stack.push((node, true));
                for parent in self.auth_of(node)? {
                    if !self.heights.contains_key(&parent) {
                        stack.push((parent, false));
                    }
                }
                continue;
            }
            let mut h = 0;
            let mut settled = !self.unsettled.contains(&node);
            for parent in self.auth_of(node)? {
                let below = self
                    .heights
                    .get(&parent)
                    .copied()
                    .ok_or_else(|| ServiceError::internal("a cycle of auth events"))?;
                h = h.max(below + 1);
                settled &= !self.unsettled.contains(&parent);
            }
            on_path.remove(&node);
            self.heights.insert(node, h);
            if !settled {
                self.unsettled.insert(node);
            } else if Some(node) != self.unwritten {
                self.new_heights.push((node, h));
            }
        }
        Ok(self.heights[&event])
    }

    /// Forgets every kept height this walk met.
    fn forget_heights(&mut self) -> ServiceResult<()> {
        let mut batch = self.store.db.batch();
        for event in self.heights.keys() {
            forget_height(&mut batch, *event);
        }
        self.store.db.write_relaxed(batch)?;
        Ok(())
    }

    /// Keeps the heights worked out (derived data: a lost write is worked out again).
    fn keep_heights(&mut self) -> ServiceResult<()> {
        if self.new_heights.is_empty() {
            return Ok(());
        }
        let mut batch = self.store.db.batch();
        for (event, h) in self.new_heights.drain(..) {
            batch.put(
                Table::ShorteventidAuthheight,
                event.to_be_bytes(),
                h.to_be_bytes(),
            );
        }
        self.store.db.write_relaxed(batch)?;
        Ok(())
    }
}

/// Step 2: whether an event of the unconflicted state map reaches an event, asked
/// forwards along the auth children; what a search found unreachable is remembered for
/// the next.
struct Forward<'a> {
    /// The auth children, scanned per event through one iterator.
    children: crate::storage::PrefixScans<'a>,
    in_unconflicted: &'a dyn Fn(ShortEventId, ShortStateKey) -> bool,
    /// Events from which no event of the unconflicted state map is reachable.
    dead_ends: IdSet,
}

impl<'a> Forward<'a> {
    fn new(
        store: &'a EventStore,
        in_unconflicted: &'a dyn Fn(ShortEventId, ShortStateKey) -> bool,
    ) -> Self {
        Self {
            children: store.db.prefix_scans(Table::AuthShorteventidChild),
            in_unconflicted,
            dead_ends: IdSet::default(),
        }
    }

    fn reaches_unconflicted(&mut self, event: ShortEventId) -> ServiceResult<bool> {
        let mut seen = IdSet::default();
        seen.insert(event);
        let mut todo = vec![event];
        while let Some(node) = todo.pop() {
            if self.dead_ends.contains(&node) {
                continue;
            }
            for (key, value) in self.children.scan(&node.to_be_bytes())? {
                let (Some(child), Some(state_key)) = (
                    key.get(8..16).and_then(keys::read_u64),
                    keys::read_u64(&value),
                ) else {
                    return Err(ServiceError::internal(
                        "corrupt record in auth_shorteventid_child",
                    ));
                };
                if (self.in_unconflicted)(child, state_key) {
                    return Ok(true);
                }
                if seen.insert(child) {
                    todo.push(child);
                }
            }
        }
        self.dead_ends.extend(seen);
        Ok(false)
    }
}

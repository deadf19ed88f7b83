//! State resolution v1, the algorithm of room version 1.
//!
//! Spec: `rooms/v1.md`, "State resolution". A key is *conflicted* when the states map it
//! to different events (a state without the key does not conflict with the others). The
//! resolved state *R* starts as the unconflicted keys, then:
//! 1. conflicting `m.room.power_levels` events, sorted by ascending `depth` then
//!    descending `sha1(event_id)`: the first joins *R*; each next one replaces it while
//!    the auth rules allow it in *R*, and the first refused ends the pass;
//! 2. the same for each conflicted `m.room.join_rules` key, then
//! 3. for each conflicted `m.room.member` key, each against *R* as the earlier passes
//!    left it;
//! 4. every other conflicted key takes the event with the highest depth and lowest
//!    `sha1(event_id)` that the auth rules allow in *R*.
//!
//! Where the spec is silent, this follows Synapse, whose behaviour the rooms of this
//! version were made with: a conflicted key whose events none could be had is left out,
//! and in step 4 a key none of whose events passes takes the last of them in that order.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{str_field, CheckState, Conflict, Events, ResolutionEvents, StateChange};
use crate::core::auth_rules::{self, AuthContext};
use crate::core::room_version::RoomVersion;

type Key = (String, String);
/// A candidate event with the id it was fetched by.
type Candidate = (String, Arc<Value>);

/// The resolution of the states `conflict` describes, as changes against the first.
pub(super) fn resolve_conflict(
    version: RoomVersion,
    conflict: &Conflict<'_>,
    events: &dyn ResolutionEvents,
) -> Vec<StateChange> {
    let mut cache = Events::new(events);
    // Keys whose states hold one event (or none) besides absences are not conflicted.
    let mut settled: HashMap<Key, Option<String>> = HashMap::new();
    let mut conflicted: Vec<(Key, Vec<Candidate>)> = Vec::new();
    for (key, values) in &conflict.keys {
        let mut distinct: Vec<&String> = values.iter().flatten().collect();
        distinct.sort();
        distinct.dedup();
        if distinct.len() <= 1 {
            settled.insert(key.clone(), distinct.first().map(|id| (*id).clone()));
            continue;
        }
        let had: Vec<Candidate> = distinct
            .into_iter()
            .filter_map(|id| cache.get(id).map(|e| (id.clone(), e)))
            .collect();
        match had.len() {
            0 => {
                settled.insert(key.clone(), None);
            }
            1 => {
                settled.insert(key.clone(), Some(had[0].0.clone()));
            }
            _ => conflicted.push((key.clone(), had)),
        }
    }
    // The same order every time, whatever the map's.
    conflicted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut resolved = Resolved {
        unconflicted: conflict.unconflicted,
        conflicted_keys: &conflict.keys,
        settled,
        chosen: HashMap::new(),
    };
    // The power levels (the one key of that type the auth rules read), every join
    // rules key, every member key: each pass against R as the passes before left it.
    let passes: [&dyn Fn(&Key) -> bool; 3] = [
        &|key| key.0 == "m.room.power_levels" && key.1.is_empty(),
        &|key| key.0 == "m.room.join_rules",
        &|key| key.0 == "m.room.member",
    ];
    for in_pass in passes {
        let mut picked = Vec::new();
        for (key, candidates) in conflicted.iter().filter(|(key, _)| in_pass(key)) {
            picked.push((
                key.clone(),
                resolve_auth_events(version, &mut cache, &resolved, candidates),
            ));
        }
        resolved.chosen.extend(picked);
    }
    let mut picked = Vec::new();
    for (key, candidates) in &conflicted {
        if !resolved.chosen.contains_key(key) {
            picked.push((
                key.clone(),
                resolve_normal_events(version, &mut cache, &resolved, candidates),
            ));
        }
    }
    resolved.chosen.extend(picked);

    let mut changes = Vec::new();
    for (key, values) in &conflict.keys {
        let value = match resolved.chosen.remove(key) {
            Some(id) => Some(id),
            None => resolved.settled.remove(key).flatten(),
        };
        if values.first().and_then(Option::as_ref) != value.as_ref() {
            changes.push((key.clone(), value));
        }
    }
    changes
}

/// The state *R* as far as the passes have built it: the unconflicted keys, and the
/// conflicted ones resolved so far (one not yet resolved is not in *R*).
struct Resolved<'a> {
    unconflicted: &'a super::Lookup<'a>,
    conflicted_keys: &'a HashMap<Key, Vec<Option<String>>>,
    settled: HashMap<Key, Option<String>>,
    chosen: HashMap<Key, String>,
}

impl Resolved<'_> {
    fn get(&self, key: &Key) -> Option<String> {
        if let Some(id) = self.chosen.get(key) {
            return Some(id.clone());
        }
        if let Some(value) = self.settled.get(key) {
            return value.clone();
        }
        if self.conflicted_keys.contains_key(key) {
            return None;
        }
        (self.unconflicted)(key)
    }
}

/// Ascending `depth`, then descending `sha1(event_id)`: the order of steps 1 to 3.
fn ascending(candidates: &[Candidate]) -> Vec<&Candidate> {
    let mut sorted: Vec<_> = candidates.iter().collect();
    sorted.sort_by_cached_key(|(id, event)| (depth(event), std::cmp::Reverse(sha1(id))));
    sorted
}

/// Steps 1 to 3 for one key.
fn resolve_auth_events(
    version: RoomVersion,
    cache: &mut Events<'_>,
    resolved: &Resolved<'_>,
    candidates: &[Candidate],
) -> String {
    let sorted = ascending(candidates);
    let mut current = sorted[0];
    for next in &sorted[1..] {
        let overlay = (key_of(&current.1), current);
        if !allowed(version, cache, resolved, Some(overlay), &next.1) {
            break;
        }
        current = next;
    }
    current.0.clone()
}

/// Step 4 for one key: the highest depth and lowest `sha1(event_id)` first.
fn resolve_normal_events(
    version: RoomVersion,
    cache: &mut Events<'_>,
    resolved: &Resolved<'_>,
    candidates: &[Candidate],
) -> String {
    let mut sorted = ascending(candidates);
    sorted.reverse();
    for candidate in &sorted {
        if allowed(version, cache, resolved, None, &candidate.1) {
            return candidate.0.clone();
        }
    }
    // None passes: the last in that order, as Synapse takes.
    sorted[sorted.len() - 1].0.clone()
}

/// Whether the auth rules allow `event` in *R*, with `overlay` (the candidate it would
/// replace) laid over *R*.
fn allowed(
    version: RoomVersion,
    cache: &mut Events<'_>,
    resolved: &Resolved<'_>,
    overlay: Option<(Option<Key>, &Candidate)>,
    event: &Value,
) -> bool {
    let mut needed = auth_rules::auth_event_keys(version, event);
    needed.push(("m.room.create".to_owned(), String::new()));
    let mut state = HashMap::new();
    for key in needed {
        let over = overlay
            .as_ref()
            .filter(|(k, _)| k.as_ref() == Some(&key))
            .map(|(_, e)| (e.0.clone(), e.1.clone()));
        let entry = match over {
            Some(entry) => Some(entry),
            None => resolved
                .get(&key)
                .and_then(|id| cache.get(&id).map(|e| (id, e))),
        };
        if let Some(entry) = entry {
            state.insert(key, entry);
        }
    }
    let source = cache.source;
    let signed_by = |server: &str| source.signed_by(event, server);
    let ctx = AuthContext {
        version,
        signed_by: &signed_by,
    };
    auth_rules::check(&ctx, event, &CheckState(state)).is_ok()
}

fn key_of(event: &Value) -> Option<Key> {
    Some((
        str_field(event, "type")?.to_owned(),
        str_field(event, "state_key")?.to_owned(),
    ))
}

fn depth(event: &Value) -> i64 {
    event.get("depth").and_then(Value::as_i64).unwrap_or(0)
}

/// `sha1(event_id)` as bytes (their order is the order of its hex digest).
fn sha1(event_id: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, event_id.as_bytes())
        .as_ref()
        .to_vec()
}

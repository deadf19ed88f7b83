//! State resolution (criterion): a room whose state holds 100,000 member events forks,
//! and 1,000 members change their display name on one branch, so 1,000 keys are
//! conflicted (2,000 events). Events are in memory. Measured twice: with the defaults
//! of `core::state_res::resolve_changes` (the auth difference by walking every state
//! event's auth chain, the states compared key by key), and with `resolve_conflict` given
//! the difference and the conflicted keys, as storage answers them from its auth chain
//! index and delta snapshots: the algorithm's own part. Both answer the changes against
//! the first state, as storage keeps snapshots. (`benches/fork_resolution.rs` measures
//! the same fork end to end, through storage.) Command: `cargo bench --bench state_res`.

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use ourwhats::core::state_res::{
    auth_difference, resolve, resolve_changes, resolve_conflict, Conflict, ResolutionEvents,
    StateMap,
};
use ourwhats::core::RoomVersion;
use serde_json::{json, Value};

const MEMBERS: usize = 100_000;
const CONFLICTED: usize = 1_000;
const ROOM: &str = "!bench:a.org";

struct Events(HashMap<String, Arc<Value>>);

impl ResolutionEvents for Events {
    fn event(&self, event_id: &str) -> Option<Arc<Value>> {
        self.0.get(event_id).cloned()
    }
    fn is_rejected(&self, _: &str) -> bool {
        false
    }
    fn signed_by(&self, _: &Value, _: &str) -> bool {
        false
    }
}

fn event(
    kind: &str,
    sender: &str,
    state_key: &str,
    content: Value,
    auth: &[&str],
    ts: u64,
) -> Value {
    json!({"type": kind, "sender": sender, "state_key": state_key, "content": content,
           "room_id": ROOM, "auth_events": auth, "prev_events": [], "depth": ts,
           "origin_server_ts": ts})
}

/// The events and the two states of the fork.
fn room() -> (Events, StateMap, StateMap) {
    let alice = "@alice:a.org";
    let mut events = HashMap::new();
    let mut state = StateMap::new();
    let mut put = |id: String, e: Value, state: &mut StateMap| {
        let key = (
            e["type"].as_str().unwrap().to_owned(),
            e["state_key"].as_str().unwrap().to_owned(),
        );
        state.insert(key, id.clone());
        events.insert(id, Arc::new(e));
    };
    let create = json!({"room_version": "11", "creator": alice});
    put(
        "$create".into(),
        event("m.room.create", alice, "", create, &[], 1),
        &mut state,
    );
    let join = json!({"membership": "join"});
    put(
        "$ima".into(),
        event("m.room.member", alice, alice, join.clone(), &["$create"], 2),
        &mut state,
    );
    let levels = json!({"users": {alice: 100}});
    let auth = ["$create", "$ima"];
    put(
        "$pl".into(),
        event("m.room.power_levels", alice, "", levels, &auth, 3),
        &mut state,
    );
    let rules = json!({"join_rule": "public"});
    let auth = ["$create", "$ima", "$pl"];
    put(
        "$jr".into(),
        event("m.room.join_rules", alice, "", rules, &auth, 4),
        &mut state,
    );
    for i in 0..MEMBERS {
        let user = format!("@u{i}:b.org");
        let auth = ["$create", "$pl", "$jr"];
        let e = event(
            "m.room.member",
            &user,
            &user,
            join.clone(),
            &auth,
            10 + i as u64,
        );
        put(format!("$m{i}"), e, &mut state);
    }
    let base = state.clone();
    let mut branch = state;
    for i in 0..CONFLICTED {
        let user = format!("@u{i}:b.org");
        let first = format!("$m{i}");
        let auth = ["$create", "$pl", "$jr", first.as_str()];
        let content = json!({"membership": "join", "displayname": format!("new {i}")});
        let e = event(
            "m.room.member",
            &user,
            &user,
            content,
            &auth,
            1_000_000 + i as u64,
        );
        put(format!("$n{i}"), e, &mut branch);
    }
    (Events(events), base, branch)
}

fn bench(c: &mut Criterion) {
    let (events, base, branch) = room();
    let resolved = resolve(RoomVersion::V11, &[&base, &branch], &events);
    assert_eq!(resolved.len(), base.len());
    let changed = (0..CONFLICTED)
        .filter(|i| {
            let key = ("m.room.member".to_owned(), format!("@u{i}:b.org"));
            resolved[&key] == format!("$n{i}")
        })
        .count();
    assert_eq!(changed, CONFLICTED, "every display name change passes");
    let mut group = c.benchmark_group("state_res");
    group.sample_size(10);
    group.bench_function("1000 conflicted of 100000 state events, v2", |b| {
        b.iter(|| resolve_changes(RoomVersion::V11, &[&base, &branch], &events))
    });
    let difference = auth_difference(&events, &[&base, &branch]);
    let unconflicted = |key: &(String, String)| base.get(key).cloned();
    let conflict = Conflict {
        keys: branch
            .iter()
            .filter(|(key, id)| base.get(*key) != Some(*id))
            .map(|(key, id)| (key.clone(), vec![base.get(key).cloned(), Some(id.clone())]))
            .collect(),
        unconflicted: &unconflicted,
    };
    assert_eq!(
        resolve_conflict(RoomVersion::V11, &conflict, difference.clone(), &events).len(),
        CONFLICTED
    );
    group.bench_function(
        "the same, auth difference and conflicted keys given (as storage answers them)",
        |b| b.iter(|| resolve_conflict(RoomVersion::V11, &conflict, difference.clone(), &events)),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

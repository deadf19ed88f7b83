//! State resolution scenarios as small event graphs, each checked under state resolution
//! v2 (room version 11) and v2.1 (room version 12). Each graph starts with a room that
//! alice created and bob, charlie and zara joined; `add` builds an event on given
//! `prev_events` with the auth events the state before it selects.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::core::event_hashes;

const ALICE: &str = "@alice:a.org";
const BOB: &str = "@bob:b.org";
const CHARLIE: &str = "@charlie:c.org";
const ZARA: &str = "@zara:z.org";
const EVELYN: &str = "@evelyn:e.org";

struct Graph {
    version: RoomVersion,
    room_id: String,
    events: HashMap<String, Arc<Value>>,
    state_after: HashMap<String, StateMap>,
    depth: HashMap<String, u64>,
    clock: i64,
    /// Short names (`CREATE`, `PA`) to event ids.
    ids: HashMap<String, String>,
}

impl ResolutionEvents for Graph {
    fn event(&self, event_id: &str) -> Option<Arc<Value>> {
        self.events.get(event_id).cloned()
    }

    fn is_rejected(&self, _: &str) -> bool {
        false
    }

    fn signed_by(&self, _: &Value, _: &str) -> bool {
        false
    }
}

impl Graph {
    fn new(version: RoomVersion) -> Self {
        let mut create = json!({
            "type": "m.room.create", "state_key": "", "sender": ALICE,
            "content": {"room_version": version.as_str()},
            "prev_events": [], "auth_events": [], "depth": 1, "origin_server_ts": 0,
            "hashes": {"sha256": "x"},
        });
        if version.create_event_has_creator_key() {
            create["content"]["creator"] = json!(ALICE);
        }
        let (room_id, create_id, create) = if version.room_id_is_create_event_hash() {
            let room_id = event_hashes::room_id_from_create_event(&create, version).unwrap();
            let id = format!("${}", &room_id[1..]);
            (room_id, id, create)
        } else {
            let mut create = create;
            create["room_id"] = json!("!room:a.org");
            ("!room:a.org".to_owned(), "$CREATE".to_owned(), create)
        };
        let mut graph = Self {
            version,
            room_id,
            events: HashMap::new(),
            state_after: HashMap::new(),
            depth: HashMap::new(),
            clock: 0,
            ids: HashMap::new(),
        };
        graph.ids.insert("CREATE".into(), create_id.clone());
        graph.events.insert(create_id.clone(), Arc::new(create));
        graph.state_after.insert(
            create_id.clone(),
            StateMap::from([(("m.room.create".into(), String::new()), create_id.clone())]),
        );
        graph.depth.insert(create_id, 1);
        graph.member("IMA", ALICE, ALICE, "join", &["CREATE"]);
        graph.power("IPOWER", ALICE, &[], &["IMA"]);
        graph.state(
            "IJR",
            ALICE,
            "m.room.join_rules",
            json!({"join_rule": "public"}),
            &["IPOWER"],
        );
        graph.member("IMB", BOB, BOB, "join", &["IJR"]);
        graph.member("IMC", CHARLIE, CHARLIE, "join", &["IMB"]);
        graph.member("IMZ", ZARA, ZARA, "join", &["IMC"]);
        graph
    }

    fn id(&self, name: &str) -> String {
        self.ids
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no event {name}"))
    }

    /// The state after resolving the states after `prevs`.
    fn state_before(&self, prevs: &[&str]) -> StateMap {
        let states: Vec<&StateMap> = prevs
            .iter()
            .map(|p| &self.state_after[&self.id(p)])
            .collect();
        if states.len() == 1 {
            return states[0].clone();
        }
        resolve(self.version, &states, self)
    }

    fn add(&mut self, name: &str, event: Value, prevs: &[&str], ts: Option<i64>) {
        let before = self.state_before(prevs);
        self.insert(name, event, prevs, ts, before);
    }

    /// Adds the event if the auth rules allow it in the state before it; answers whether
    /// it did (a rejected event takes no part in the graph).
    fn add_if_allowed(&mut self, name: &str, event: Value, prevs: &[&str]) -> bool {
        let before = self.state_before(prevs);
        let state: HashMap<(String, String), Value> = before
            .iter()
            .map(|(key, id)| (key.clone(), self.events[id].as_ref().clone()))
            .collect();
        let mut probe = event.clone();
        probe["room_id"] = json!(self.room_id);
        let never = |_: &str| false;
        let ctx = AuthContext {
            version: self.version,
            signed_by: &never,
        };
        if auth_rules::check(&ctx, &probe, &state).is_err() {
            return false;
        }
        self.insert(name, event, prevs, None, before);
        true
    }

    fn insert(
        &mut self,
        name: &str,
        mut event: Value,
        prevs: &[&str],
        ts: Option<i64>,
        before: StateMap,
    ) {
        self.clock += 1;
        let prev_ids: Vec<String> = prevs.iter().map(|p| self.id(p)).collect();
        let depth = prev_ids.iter().map(|p| self.depth[p]).max().unwrap_or(0) + 1;
        event["room_id"] = json!(self.room_id);
        event["prev_events"] = json!(prev_ids);
        event["depth"] = json!(depth);
        event["origin_server_ts"] = json!(ts.unwrap_or(self.clock * 1000));
        let mut auth: Vec<String> = auth_rules::auth_event_keys(self.version, &event)
            .into_iter()
            .filter_map(|key| before.get(&key).cloned())
            .collect();
        auth.sort();
        event["auth_events"] = json!(auth);
        let id = format!("${name}");
        let mut after = before;
        if let (Some(kind), Some(key)) = (event["type"].as_str(), event["state_key"].as_str()) {
            after.insert((kind.to_owned(), key.to_owned()), id.clone());
        }
        self.ids.insert(name.to_owned(), id.clone());
        self.events.insert(id.clone(), Arc::new(event));
        self.state_after.insert(id.clone(), after);
        self.depth.insert(id, depth);
    }

    fn state(&mut self, name: &str, sender: &str, kind: &str, content: Value, prevs: &[&str]) {
        let event = json!({"type": kind, "state_key": "", "sender": sender, "content": content});
        self.add(name, event, prevs, None);
    }

    fn topic_at(&mut self, name: &str, sender: &str, ts: i64, prevs: &[&str]) {
        let event = json!({"type": "m.room.topic", "state_key": "", "sender": sender,
                           "content": {"topic": name}});
        self.add(name, event, prevs, Some(ts));
    }

    fn topic(&mut self, name: &str, sender: &str, prevs: &[&str]) {
        self.state(name, sender, "m.room.topic", json!({"topic": name}), prevs);
    }

    fn member(&mut self, name: &str, sender: &str, target: &str, membership: &str, prevs: &[&str]) {
        let event = json!({"type": "m.room.member", "state_key": target, "sender": sender,
                           "content": {"membership": membership}});
        self.add(name, event, prevs, None);
    }

    /// A power levels event: alice 100 (not listed in v12, where she is the creator),
    /// and the given users.
    fn power(&mut self, name: &str, sender: &str, users: &[(&str, i64)], prevs: &[&str]) {
        let mut map = serde_json::Map::new();
        if !self.version.creators_have_infinite_power() {
            map.insert(ALICE.into(), json!(100));
        }
        for (user, level) in users {
            map.insert((*user).into(), json!(level));
        }
        self.state(
            name,
            sender,
            "m.room.power_levels",
            json!({"users": map}),
            prevs,
        );
    }

    /// Resolves the states after `prevs`; answers it with short names.
    fn resolve(&self, prevs: &[&str]) -> HashMap<(String, String), String> {
        let by_id: HashMap<&String, &String> = self.ids.iter().map(|(n, i)| (i, n)).collect();
        self.state_before(prevs)
            .into_iter()
            .map(|(key, id)| (key, by_id[&id].clone()))
            .collect()
    }
}

fn key(kind: &str, state_key: &str) -> (String, String) {
    (kind.to_owned(), state_key.to_owned())
}

const VERSIONS: [RoomVersion; 2] = [RoomVersion::V11, RoomVersion::V12];

#[test]
fn a_ban_outranks_the_banned_users_power_levels_change() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.power("PA", ALICE, &[(BOB, 50)], &["IMZ"]);
        g.member("MB", ALICE, BOB, "ban", &["PA"]);
        g.power("PB", BOB, &[(BOB, 50), (CHARLIE, 50)], &["PA"]);
        let state = g.resolve(&["MB", "PB"]);
        assert_eq!(state[&key("m.room.power_levels", "")], "PA", "{version}");
        assert_eq!(state[&key("m.room.member", BOB)], "MB", "{version}");
        // The order of the states does not matter.
        assert_eq!(g.resolve(&["PB", "MB"]), state, "{version}");
    }
}

#[test]
fn a_topic_set_by_a_user_banned_on_another_branch_is_undone() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.topic("T1", ALICE, &["IMZ"]);
        g.power("PA", ALICE, &[(BOB, 50)], &["T1"]);
        g.topic("T2", BOB, &["PA"]);
        g.member("MB", ALICE, BOB, "ban", &["PA"]);
        let state = g.resolve(&["T2", "MB"]);
        assert_eq!(state[&key("m.room.topic", "")], "T1", "{version}");
        assert_eq!(state[&key("m.room.member", BOB)], "MB", "{version}");
    }
}

#[test]
fn join_rules_closed_on_one_branch_stop_a_join_on_the_other() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.state(
            "JR",
            ALICE,
            "m.room.join_rules",
            json!({"join_rule": "invite"}),
            &["IMZ"],
        );
        g.member("ME", EVELYN, EVELYN, "join", &["IMZ"]);
        let state = g.resolve(&["JR", "ME"]);
        assert_eq!(state[&key("m.room.join_rules", "")], "JR", "{version}");
        assert!(
            !state.contains_key(&key("m.room.member", EVELYN)),
            "{version}"
        );
    }
}

#[test]
fn the_more_powerful_senders_power_levels_are_applied_first() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.power("PA", ALICE, &[(BOB, 50)], &["IMZ"]);
        // Bob raises charlie to his own level; alice, later, sets charlie to 0.
        g.power("PB", BOB, &[(BOB, 50), (CHARLIE, 50)], &["PA"]);
        g.power("PC", ALICE, &[(BOB, 50), (CHARLIE, 0)], &["PA"]);
        // Alice's goes first (more power), then bob's is checked against it and passes.
        let state = g.resolve(&["PB", "PC"]);
        assert_eq!(state[&key("m.room.power_levels", "")], "PB", "{version}");
        // Bob raising charlie above his own level fails against alice's.
        g.power("PD", BOB, &[(BOB, 50), (CHARLIE, 60)], &["PA"]);
        let state = g.resolve(&["PD", "PC"]);
        assert_eq!(state[&key("m.room.power_levels", "")], "PC", "{version}");
    }
}

#[test]
fn mainline_position_outranks_a_later_timestamp() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.power("PA1", ALICE, &[(BOB, 50)], &["IMZ"]);
        g.topic("T1", ALICE, &["PA1"]);
        g.power("PA2", ALICE, &[(BOB, 50), (CHARLIE, 10)], &["T1"]);
        g.topic_at("T2", BOB, 10_000, &["PA2"]);
        // Later, but based on an older power levels event of the mainline.
        g.topic_at("T3", ALICE, 20_000, &["PA1"]);
        let state = g.resolve(&["T2", "T3"]);
        assert_eq!(state[&key("m.room.power_levels", "")], "PA2", "{version}");
        assert_eq!(state[&key("m.room.topic", "")], "T2", "{version}");
    }
}

#[test]
fn ties_go_by_timestamp_then_by_event_id() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.topic_at("TX", ALICE, 200, &["IMZ"]);
        g.topic_at("TY", ALICE, 100, &["IMZ"]);
        // The later timestamp is applied last and wins.
        assert_eq!(g.resolve(&["TX", "TY"])[&key("m.room.topic", "")], "TX");
        // Same timestamp: the greater event id is applied last.
        g.topic_at("TB", ALICE, 300, &["IMZ"]);
        g.topic_at("TA", ALICE, 300, &["IMZ"]);
        assert_eq!(g.resolve(&["TA", "TB"])[&key("m.room.topic", "")], "TB");
        // Among power events as well (reverse topological power ordering).
        g.add(
            "JB",
            json!({"type": "m.room.join_rules", "state_key": "", "sender": ALICE,
                   "content": {"join_rule": "invite"}}),
            &["IMZ"],
            Some(400),
        );
        g.add(
            "JA",
            json!({"type": "m.room.join_rules", "state_key": "", "sender": ALICE,
                   "content": {"join_rule": "knock"}}),
            &["IMZ"],
            Some(400),
        );
        assert_eq!(
            g.resolve(&["JA", "JB"])[&key("m.room.join_rules", "")],
            "JB"
        );
    }
}

#[test]
fn unconflicted_state_stays_and_a_single_state_is_itself() {
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.topic("T1", ALICE, &["IMZ"]);
        g.state("N1", BOB, "m.room.name", json!({"name": "x"}), &["IMZ"]);
        let state = g.resolve(&["T1", "N1"]);
        assert_eq!(state[&key("m.room.topic", "")], "T1");
        assert_eq!(state[&key("m.room.member", ZARA)], "IMZ");
        // Bob may not set the name (state_default 50): only one branch has it, so it
        // is conflicted with its absence and fails the checks.
        assert!(!state.contains_key(&key("m.room.name", "")), "{version}");
        assert_eq!(g.resolve(&["T1"]).len(), g.state_after[&g.id("T1")].len());
    }
}

#[test]
fn a_kick_and_a_leave_of_the_same_user_resolve_to_the_kick() {
    // Zara leaves on one branch and is kicked on the other: each is judged against the
    // resolved state where it holds the keys the rules need.
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.member("LZ", ZARA, ZARA, "leave", &["IMZ"]);
        g.member("KZ", ALICE, ZARA, "leave", &["IMZ"]);
        let state = g.resolve(&["LZ", "KZ"]);
        let winner = &state[&key("m.room.member", ZARA)];
        // The kick is a power event, applied first; zara's own leave comes after it
        // (mainline order) and fails: she is no longer in the room by then.
        assert_eq!(winner, "KZ", "{version}");
    }
}

#[test]
fn an_old_join_judged_by_newer_join_rules_vanishes_in_v2_and_stays_in_v2_1() {
    // The state reset that v2.1 (room version 12) fixes by starting the power events'
    // checks from an empty state. Alice closes the room (JR) after bob joined; then, on
    // one branch, she raises bob to 100 (PB), and on the other charlie (50) kicks bob
    // (KB), allowed there since bob had 0.
    for version in VERSIONS {
        let mut g = Graph::new(version);
        g.state(
            "JR",
            ALICE,
            "m.room.join_rules",
            json!({"join_rule": "invite"}),
            &["IMZ"],
        );
        g.power("PC", ALICE, &[(CHARLIE, 50)], &["JR"]);
        g.power("PB", ALICE, &[(CHARLIE, 50), (BOB, 100)], &["PC"]);
        g.member("KB", CHARLIE, BOB, "leave", &["PC"]);
        let state = g.resolve(&["PB", "KB"]);
        assert_eq!(state[&key("m.room.power_levels", "")], "PB", "{version}");
        // The kick is a power event, and bob's join (IMB), in its auth chain and
        // conflicted with it, is sorted with it. v2 checks the join against the
        // unconflicted join rules, JR (invite): it fails, the kick fails too (bob has 100
        // by then), and bob's membership is gone. v2.1 checks the join against its own
        // auth events (public): bob stays.
        match version {
            RoomVersion::V12 => assert_eq!(state[&key("m.room.member", BOB)], "IMB"),
            _ => assert!(!state.contains_key(&key("m.room.member", BOB)), "{version}"),
        }
    }
}

/// A graph of bare events for the subgraph: `edges` are auth events.
struct Bare(HashMap<String, Arc<Value>>);

impl Bare {
    fn new(edges: &[(&str, &[&str])]) -> Self {
        Self(
            edges
                .iter()
                .map(|(id, auth)| {
                    let event = json!({"type": "m.room.topic", "state_key": "",
                                       "sender": ALICE, "auth_events": auth});
                    ((*id).to_owned(), Arc::new(event))
                })
                .collect(),
        )
    }
}

impl ResolutionEvents for Bare {
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

#[test]
fn the_conflicted_state_subgraph_is_every_path_between_conflicted_events() {
    // C1 → X → Y → C2 → Z, and C1 → W (W leads to no conflicted event).
    let bare = Bare::new(&[
        ("C1", &["X", "W"]),
        ("X", &["Y"]),
        ("Y", &["C2"]),
        ("C2", &["Z"]),
        ("W", &[]),
        ("Z", &[]),
    ]);
    let subgraph = subgraph_of(&bare, &["C1", "C2"]);
    let expected: HashSet<String> = ["C1", "X", "Y", "C2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(subgraph, expected);
}

#[test]
fn an_auth_cycle_does_not_make_the_conflicted_subgraph_endless() {
    // Never in a consistent graph (v12 ids are reference hashes), but a store could be
    // inconsistent: C1 → X → C1, and X → X.
    let bare = Bare::new(&[("C1", &["X"]), ("X", &["C1", "X"]), ("C2", &[])]);
    let subgraph = subgraph_of(&bare, &["C1", "C2"]);
    assert!(subgraph.contains("C1") && subgraph.contains("C2"));
}

/// The conflicted state subgraph of `conflicted` in `bare`, as event ids.
fn subgraph_of(bare: &Bare, conflicted: &[&str]) -> HashSet<String> {
    let mut events = Events::new(bare);
    let conflicted: Vec<Ix> = conflicted.iter().map(|id| events.ix(id)).collect();
    conflicted_subgraph(&mut events, &conflicted)
        .into_iter()
        .map(|ix| events.node(ix).id.clone())
        .collect()
}

#[test]
fn the_auth_difference_is_what_some_but_not_all_chains_hold() {
    let bare = Bare::new(&[("A", &["R"]), ("B", &["Q", "R"]), ("Q", &["R"]), ("R", &[])]);
    let s1 = StateMap::from([(key("t", "1"), "A".to_owned())]);
    let s2 = StateMap::from([(key("t", "1"), "B".to_owned())]);
    let diff = auth_difference(&bare, &[&s1, &s2]);
    assert_eq!(diff, HashSet::from(["Q".to_owned()]));
}

#[path = "state_res_differential.rs"]
mod differential;

// State resolution v1 (room version 1).

/// `sha1(event_id)` of a graph event, as state resolution v1 orders by it.
fn sha1_of(g: &Graph, name: &str) -> Vec<u8> {
    let id = g.id(name);
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, id.as_bytes())
        .as_ref()
        .to_vec()
}

#[test]
fn v1_a_key_only_one_state_holds_is_not_conflicted_so_a_join_outlives_closed_join_rules() {
    for version in [RoomVersion::V1, RoomVersion::V2] {
        let mut g = Graph::new(version);
        g.state(
            "JR",
            ALICE,
            "m.room.join_rules",
            json!({"join_rule": "invite"}),
            &["IMZ"],
        );
        g.member("ME", EVELYN, EVELYN, "join", &["IMZ"]);
        let state = g.resolve(&["JR", "ME"]);
        assert_eq!(state[&key("m.room.join_rules", "")], "JR", "{version}");
        assert_eq!(g.resolve(&["ME", "JR"]), state, "{version}");
        // The state reset v2 was made to stop: v1 keeps the join, v2 drops it.
        let joined = state.get(&key("m.room.member", EVELYN));
        match version {
            RoomVersion::V1 => assert_eq!(joined.map(String::as_str), Some("ME")),
            _ => assert_eq!(joined, None),
        }
    }
}

#[test]
fn v1_power_levels_go_by_depth_and_the_first_refused_ends_the_pass() {
    let mut g = Graph::new(RoomVersion::V1);
    g.power("PA", ALICE, &[(BOB, 50)], &["IMZ"]);
    g.power("PB", BOB, &[(BOB, 50), (CHARLIE, 50)], &["PA"]);
    g.topic("T", ALICE, &["PA"]);
    g.power("PC", ALICE, &[(BOB, 50), (CHARLIE, 0)], &["T"]);
    // PB is shallower, so it goes first; alice's deeper PC is allowed over it. (Under v2
    // alice's, the more powerful sender's, goes first and bob's is applied over it.)
    let state = g.resolve(&["PB", "PC"]);
    assert_eq!(state[&key("m.room.power_levels", "")], "PC");
    assert_eq!(g.resolve(&["PC", "PB"]), state);
    // Bob raising charlie above himself, deeper still, is refused over PC: PC stays.
    g.topic("T2", ALICE, &["T"]);
    g.topic("T3", ALICE, &["T2"]);
    g.power("PD", BOB, &[(BOB, 50), (CHARLIE, 60)], &["T3"]);
    let state = g.resolve(&["PC", "PD"]);
    assert_eq!(state[&key("m.room.power_levels", "")], "PC");
    // Three in a row: PB, PC, then PD refused: the pass ends at PC.
    let state = g.resolve(&["PB", "PC", "PD"]);
    assert_eq!(state[&key("m.room.power_levels", "")], "PC");
}

#[test]
fn v1_other_keys_take_the_deepest_event_the_resolved_state_allows() {
    let mut g = Graph::new(RoomVersion::V1);
    g.power("PA", ALICE, &[(BOB, 50)], &["IMZ"]);
    g.topic("T1", ALICE, &["PA"]);
    g.state("N", BOB, "m.room.name", json!({"name": "n"}), &["PA"]);
    g.topic("T2", BOB, &["N"]);
    let state = g.resolve(&["T1", "T2"]);
    assert_eq!(state[&key("m.room.topic", "")], "T2");
    assert_eq!(state[&key("m.room.name", "")], "N");
    // Bob banned on alice's branch: the ban wins the member pass, and bob's deeper
    // topic is then refused, leaving alice's.
    g.member("MB", ALICE, BOB, "ban", &["T1"]);
    let state = g.resolve(&["MB", "T2"]);
    assert_eq!(state[&key("m.room.member", BOB)], "MB");
    assert_eq!(state[&key("m.room.topic", "")], "T1");
    assert_eq!(g.resolve(&["T2", "MB"]), state);
}

#[test]
fn v1_ties_in_depth_go_to_the_lowest_sha1_of_the_event_id() {
    let mut g = Graph::new(RoomVersion::V1);
    g.topic("TA", ALICE, &["IMZ"]);
    g.topic("TB", ALICE, &["IMZ"]);
    let lowest = if sha1_of(&g, "TA") < sha1_of(&g, "TB") {
        "TA"
    } else {
        "TB"
    };
    assert_eq!(g.resolve(&["TA", "TB"])[&key("m.room.topic", "")], lowest);
    assert_eq!(g.resolve(&["TB", "TA"])[&key("m.room.topic", "")], lowest);
}

#[test]
fn v1_when_no_event_of_a_key_passes_the_last_in_order_is_taken_as_synapse_does() {
    let mut g = Graph::new(RoomVersion::V1);
    g.power("PA", ALICE, &[(BOB, 50)], &["IMZ"]);
    g.topic("TA", BOB, &["PA"]);
    g.member("MB", ALICE, BOB, "ban", &["TA"]);
    g.topic("TB", BOB, &["PA"]);
    g.topic("TC", BOB, &["TB"]);
    // Bob is banned in the resolved state, so neither TA nor TC passes; the order is
    // the deepest first (TC), so the last is TA.
    let state = g.resolve(&["MB", "TC"]);
    assert_eq!(state[&key("m.room.member", BOB)], "MB");
    assert_eq!(state[&key("m.room.topic", "")], "TA");
}

#[test]
fn v1_a_conflicted_key_is_not_in_the_resolved_state_until_its_pass_whatever_the_order() {
    let mut g = Graph::new(RoomVersion::V1);
    g.power("PA", ALICE, &[(BOB, 50)], &["IMZ"]);
    // Bob leaves on one branch; on the other he changes the power levels.
    g.member("LB", BOB, BOB, "leave", &["PA"]);
    g.power("PB", BOB, &[(BOB, 50), (CHARLIE, 50)], &["PA"]);
    // The power levels pass runs before bob's membership is resolved, so bob is not
    // joined in R then, and PB is refused, whichever state comes first.
    for order in [["PB", "LB"], ["LB", "PB"]] {
        let state = g.resolve(&order);
        assert_eq!(state[&key("m.room.power_levels", "")], "PA", "{order:?}");
        assert_eq!(state[&key("m.room.member", BOB)], "LB", "{order:?}");
    }
}

/// Step 1 takes the power events' auth events within the full conflicted set, walking on
/// only through such events (as Synapse and ruma do; see `resolve_conflict`). Alice
/// joined again on two branches (J1, then J2). Her power levels event P, on J1, is in
/// both states (unconflicted), so J1 is reached from the join rules event JRB only
/// through P: it is left to step 3, where it is checked after J2, which her kick K names
/// and step 1 applied. J1 is her membership in the resolved state.
#[test]
fn an_event_reached_only_through_unconflicted_ones_is_left_to_the_mainline_pass() {
    let version = RoomVersion::V11;
    let mut g = Graph::new(version);
    g.member("J1", ALICE, ALICE, "join", &["IMZ"]);
    g.member("J2", ALICE, ALICE, "join", &["IMZ"]);
    g.power("P", ALICE, &[(BOB, 50), (ZARA, 100)], &["J1"]);
    let invite = json!({"join_rule": "invite"});
    g.state("JRZ", ZARA, "m.room.join_rules", invite.clone(), &["P"]);
    let merge = json!({"type": "m.room.message", "sender": ALICE, "content": {"body": "m"}});
    g.add("M", merge, &["J2", "JRZ"], None);
    g.state("JRB", BOB, "m.room.join_rules", invite, &["P"]);
    g.member("K", ALICE, BOB, "leave", &["M"]);
    let after = |tip: &str| g.resolve(&[tip]);
    assert_eq!(after("JRB")[&key("m.room.member", ALICE)], "J1");
    assert_eq!(after("K")[&key("m.room.member", ALICE)], "J2");
    let state = g.resolve(&["JRB", "K"]);
    assert_eq!(state[&key("m.room.member", ALICE)], "J1");
    assert_eq!(state[&key("m.room.member", BOB)], "K");
    assert_eq!(state[&key("m.room.join_rules", "")], "JRZ");
}

//! Differential test: our state resolution against ruma's (`ruma-state-res`, a
//! dev-dependency used only here) on random forked graphs with membership, join rule and
//! power level churn, for v2 (room versions 5 and 11) and v2.1 (room version 12).
//!
//! A case is a script of numbers; each number adds one event (a topic, power levels,
//! join rules, a membership change, or an event merging two branches) on a branch chosen
//! by it, if the auth rules allow it there. Every merge, and the merge of all branches at
//! the end, is resolved by both implementations, which must agree. Cases per version:
//! `STATE_RES_CASES` (default 1,000; `STATE_RES_CASES=10000` for the full run).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use ruma_common::{EventId, RoomId, UserId};
use ruma_common::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId};
use ruma_events::{StateEventType, TimelineEventType};
use ruma_state_res::utils::event_id_set::EventIdSet;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::*;

/// An event as ruma's trait wants it.
#[derive(Clone, Debug)]
struct RumaEvent {
    id: OwnedEventId,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    ts: MilliSecondsSinceUnixEpoch,
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    prev: Vec<OwnedEventId>,
    auth: Vec<OwnedEventId>,
}

impl RumaEvent {
    fn from_pdu(id: &str, pdu: &Value) -> Self {
        let ids = |key: &str| -> Vec<OwnedEventId> {
            pdu[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| EventId::parse(v.as_str().unwrap()).unwrap())
                .collect()
        };
        Self {
            id: EventId::parse(id).unwrap(),
            room_id: pdu["room_id"].as_str().map(|r| RoomId::parse(r).unwrap()),
            sender: UserId::parse(pdu["sender"].as_str().unwrap()).unwrap(),
            ts: serde_json::from_value(pdu["origin_server_ts"].clone()).unwrap(),
            kind: TimelineEventType::from(pdu["type"].as_str().unwrap()),
            content: serde_json::value::to_raw_value(&pdu["content"]).unwrap(),
            state_key: pdu["state_key"].as_str().map(str::to_owned),
            prev: ids("prev_events"),
            auth: ids("auth_events"),
        }
    }
}

impl ruma_state_res::Event for RumaEvent {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        None
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// The conflicted state subgraph the plain way, for ruma: every event reachable from
/// one conflicted event that reaches another (auth edges).
fn naive_subgraph(g: &Graph, conflicted: &HashSet<String>) -> HashSet<String> {
    let reach = |start: &str| -> HashSet<String> {
        let mut seen = HashSet::from([start.to_owned()]);
        seen.extend(auth_chain(g, std::iter::once(start)));
        seen
    };
    let from_conflicted: HashSet<String> = conflicted.iter().flat_map(|c| reach(c)).collect();
    from_conflicted
        .into_iter()
        .filter(|n| reach(n).iter().any(|r| conflicted.contains(r)))
        .collect()
}

/// Both resolutions of the states after `tips`; panics (with the case) if they differ.
fn compare(g: &Graph, tips: &[String]) {
    let states: Vec<&StateMap> = tips.iter().map(|t| &g.state_after[&g.id(t)]).collect();
    let ours = resolve(g.version, &states, g);

    let ruma_states: Vec<ruma_state_res::StateMap<OwnedEventId>> = states
        .iter()
        .map(|s| {
            s.iter()
                .map(|((t, k), id)| {
                    (
                        (StateEventType::from(t.as_str()), k.clone()),
                        EventId::parse(id).unwrap(),
                    )
                })
                .collect()
        })
        .collect();
    let chains: Vec<EventIdSet<OwnedEventId>> = states
        .iter()
        .map(|s| {
            auth_chain(g, s.values().map(String::as_str))
                .into_iter()
                .map(|id| EventId::parse(&id).unwrap())
                .collect()
        })
        .collect();
    let all: HashMap<OwnedEventId, RumaEvent> = g
        .events
        .iter()
        .map(|(id, pdu)| (EventId::parse(id).unwrap(), RumaEvent::from_pdu(id, pdu)))
        .collect();
    let rules = match g.version {
        RoomVersion::V12 => ruma_common::room_version_rules::RoomVersionRules::V12,
        RoomVersion::V11 => ruma_common::room_version_rules::RoomVersionRules::V11,
        RoomVersion::V10 => ruma_common::room_version_rules::RoomVersionRules::V10,
        RoomVersion::V9 => ruma_common::room_version_rules::RoomVersionRules::V9,
        RoomVersion::V8 => ruma_common::room_version_rules::RoomVersionRules::V8,
        RoomVersion::V7 => ruma_common::room_version_rules::RoomVersionRules::V7,
        RoomVersion::V6 => ruma_common::room_version_rules::RoomVersionRules::V6,
        RoomVersion::V5 => ruma_common::room_version_rules::RoomVersionRules::V5,
        RoomVersion::V4 => ruma_common::room_version_rules::RoomVersionRules::V4,
        RoomVersion::V3 => ruma_common::room_version_rules::RoomVersionRules::V3,
        RoomVersion::V2 => ruma_common::room_version_rules::RoomVersionRules::V2,
        RoomVersion::V1 => unreachable!("ruma-state-res has no state resolution v1"),
    };
    let v2_rules = rules.state_res.v2_rules().copied().unwrap();
    let theirs = ruma_state_res::resolve(
        &rules.authorization,
        &v2_rules,
        &ruma_states,
        chains,
        |id: &EventId| all.get(id).cloned(),
        |conflicted| {
            let ids: HashSet<String> = conflicted
                .values()
                .flatten()
                .map(|id| id.to_string())
                .collect();
            Some(
                naive_subgraph(g, &ids)
                    .into_iter()
                    .map(|id| EventId::parse(&id).unwrap())
                    .collect(),
            )
        },
    )
    .expect("ruma resolves");
    let theirs: StateMap = theirs
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect();
    if ours != theirs {
        let by_id: HashMap<&String, &String> = g.ids.iter().map(|(n, i)| (i, n)).collect();
        let name = |id: &String| by_id.get(id).map_or(id.clone(), |n| (*n).clone());
        let mut differences = Vec::new();
        let keys: HashSet<&(String, String)> = ours.keys().chain(theirs.keys()).collect();
        for key in keys {
            let (a, b) = (ours.get(key), theirs.get(key));
            if a != b {
                differences.push(format!(
                    "{key:?}: ours {:?}, ruma {:?}",
                    a.map(name),
                    b.map(name)
                ));
            }
        }
        panic!("{} resolving {tips:?}: {differences:#?}", g.version);
    }
}

const USERS: [&str; 5] = [ALICE, BOB, CHARLIE, ZARA, EVELYN];
const LEVELS: [i64; 4] = [0, 10, 50, 100];

/// Plays a script into a graph, comparing at every merge and at the end.
fn play(version: RoomVersion, script: &[u32]) {
    let mut g = Graph::new(version);
    play_into(&mut g, script);
}

fn play_into(g: &mut Graph, script: &[u32]) {
    let version = g.version;
    let mut tips: Vec<String> = vec!["IMZ".to_owned()];
    for (n, op) in script.iter().enumerate() {
        let name = format!("E{n}");
        let tip_at = (op >> 4) as usize % tips.len();
        let tip = tips[tip_at].clone();
        let sender = USERS[(op >> 8) as usize % USERS.len()];
        let target = USERS[(op >> 12) as usize % USERS.len()];
        let event = match op % 8 {
            0 => json!({"type": "m.room.topic", "state_key": "", "sender": sender,
                        "content": {"topic": name}}),
            1 => {
                let mut users = serde_json::Map::new();
                if !version.creators_have_infinite_power() {
                    users.insert(ALICE.into(), json!(100));
                }
                for (i, user) in USERS[1..].iter().enumerate() {
                    let level = LEVELS[(op >> (16 + 2 * i)) as usize % LEVELS.len()];
                    if level > 0 {
                        users.insert((*user).into(), json!(level));
                    }
                }
                json!({"type": "m.room.power_levels", "state_key": "", "sender": sender,
                       "content": {"users": users}})
            }
            2 | 3 => {
                let membership = ["join", "leave", "ban", "invite"][(op >> 16) as usize % 4];
                let sender = if membership == "join" { target } else { sender };
                json!({"type": "m.room.member", "state_key": target, "sender": sender,
                       "content": {"membership": membership}})
            }
            4 => {
                let rule = ["public", "invite"][(op >> 16) as usize % 2];
                json!({"type": "m.room.join_rules", "state_key": "", "sender": sender,
                       "content": {"join_rule": rule}})
            }
            5 => {
                // A new branch from this tip: later events choose between them.
                tips.push(tip);
                continue;
            }
            _ => {
                if tips.len() < 2 {
                    continue;
                }
                let other_at = (tip_at + 1 + (op >> 16) as usize % (tips.len() - 1)) % tips.len();
                let other = tips[other_at].clone();
                compare(g, &[tip.clone(), other.clone()]);
                let message = json!({"type": "m.room.message", "sender": ALICE,
                                     "content": {"body": name}});
                if g.add_if_allowed(&name, message, &[&tip, &other]) {
                    tips.retain(|t| *t != tip && *t != other);
                    tips.push(name);
                }
                continue;
            }
        };
        if g.add_if_allowed(&name, event, &[&tip]) {
            tips[tip_at] = name;
        }
    }
    let mut distinct: Vec<String> = Vec::new();
    for tip in tips {
        if !distinct.contains(&tip) {
            distinct.push(tip);
        }
    }
    if distinct.len() > 1 {
        compare(g, &distinct);
    }
}

fn cases() -> u32 {
    std::env::var("STATE_RES_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn v2_agrees_with_ruma(script in proptest::collection::vec(any::<u32>(), 4..48)) {
        play(RoomVersion::V11, &script);
    }

    #[test]
    fn v2_agrees_with_ruma_in_room_v5(script in proptest::collection::vec(any::<u32>(), 4..48)) {
        play(RoomVersion::V5, &script);
    }

    #[test]
    fn v2_1_agrees_with_ruma(script in proptest::collection::vec(any::<u32>(), 4..48)) {
        play(RoomVersion::V12, &script);
    }
}

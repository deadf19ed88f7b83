//! Property: random interleavings of local sends and remote events that fork the graph
//! (a remote server's user writing on old events, renaming himself, trying what he may
//! not, being banned) leave
//! - forward extremities that are exactly the accepted events no accepted event names as
//!   a prev event;
//! - a current state (as clients read it) equal to resolving, from scratch, the states
//!   after each extremity, with `core::state_res` fed straight from the stored PDUs;
//! - joined members (as clients read them) that match that state;
//! - an auth difference from the auth index equal to walking the states' whole auth
//!   chains, for the states after the newest events.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;

use common::remote::{remote_pdu, RemoteDraft, TestSource, BOB, REMOTE};
use common::TestServer;
use ourwhats::core::state_res::{self, ResolutionEvents};
use ourwhats::core::{RoomVersion, UserId};
use ourwhats::services::rooms::create::CreateRoomRequest;
use ourwhats::services::rooms::event_store::EventStore;
use ourwhats::services::rooms::graph::{self, EventStatus};
use ourwhats::services::rooms::membership::MemberProfile;
use ourwhats::services::rooms::receive::PduOutcome;
use ourwhats::services::rooms::resolution;
use ourwhats::services::rooms::sending::Txn;
use ourwhats::services::rooms::Rooms;
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Step {
    /// Alice sends a message.
    LocalMessage,
    /// Alice changes the topic.
    LocalTopic,
    /// Bob says something on the n-th newest accepted event (0: the newest).
    RemoteMessage(usize),
    /// Bob renames himself on the n-th newest accepted event.
    RemoteRename(usize),
    /// Bob, without the power, changes the topic (rejected).
    RemoteTopic(usize),
    /// Bob's event naming two accepted events (a merge).
    RemoteMerge(usize, usize),
    /// Alice bans, then unbans, bob.
    BanAndUnban,
}

fn step() -> impl Strategy<Value = Step> {
    let back = 0usize..6;
    prop_oneof![
        3 => Just(Step::LocalMessage),
        1 => Just(Step::LocalTopic),
        4 => back.clone().prop_map(Step::RemoteMessage),
        2 => back.clone().prop_map(Step::RemoteRename),
        1 => back.clone().prop_map(Step::RemoteTopic),
        2 => (back.clone(), back).prop_map(|(a, b)| Step::RemoteMerge(a, b)),
        1 => Just(Step::BanAndUnban),
    ]
}

fn alice() -> UserId {
    UserId::parse("@alice:localhost").unwrap()
}

/// The accepted events of the room, oldest first (its timeline).
fn accepted(store: &EventStore, room: &str) -> Vec<String> {
    let short = store.room(room).unwrap().unwrap().short;
    let timeline = store.timeline(short, 0, u64::MAX, false, 100_000).unwrap();
    let shorts: Vec<u64> = timeline.iter().map(|(_, s)| *s).collect();
    store.state().event_ids_of(&shorts).unwrap()
}

/// Bob's event of `kind` on `prev`, with auth events from the state after `prev[0]`.
fn bob_event(
    store: &EventStore,
    room: &str,
    prev: Vec<String>,
    kind: &str,
    content: Value,
) -> Value {
    let first = store.event_by_id(&prev[0]).unwrap().unwrap();
    let state = first.meta.state_after;
    let id_of = |kind: &str, key: &str| {
        store
            .state_event(state, kind, key)
            .unwrap()
            .map(|e| e.event_id)
    };
    let mut auth: Vec<String> = [
        id_of("m.room.power_levels", ""),
        id_of("m.room.member", BOB),
    ]
    .into_iter()
    .flatten()
    .collect();
    let state_key = match kind {
        "m.room.member" => {
            auth.extend(id_of("m.room.join_rules", ""));
            Some(BOB)
        }
        "m.room.topic" => Some(""),
        _ => None,
    };
    let depth = prev
        .iter()
        .map(|id| {
            store.event_by_id(id).unwrap().unwrap().pdu()["depth"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap();
    remote_pdu(RemoteDraft {
        room_id: room,
        sender: BOB,
        kind,
        state_key,
        content,
        prev,
        auth,
        depth: depth + 1,
    })
    .1
}

async fn apply(rooms: &Rooms, room: &str, step: &Step, n: usize) {
    let store = rooms.store();
    let newest = |back: usize| -> String {
        let all = accepted(store, room);
        all[all.len() - 1 - back.min(all.len() - 1)].clone()
    };
    let source = TestSource::default();
    let remote = |pdu: Value| async move {
        let (_, outcome) = rooms.receive_pdu(REMOTE, pdu, &source).await.unwrap();
        assert!(
            !matches!(
                outcome,
                PduOutcome::Dropped(_) | PduOutcome::MissingEvents(_)
            ),
            "{outcome:?}"
        );
    };
    match step {
        Step::LocalMessage => {
            let txn = Txn {
                device_id: "D",
                txn_id: &format!("t{n}"),
            };
            let content = json!({"msgtype": "m.text", "body": "hi"});
            rooms
                .send_message(&alice(), room, "m.room.message", content, txn)
                .await
                .unwrap();
        }
        Step::LocalTopic => {
            let content = json!({"topic": format!("topic {n}")});
            rooms
                .send_state(&alice(), room, "m.room.topic", "", content)
                .await
                .unwrap();
        }
        Step::RemoteMessage(back) => {
            let content = json!({"msgtype": "m.text", "body": format!("remote {n}")});
            remote(bob_event(
                store,
                room,
                vec![newest(*back)],
                "m.room.message",
                content,
            ))
            .await;
        }
        Step::RemoteRename(back) => {
            let content = json!({"membership": "join", "displayname": format!("Bob {n}")});
            remote(bob_event(
                store,
                room,
                vec![newest(*back)],
                "m.room.member",
                content,
            ))
            .await;
        }
        Step::RemoteTopic(back) => {
            let content = json!({"topic": "bob's topic"});
            remote(bob_event(
                store,
                room,
                vec![newest(*back)],
                "m.room.topic",
                content,
            ))
            .await;
        }
        Step::RemoteMerge(a, b) => {
            let mut prev = vec![newest(*a), newest(*b)];
            prev.dedup();
            let content = json!({"msgtype": "m.text", "body": format!("merge {n}")});
            remote(bob_event(store, room, prev, "m.room.message", content)).await;
        }
        Step::BanAndUnban => {
            let bob = UserId::parse(BOB).unwrap();
            // Refused when bob is not joined at the moment; that is fine.
            if rooms.ban(&alice(), room, &bob, None).await.is_ok() {
                rooms.unban(&alice(), room, &bob, None).await.unwrap();
            }
        }
    }
}

/// Stored events for the oracle, read straight from the PDUs.
struct Stored<'a>(&'a EventStore);

impl ResolutionEvents for Stored<'_> {
    fn event(&self, id: &str) -> Option<Arc<Value>> {
        self.0
            .event_by_id(id)
            .unwrap()
            .map(|e| Arc::new(e.pdu().clone()))
    }
    fn is_rejected(&self, id: &str) -> bool {
        let short = self.0.state().find_event(id).unwrap();
        short.is_some_and(|s| {
            matches!(
                graph::record(self.0, s).unwrap().map(|r| r.status),
                Some(EventStatus::Rejected { .. })
            )
        })
    }
    fn signed_by(&self, _: &Value, _: &str) -> bool {
        true
    }
}

fn state_after(store: &EventStore, id: &str) -> state_res::StateMap {
    let snapshot = store.event_by_id(id).unwrap().unwrap().meta.state_after;
    store
        .state_events(snapshot, None)
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                (e.kind().to_owned(), e.state_key().unwrap().to_owned()),
                e.event_id,
            )
        })
        .collect()
}

fn check_room(rooms: &Rooms, room: &str) {
    let store = rooms.store();
    let record = store.room(room).unwrap().unwrap().record;

    // Extremities: the accepted events without an accepted child.
    let accepted = accepted(store, room);
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    let mut named = HashSet::new();
    for id in &accepted {
        let pdu = store.event_by_id(id).unwrap().unwrap().pdu().clone();
        for prev in ourwhats::core::pdu::event_ids(&pdu, "prev_events") {
            named.insert(prev.to_owned());
        }
    }
    let mut childless: Vec<String> = accepted
        .iter()
        .filter(|id| !named.contains(*id))
        .cloned()
        .collect();
    childless.sort();
    let mut extremities = record.extremities.clone();
    extremities.sort();
    assert_eq!(extremities, childless, "extremities");
    assert!(extremities.iter().all(|e| accepted_set.contains(e)));

    // The current state, resolved from scratch.
    let states: Vec<state_res::StateMap> =
        extremities.iter().map(|e| state_after(store, e)).collect();
    let refs: Vec<&state_res::StateMap> = states.iter().collect();
    let expected = if states.len() == 1 {
        states[0].clone()
    } else {
        state_res::resolve(RoomVersion::V12, &refs, &Stored(store))
    };
    let current: state_res::StateMap = store
        .state_events(record.state, None)
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                (e.kind().to_owned(), e.state_key().unwrap().to_owned()),
                e.event_id,
            )
        })
        .collect();
    assert_eq!(current, expected, "current state");

    // The auth index answers the auth difference the walk over whole chains does, for
    // the states after the newest accepted events taken two and three at a time.
    let newest: Vec<&String> = accepted.iter().rev().take(6).collect();
    let snapshot = |id: &String| store.event_by_id(id).unwrap().unwrap().meta.state_after;
    let mut groups: Vec<Vec<&String>> = Vec::new();
    for (i, a) in newest.iter().enumerate() {
        for b in &newest[i + 1..] {
            groups.push(vec![a, b]);
        }
    }
    groups.extend(newest.windows(3).map(|w| w.to_vec()));
    for group in groups {
        let states: Vec<state_res::StateMap> =
            group.iter().map(|e| state_after(store, e)).collect();
        let refs: Vec<&state_res::StateMap> = states.iter().collect();
        let walked = state_res::auth_difference(&Stored(store), &refs);
        let snapshots: Vec<u64> = group.iter().map(|e| snapshot(e)).collect();
        let indexed = resolution::auth_difference(store, &snapshots).unwrap();
        assert_eq!(
            indexed, walked,
            "auth difference of the states after {group:?}"
        );
    }

    // Each member's membership record, and the joined count, follow the state.
    let mut joined = 0;
    for ((kind, user), id) in &expected {
        if kind != "m.room.member" {
            continue;
        }
        let membership = store.event_by_id(id).unwrap().unwrap().content()["membership"]
            .as_str()
            .unwrap()
            .to_owned();
        joined += usize::from(membership == "join");
        assert_eq!(
            rooms.membership_of(user, room).unwrap(),
            Some(membership),
            "{user}"
        );
    }
    assert_eq!(record.joined as usize, joined, "joined count");
}

fn cases() -> u32 {
    std::env::var("RECEIVE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn local_sends_and_remote_forks_keep_extremities_and_state_right(
        steps in proptest::collection::vec(step(), 1..30),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = TestServer::start().await;
            let rooms = &server.running().services.rooms;
            let request = CreateRoomRequest {
                preset: Some("public_chat".to_owned()),
                ..CreateRoomRequest::default()
            };
            let no_profile = |_: &UserId| None;
            let room = rooms
                .create_room(&alice(), request, &MemberProfile::default(), &no_profile)
                .await
                .unwrap()
                .room_id;
            // Bob joins from his server.
            let store = rooms.store();
            let newest = accepted(store, &room).pop().unwrap();
            let join = bob_event(store, &room, vec![newest], "m.room.member", json!({"membership": "join"}));
            let (_, outcome) = rooms.receive_pdu(REMOTE, join, &TestSource::default()).await.unwrap();
            assert_eq!(outcome, PduOutcome::Accepted);
            for (n, step) in steps.iter().enumerate() {
                apply(rooms, &room, step, n).await;
            }
            check_room(rooms, &room);
            server.stop().await;
        });
    }
}

//! Property: whatever sequence of membership and power-level changes users attempt, the
//! room's stored graph only holds events the auth rules allow against the state before
//! them, and every stored state snapshot is exactly the fold of the events before it.

use crate::common;

use std::collections::HashMap;

use common::TestServer;
use ourwhats::core::auth_rules::{self, AuthContext};
use ourwhats::core::{RoomVersion, UserId};
use ourwhats::services::rooms::create::CreateRoomRequest;
use ourwhats::services::rooms::event_store::StoredEvent;
use ourwhats::services::rooms::membership::MemberProfile;
use ourwhats::services::rooms::sending::Txn;
use ourwhats::services::rooms::Rooms;
use proptest::prelude::*;
use serde_json::{json, Value};

const USERS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Invite(usize, usize),
    Join(usize),
    Leave(usize),
    Kick(usize, usize),
    Ban(usize, usize),
    Unban(usize, usize),
    SetUserLevel(usize, usize, i64),
    SetLevel(usize, &'static str, i64),
    Send(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let level = prop_oneof![Just(0i64), Just(50), Just(100)];
    let field = prop_oneof![
        Just("ban"),
        Just("kick"),
        Just("invite"),
        Just("state_default"),
        Just("events_default")
    ];
    prop_oneof![
        (user.clone(), user.clone()).prop_map(|(a, t)| Op::Invite(a, t)),
        user.clone().prop_map(Op::Join),
        user.clone().prop_map(Op::Leave),
        (user.clone(), user.clone()).prop_map(|(a, t)| Op::Kick(a, t)),
        (user.clone(), user.clone()).prop_map(|(a, t)| Op::Ban(a, t)),
        (user.clone(), user.clone()).prop_map(|(a, t)| Op::Unban(a, t)),
        (user.clone(), user.clone(), level.clone()).prop_map(|(a, t, l)| Op::SetUserLevel(a, t, l)),
        (user.clone(), field, level).prop_map(|(a, f, l)| Op::SetLevel(a, f, l)),
        user.prop_map(Op::Send),
    ]
}

fn uid(i: usize) -> UserId {
    UserId::parse(&format!("@u{i}:localhost")).unwrap()
}

async fn apply(rooms: &Rooms, room: &str, op: &Op, n: usize) {
    let profile = MemberProfile::default();
    // Refusals are expected; only what was stored matters.
    let _ = match op {
        Op::Invite(a, t) => rooms
            .invite(&uid(*a), room, &uid(*t), None, false, None)
            .await
            .map(|_| ()),
        Op::Join(a) => rooms.join(&uid(*a), room, None, &profile, false).await,
        Op::Leave(a) => rooms.leave(&uid(*a), room, None).await,
        Op::Kick(a, t) => rooms.kick(&uid(*a), room, &uid(*t), None).await,
        Op::Ban(a, t) => rooms.ban(&uid(*a), room, &uid(*t), None).await,
        Op::Unban(a, t) => rooms.unban(&uid(*a), room, &uid(*t), None).await,
        Op::SetUserLevel(a, _, level) | Op::SetLevel(a, _, level) => {
            let current = rooms.store().room(room).unwrap().unwrap().record.state;
            let mut content = rooms
                .store()
                .state_event(current, "m.room.power_levels", "")
                .unwrap()
                .map(|e| e.content().clone())
                .unwrap_or_else(|| json!({}));
            match op {
                Op::SetUserLevel(_, t, _) => {
                    content["users"][uid(*t).as_str()] = json!(level);
                }
                Op::SetLevel(_, field, _) => content[*field] = json!(level),
                _ => unreachable!(),
            }
            rooms
                .send_state(&uid(*a), room, "m.room.power_levels", "", content)
                .await
                .map(|_| ())
        }
        Op::Send(a) => rooms
            .send_message(
                &uid(*a),
                room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": "hi"}),
                Txn {
                    device_id: "D",
                    txn_id: &format!("t{n}"),
                },
            )
            .await
            .map(|_| ()),
    };
}

fn state_of(rooms: &Rooms, snapshot: u64) -> HashMap<(String, String), String> {
    if snapshot == 0 {
        return HashMap::new();
    }
    rooms
        .store()
        .state_events(snapshot, None)
        .unwrap()
        .into_iter()
        .map(|e: StoredEvent| {
            (
                (e.kind().to_owned(), e.state_key().unwrap().to_owned()),
                e.event_id,
            )
        })
        .collect()
}

fn check_room(rooms: &Rooms, room_id: &str, version: RoomVersion) {
    let store = rooms.store();
    let room = store.room(room_id).unwrap().unwrap();
    let timeline = store
        .timeline(room.short, 0, u64::MAX, false, 100_000)
        .unwrap();
    let shorts: Vec<u64> = timeline.iter().map(|(_, s)| *s).collect();
    let events = store.events(&shorts).unwrap();
    let signed_by = |_: &str| true;
    let ctx = AuthContext {
        version,
        signed_by: &signed_by,
    };
    let mut fold: HashMap<(String, String), Value> = HashMap::new();
    let mut fold_ids: HashMap<(String, String), String> = HashMap::new();
    let mut previous: Option<String> = None;
    for event in &events {
        assert_eq!(
            state_of(rooms, event.meta.state_before),
            fold_ids,
            "state before {}",
            event.event_id
        );
        if let Err(e) = auth_rules::check(&ctx, event.pdu(), &fold) {
            panic!("stored event {} breaks the auth rules: {e}", event.event_id);
        }
        if let Some(prev) = &previous {
            assert_eq!(event.pdu()["prev_events"], json!([prev]));
        }
        if let Some(key) = event.state_key() {
            let k = (event.kind().to_owned(), key.to_owned());
            fold.insert(k.clone(), event.pdu().clone());
            fold_ids.insert(k, event.event_id.clone());
        }
        assert_eq!(state_of(rooms, event.meta.state_after), fold_ids);
        previous = Some(event.event_id.clone());
    }
    assert_eq!(state_of(rooms, room.record.state), fold_ids);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn membership_and_power_changes_never_break_the_auth_rules(
        version in prop_oneof![Just("10"), Just("11"), Just("12")],
        ops in proptest::collection::vec(op(), 1..40),
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
                room_version: Some(version.to_owned()),
                preset: Some("public_chat".to_owned()),
                ..CreateRoomRequest::default()
            };
            let no_profile = |_: &UserId| None;
            let room = rooms
                .create_room(&uid(0), request, &MemberProfile::default(), &no_profile)
                .await
                .unwrap()
                .room_id;
            for (n, op) in ops.iter().enumerate() {
                apply(rooms, &room, op, n).await;
            }
            check_room(rooms, &room, RoomVersion::from_id(version).unwrap());
            server.stop().await;
        });
    }
}

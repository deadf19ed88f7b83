//! Joining a room of another server with a partial state (spec v1.6 `send_join` with
//! `omit_members`; MSC3706/MSC3902, as Synapse does): two real instances over TLS. The
//! joining server's member resync is held back a few seconds
//! (`federation.partial_state_resync_delay_ms`) so that the partial-state window can be
//! looked at: the room must be usable in it (name and topic shown, sending, receiving
//! from members whose membership it does not know yet), and whole after it (members,
//! `/sync`, the federation reads it refused meanwhile).

use std::time::{Duration, Instant};

use federation_tests::{enc, Cluster, Instance, User};
use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::RoomVersion;
use reqwest::Method;
use serde_json::{json, Value};

/// How long the joining server's resync waits in these tests.
const RESYNC_DELAY: Duration = Duration::from_secs(20);

/// Members the room has on the resident server besides its creator.
const MEMBERS: usize = 12;

/// A cluster of two whose second server holds its partial states for [`RESYNC_DELAY`].
async fn cluster() -> Cluster {
    Cluster::start_with(2, |i, config| {
        if i == 1 {
            config.federation.partial_state_resync_delay = RESYNC_DELAY;
        }
    })
    .await
    .unwrap()
}

/// A public room on `a` with a name, a topic and [`MEMBERS`] local members besides
/// alice; answers alice, the members and the room.
async fn big_room(a: &Instance) -> (User, Vec<User>, String) {
    let alice = User::register(a, "alice").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Town hall", "topic": "all welcome"}))
        .await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let member = User::register(a, &format!("member{i}")).await.unwrap();
        let (status, body) = member
            .post(&format!("/join/{}", enc(&room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        members.push(member);
    }
    (alice, members, room)
}

/// The member events of a joined room's section of a sync answer (state and timeline).
fn members_in(sync: &Value, room: &str) -> Vec<String> {
    let section = &sync["rooms"]["join"][room];
    ["state", "timeline"]
        .iter()
        .flat_map(|part| section[part]["events"].as_array().into_iter().flatten())
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect()
}

/// The body of a message in a joined room's timeline of a sync answer, if any.
fn has_message(sync: &Value, room: &str, body: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["content"]["body"] == body)
}

/// Sends a message (must succeed); answers its event id.
async fn send(user: &User, room: &str, txn: &str, body: &str) -> String {
    let path = format!("/rooms/{}/send/m.room.message/{txn}", enc(room));
    let (status, answer) = user
        .put(&path, json!({"msgtype": "m.text", "body": body}))
        .await;
    assert_eq!(status, 200, "{}: {answer}", user.user_id);
    answer["event_id"].as_str().unwrap_or_default().to_owned()
}

/// `user`'s sync of everything from `since` (or from the start), without waiting.
async fn sync_from(user: &User, since: Option<&str>) -> Value {
    let path = match since {
        Some(token) => format!("/sync?timeout=0&since={}", enc(token)),
        None => "/sync?timeout=0".to_owned(),
    };
    let (status, body) = user.get(&path).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_partial_state_join_is_usable_at_once_and_gets_its_members_after() {
    let cluster = cluster().await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let (alice, members, room) = big_room(a).await;
    let bob = User::register(b, "bob").await.unwrap();

    let started = Instant::now();
    bob.join_via(&room, a.name()).await;
    let first = sync_from(&bob, None).await;
    assert!(
        started.elapsed() < RESYNC_DELAY,
        "the join and a first sync took {:?}: the partial window is gone",
        started.elapsed()
    );
    // In the partial state: the room with its name and topic, without its members.
    let section = &first["rooms"]["join"][&room];
    let state: Vec<&Value> = section["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            section["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .collect();
    let name = state.iter().find(|e| e["type"] == "m.room.name");
    assert_eq!(
        name.map(|e| &e["content"]["name"]),
        Some(&json!("Town hall")),
        "{section}"
    );
    assert!(
        state.iter().any(|e| e["type"] == "m.room.topic"),
        "{section}"
    );
    let known = members_in(&first, &room);
    assert!(
        known.len() < MEMBERS,
        "the partial state holds {} members: {known:?}",
        known.len()
    );
    assert!(known.contains(&bob.user_id), "{known:?}");
    // The joining server does not answer for the room's state meanwhile (its state is
    // not whole).
    let state_ids = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(&room),
        enc(section["timeline"]["events"][0]["event_id"]
            .as_str()
            .unwrap_or(""))
    );
    let (status, body) = a.ask(b.name(), Method::GET, &state_ids, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{body}"
    );

    // Usable: bob's message reaches the resident server's users, and a member whose
    // membership the partial state lacks is heard.
    let hello = send(&bob, &room, "b1", "hello from the partial side").await;
    // The resident server, whose members B does not know yet, may read it from B (the
    // room's history is shared).
    let path = format!("/_matrix/federation/v1/event/{}", enc(&hello));
    let (status, body) = a.ask(b.name(), Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    let seen = alice
        .sync_until(|s| has_message(s, &room, "hello from the partial side"))
        .await;
    assert!(seen.is_some(), "alice never got bob's message");
    send(&members[3], &room, "m1", "member3 speaks early").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let heard = bob
        .sync_until(|s| has_message(s, &room, "member3 speaks early"))
        .await;
    assert!(
        heard.is_some(),
        "bob never got the message of a member unknown to his server"
    );
    assert!(
        started.elapsed() < RESYNC_DELAY,
        "the partial window closed ({:?}) before the early checks ended; raise RESYNC_DELAY",
        started.elapsed()
    );

    assert!(b.running().services.rooms.is_partial(&room).unwrap());

    // Another of B's users joining waits for the member list (a join is judged on the
    // members), then gets in.
    let carol = User::register(b, "carol").await.unwrap();
    carol.join_via(&room, a.name()).await;
    assert!(
        started.elapsed() >= RESYNC_DELAY,
        "carol's join was judged on the partial state"
    );
    assert!(!b.running().services.rooms.is_partial(&room).unwrap());

    // The member list is whole.
    let (status, list) = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await;
    assert_eq!(status, 200, "{list}");
    let joined = list["joined"].as_object().map_or(0, |m| m.len());
    assert_eq!(joined, MEMBERS + 3, "{list}");

    // A sync from before the resync carries the room's whole state, as after a join.
    let after = sync_from(&bob, Some(&since)).await;
    let now_known = members_in(&after, &room);
    for member in &members {
        assert!(
            now_known.contains(&member.user_id),
            "{} missing from the sync after the resync: {now_known:?}",
            member.user_id
        );
    }
    // And everything keeps flowing both ways.
    send(&members[7], &room, "m2", "member7 after the resync").await;
    let heard = bob
        .sync_until(|s| has_message(s, &room, "member7 after the resync"))
        .await;
    assert!(heard.is_some(), "bob never got member7's message");
    let (status, body) = a.ask(b.name(), Method::GET, &state_ids, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob
        .get(&format!("/rooms/{}/members?membership=join", enc(&room)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"].as_array().map_or(0, Vec::len), MEMBERS + 3);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_partial_state_resync_resumes_after_a_restart() {
    let mut cluster = cluster().await;
    let (room, mut bob) = {
        let a = &cluster.instances[0];
        let (_, _, room) = big_room(a).await;
        let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
        bob.join_via(&room, a.name()).await;
        (room, bob)
    };
    // Stopped within the partial window, before the resync began; bob's token outlives
    // the restart (the client listener's port does not).
    assert!(cluster.instances[1]
        .running()
        .services
        .rooms
        .is_partial(&room)
        .unwrap());
    cluster.instances[1].restart().await.unwrap();
    bob.base = cluster.instances[1].client_url();
    let (status, list) = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await;
    assert_eq!(status, 200, "{list}");
    let joined = list["joined"].as_object().map_or(0, |m| m.len());
    assert_eq!(joined, MEMBERS + 2, "{list}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn leaving_within_the_partial_window_ends_the_partial_state() {
    let cluster = cluster().await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let (_, _, room) = big_room(a).await;
    let bob = User::register(b, "bob").await.unwrap();
    bob.join_via(&room, a.name()).await;
    assert!(b.running().services.rooms.is_partial(&room).unwrap());
    let (status, body) = bob
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Nobody of ours is left to ask the room's state for: no resync, no partial state.
    assert!(!b.running().services.rooms.is_partial(&room).unwrap());
    // Joining again works (a new partial join, completed in turn).
    bob.join_via(&room, a.name()).await;
    let (status, list) = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["joined"].as_object().map_or(0, |m| m.len()),
        MEMBERS + 2
    );
    assert!(!b.running().services.rooms.is_partial(&room).unwrap());
    cluster.shutdown().await;
}

/// Waits until `instance`'s partial state of `room` is complete (the resync ended).
async fn resync_ended(instance: &Instance, room: &str) {
    let waited = Instant::now();
    while instance.running().services.rooms.is_partial(room).unwrap() {
        assert!(
            waited.elapsed() < RESYNC_DELAY * 3,
            "the resync never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `user`'s membership in `room` as `viewer`'s server holds it.
async fn membership(viewer: &User, room: &str, user: &str) -> String {
    let path = format!("/rooms/{}/state/m.room.member/{}", enc(room), enc(user));
    let (status, content) = viewer.get(&path).await;
    assert_eq!(status, 200, "{content}");
    content["membership"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The current state event id of `(kind, key)` in `room` on `instance`.
fn state_id(instance: &Instance, room: &str, kind: &str, key: &str) -> String {
    let store = instance.running().services.rooms.store();
    let state = store.room(room).unwrap().unwrap().record.state;
    store
        .state_event(state, kind, key)
        .unwrap()
        .unwrap()
        .event_id
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A PDU of `sender` (a user of `origin`) made and signed by hand.
fn hand_made(
    origin: &Instance,
    room: &str,
    (sender, kind, state_key): (&str, &str, Option<&str>),
    content: Value,
    (prev, auth, depth): (&str, Vec<String>, u64),
) -> (String, Value) {
    let template = PduTemplate {
        room_id: Some(room.to_owned()),
        sender: sender.to_owned(),
        kind: kind.into(),
        state_key: state_key.map(str::to_owned),
        content,
        prev_events: vec![prev.to_owned()],
        auth_events: auth,
        depth,
        origin_server_ts: now_ms(),
        redacts: None,
    };
    let key = &origin.running().services.signing_key;
    let built = pdu::build(RoomVersion::V12, template, origin.name(), key).unwrap();
    (built.event_id, built.pdu)
}

/// An event the partial state allowed and the whole state refuses (a banned member's
/// state event, judged on the membership its own auth events give while the member list
/// is missing) is taken out of the state of the events that came after it, not only out
/// of the room's current state: the next event built on them must not bring it back.
#[tokio::test]
async fn an_event_refused_at_completion_leaves_the_state_of_the_events_after_it() {
    let cluster = cluster().await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let (alice, _members, room) = big_room(a).await;
    let mallory = User::register(a, "mallory").await.unwrap();
    mallory.join_via(&room, a.name()).await;
    let mallory_join = state_id(a, &room, "m.room.member", &mallory.user_id);
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/ban", enc(&room)),
            json!({"user_id": mallory.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bob = User::register(b, "bob").await.unwrap();
    bob.join_via(&room, a.name()).await;
    assert!(b.running().services.rooms.is_partial(&room).unwrap());

    // Hand-made by A's key: mallory renames herself on her old join (the partial state
    // lacks her ban), and alice speaks on that.
    let bob_join = state_id(b, &room, "m.room.member", &bob.user_id);
    let depth = b
        .running()
        .services
        .rooms
        .store()
        .event_by_id(&bob_join)
        .unwrap()
        .unwrap()
        .pdu()["depth"]
        .as_u64()
        .unwrap();
    let levels = state_id(a, &room, "m.room.power_levels", "");
    let rules = state_id(a, &room, "m.room.join_rules", "");
    let alice_join = state_id(a, &room, "m.room.member", &alice.user_id);
    let rename = hand_made(
        a,
        &room,
        (&mallory.user_id, "m.room.member", Some(&mallory.user_id)),
        json!({"membership": "join", "displayname": "not banned"}),
        (
            &bob_join,
            vec![levels.clone(), rules, mallory_join],
            depth + 1,
        ),
    );
    let said = hand_made(
        a,
        &room,
        (&alice.user_id, "m.room.message", None),
        json!({"msgtype": "m.text", "body": "on the rename"}),
        (&rename.0, vec![levels, alice_join], depth + 2),
    );
    let path = "/_matrix/federation/v1/send/refused-at-completion";
    let body = json!({"origin": a.name(), "origin_server_ts": now_ms(),
                      "pdus": [rename.1, said.1]});
    let (status, answer) = a.ask(b.name(), Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&rename.0], json!({}), "{answer}");
    assert_eq!(answer["pdus"][&said.0], json!({}), "{answer}");
    assert!(
        b.running().services.rooms.is_partial(&room).unwrap(),
        "the hand-made events came after the resync: raise RESYNC_DELAY"
    );

    // The member list comes: the rename is refused, mallory is banned again.
    resync_ended(b, &room).await;
    assert_eq!(membership(&bob, &room, &mallory.user_id).await, "ban");
    // Alice's next message comes on her last one alone: the room's state after it is the
    // state after hers, which must not hold the refused rename.
    let levels = state_id(a, &room, "m.room.power_levels", "");
    let alice_join = state_id(a, &room, "m.room.member", &alice.user_id);
    let next = hand_made(
        a,
        &room,
        (&alice.user_id, "m.room.message", None),
        json!({"msgtype": "m.text", "body": "after the resync"}),
        (&said.0, vec![levels, alice_join], depth + 3),
    );
    let path = "/_matrix/federation/v1/send/after-completion";
    let body = json!({"origin": a.name(), "origin_server_ts": now_ms(), "pdus": [next.1]});
    let (status, answer) = a.ask(b.name(), Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&next.0], json!({}), "{answer}");
    assert_eq!(membership(&bob, &room, &mallory.user_id).await, "ban");
    // And bob's own message after it.
    send(&bob, &room, "b-after", "bob after the resync").await;
    assert_eq!(membership(&bob, &room, &mallory.user_id).await, "ban");
    cluster.shutdown().await;
}

/// An event soft-failed within the partial window (a banned member's message on her old
/// join) keeps a state of ours that another server may build on: the completion fills
/// it with the members the partial state lacked, so that an event built on it after the
/// resync is judged on the whole state (a member's message is not refused as a
/// stranger's).
#[tokio::test]
async fn an_event_soft_failed_in_the_partial_window_gets_the_whole_state_too() {
    let cluster = cluster().await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let (alice, members, room) = big_room(a).await;
    let mallory = User::register(a, "mallory").await.unwrap();
    mallory.join_via(&room, a.name()).await;
    let mallory_join = state_id(a, &room, "m.room.member", &mallory.user_id);
    let bob = User::register(b, "bob").await.unwrap();
    bob.join_via(&room, a.name()).await;
    assert!(b.running().services.rooms.is_partial(&room).unwrap());
    let bob_join = state_id(b, &room, "m.room.member", &bob.user_id);

    // Mallory is banned within the window: B's current state holds the ban.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/ban", enc(&room)),
            json!({"user_id": mallory.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let path = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&mallory.user_id)
    );
    let waited = Instant::now();
    while bob.get(&path).await.1["membership"] != "ban" {
        assert!(waited.elapsed() < RESYNC_DELAY, "the ban never came to B");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Hand-made by A's key: mallory speaks on bob's join, before her ban. It passes on
    // the state before it and fails on B's current state: soft-failed.
    let depth = b
        .running()
        .services
        .rooms
        .store()
        .event_by_id(&bob_join)
        .unwrap()
        .unwrap()
        .pdu()["depth"]
        .as_u64()
        .unwrap();
    let levels = state_id(a, &room, "m.room.power_levels", "");
    let said = hand_made(
        a,
        &room,
        (&mallory.user_id, "m.room.message", None),
        json!({"msgtype": "m.text", "body": "on my old join"}),
        (&bob_join, vec![levels.clone(), mallory_join], depth + 1),
    );
    let path = "/_matrix/federation/v1/send/soft-failed-in-window";
    let body = json!({"origin": a.name(), "origin_server_ts": now_ms(), "pdus": [said.1]});
    let (status, answer) = a.ask(b.name(), Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&said.0], json!({}), "{answer}");
    let (status, _) = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&said.0)))
        .await;
    assert_eq!(status, 404, "a soft-failed event is not served");
    assert!(
        b.running().services.rooms.is_partial(&room).unwrap(),
        "the hand-made event came after the resync: raise RESYNC_DELAY"
    );

    resync_ended(b, &room).await;

    // A member the partial state lacked answers mallory's message alone: the state
    // before the answer is the state after the soft-failed message, which must hold
    // the member's join.
    let member = &members[0];
    let member_join = state_id(a, &room, "m.room.member", &member.user_id);
    let reply = hand_made(
        a,
        &room,
        (&member.user_id, "m.room.message", None),
        json!({"msgtype": "m.text", "body": "on the soft-failed one"}),
        (&said.0, vec![levels, member_join], depth + 2),
    );
    let path = "/_matrix/federation/v1/send/on-the-soft-failed";
    let body = json!({"origin": a.name(), "origin_server_ts": now_ms(), "pdus": [reply.1]});
    let (status, answer) = a.ask(b.name(), Method::PUT, path, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][&reply.0], json!({}), "{answer}");
    let (status, event) = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&reply.0)))
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["content"]["body"], "on the soft-failed one");
    assert_eq!(membership(&bob, &room, &mallory.user_id).await, "ban");
    assert_eq!(membership(&bob, &room, &member.user_id).await, "join");
    cluster.shutdown().await;
}

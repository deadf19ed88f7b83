//! `kill -9` of a sending server while to-device messages wait for a destination that is
//! down, and of either server of a room while messages flow both ways: after the restart
//! nothing is lost, nothing is doubled, the order holds.

use std::time::{Duration, Instant};

use federation_tests::process::ServerProcess;
use federation_tests::{enc, free_port, Cluster, User};
use serde_json::json;

#[tokio::test]
async fn a_sender_killed_mid_queue_delivers_everything_once_in_order_after_restart() {
    let mut cluster = Cluster::start(1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sender = ServerProcess::start(&cluster.ca, dir.path(), free_port().unwrap()).unwrap();
    let alice = User::register_at(&sender.client_url, "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[0], "bob").await.unwrap();
    let (_, since) = bob.to_device_events(None, 0, Duration::ZERO).await;

    cluster.instances[0].stop().await;
    for n in 1..=3 {
        let (status, body) = alice
            .put(
                &format!("/sendToDevice/m.test/t{n}"),
                json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": n}}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // The sender has tried (and failed) by now; then it dies without a chance to flush.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sender.kill_and_restart().unwrap();
    let alice = User {
        base: sender.client_url.clone(),
        ..alice
    };

    cluster.instances[0].restart().await.unwrap();
    let bob = User {
        base: cluster.instances[0].client_url(),
        ..bob
    };
    // Bob's server contacts the sender: its back-off ends.
    let (status, _) = bob.get(&format!("/profile/{}", enc(&alice.user_id))).await;
    assert_eq!(status, 200);
    let (events, since) = bob
        .to_device_events(since, 3, Duration::from_secs(30))
        .await;
    let order: Vec<u64> = events
        .iter()
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, vec![1, 2, 3], "from {}: {events:?}", sender.name);
    let (more, _) = bob.to_device_events(since, 1, Duration::from_secs(2)).await;
    assert!(more.is_empty(), "nothing twice: {more:?}");
    cluster.shutdown().await;
}

/// Two server processes, alice on the first and bob on the second, sharing a public room
/// named `name` that alice made; the folders live as long as this.
struct SharedRoom {
    servers: [ServerProcess; 2],
    users: [User; 2],
    room: String,
    _dirs: [tempfile::TempDir; 3],
}

impl SharedRoom {
    async fn start(name: &str) -> Self {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = federation_tests::TestCa::new(ca_dir.path()).unwrap();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let servers = [
            ServerProcess::start(&ca, dir_a.path(), free_port().unwrap()).unwrap(),
            ServerProcess::start(&ca, dir_b.path(), free_port().unwrap()).unwrap(),
        ];
        let users = [
            User::register_at(&servers[0].client_url, "alice")
                .await
                .unwrap(),
            User::register_at(&servers[1].client_url, "bob")
                .await
                .unwrap(),
        ];
        let room = users[0]
            .create_room(json!({"preset": "public_chat", "name": name}))
            .await;
        users[1].join_via(&room, &servers[0].name).await;
        Self {
            servers,
            users,
            room,
            _dirs: [ca_dir, dir_a, dir_b],
        }
    }
}

/// Crash safety (hostile-federation issue): `kill -9` of either server of a shared room
/// while messages flow both ways, at seeded moments. Every message its sender's server
/// acknowledged reaches the other side, once, in the order it was sent; neither client
/// sees an event twice; the queues resume after each restart.
#[tokio::test]
async fn kill_9_of_either_server_while_a_room_talks_loses_and_doubles_nothing() {
    let pair = SharedRoom::start("crash").await;
    let (mut servers, mut users, room) = (pair.servers, pair.users, pair.room);

    let mut rng = federation_tests::seeded::Rng::new(7);
    let mut sent: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for round in 0..6 {
        // A few messages from each side, each acknowledged before the next.
        for _ in 0..(2 + rng.below(4)) {
            let side = rng.below(2);
            let body = format!("{} {}", ["alice", "bob"][side], sent[side].len());
            let (status, answer) = users[side]
                .put(
                    &format!(
                        "/rooms/{}/send/m.room.message/r{round}-{}",
                        enc(&room),
                        sent[side].len()
                    ),
                    json!({"msgtype": "m.text", "body": body}),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
            sent[side].push(body);
        }
        // Then one server dies at once, queue and all, and comes back on its data.
        let victim = rng.below(2);
        servers[victim].kill_and_restart().unwrap();
        users[victim] = User {
            base: servers[victim].client_url.clone(),
            ..users[victim].clone()
        };
    }

    // Each side shows the other's messages, once and in order, within 30 s.
    for (side, user) in users.iter().enumerate() {
        let other = 1 - side;
        let started = Instant::now();
        loop {
            let (history, _) = user.page_back(&room, 100).await;
            let shown: Vec<String> = history
                .iter()
                .rev()
                .filter_map(|e| e["content"]["body"].as_str())
                .filter(|b| b.starts_with(["alice", "bob"][other]))
                .map(str::to_owned)
                .collect();
            // What this side acknowledged is there, after every kill of its own server.
            let own: Vec<String> = history
                .iter()
                .rev()
                .filter_map(|e| e["content"]["body"].as_str())
                .filter(|b| b.starts_with(["alice", "bob"][side]))
                .map(str::to_owned)
                .collect();
            assert_eq!(own, sent[side], "{} lost its own", user.user_id);
            let ids: Vec<&str> = history
                .iter()
                .filter_map(|e| e["event_id"].as_str())
                .collect();
            let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "an event shown twice: {ids:?}");
            if shown == sent[other] {
                break;
            }
            assert!(
                shown.len() <= sent[other].len() && sent[other].starts_with(&shown),
                "{}: shown {shown:?}, sent {:?}",
                user.user_id,
                sent[other]
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}: after 30 s shown {shown:?} of {:?}",
                user.user_id,
                sent[other]
            );
            // The other side hears from this one: its back-off towards it ends.
            let _ = user
                .get(&format!("/profile/{}", enc(&users[other].user_id)))
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A client following /sync from the start sees no event twice either.
        let (status, sync) = user
            .get("/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A100%7D%7D%7D")
            .await;
        assert_eq!(status, 200);
        let timeline: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        let unique: std::collections::BTreeSet<&str> = timeline.iter().copied().collect();
        assert_eq!(unique.len(), timeline.len(), "{timeline:?}");
    }
}

/// `PUT /send` of `body` with `txn` by `user`: the event id when the server acknowledged
/// it, `None` when the connection broke first (the server was killed mid-request).
async fn try_send(user: &User, room: &str, txn: &str, body: &str) -> Option<String> {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
        user.base,
        enc(room)
    );
    let response = user
        .http
        .put(url)
        .bearer_auth(&user.token)
        .json(&json!({"msgtype": "m.text", "body": body}))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let answer: serde_json::Value = response.json().await.ok()?;
    answer["event_id"].as_str().map(str::to_owned)
}

/// Crash safety in the middle of writes: bursts of concurrent sends, and the sending (or
/// the receiving) server killed a few milliseconds in, while some are written, some
/// acknowledged and some not yet read. Every acknowledged message keeps its event id
/// (the retry with its transaction id after the restart answers the same one), every
/// unacknowledged one retried lands once, each side ends with each message exactly once,
/// and a client syncing from a token taken before the kills sees no event twice.
#[tokio::test]
async fn kill_9_in_the_middle_of_sends_keeps_each_message_once() {
    let pair = SharedRoom::start("mid-write").await;
    let (mut servers, mut users, room) = (pair.servers, pair.users, pair.room);
    let (status, before) = users[0].get("/sync?timeout=0").await;
    assert_eq!(status, 200);
    let since = before["next_batch"].as_str().unwrap().to_owned();

    // `CRASH_SEED=N` for other kill moments (by hand; CI runs seed 11).
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let mut rng = federation_tests::seeded::Rng::new(seed);
    let mut sent: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let (mut acknowledged, mut unacknowledged) = (0, 0);
    for round in 0..8 {
        let side = rng.below(2);
        // Mostly the sender's server dies; sometimes the receiver's.
        let victim = if rng.below(3) == 0 { 1 - side } else { side };
        let mut burst = tokio::task::JoinSet::new();
        let mut bodies = Vec::new();
        for i in 0..8 {
            let (user, room) = (users[side].clone(), room.clone());
            let (txn, body) = (
                format!("k{round}-{i}"),
                format!("{} k{round}-{i}", ["alice", "bob"][side]),
            );
            bodies.push((txn.clone(), body.clone()));
            burst.spawn(async move {
                let id = try_send(&user, &room, &txn, &body).await;
                (txn, id)
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.below(8) as u64)).await;
        servers[victim].kill_and_restart().unwrap();
        users[victim] = User {
            base: servers[victim].client_url.clone(),
            ..users[victim].clone()
        };
        let mut first_ids = std::collections::HashMap::new();
        while let Some(done) = burst.join_next().await {
            let (txn, id) = done.unwrap();
            match id {
                Some(id) => {
                    acknowledged += 1;
                    first_ids.insert(txn, id);
                }
                None => unacknowledged += 1,
            }
        }
        // Every send retried with its transaction id: one event each, the same one for
        // those acknowledged before the kill.
        for (txn, body) in bodies {
            let id = try_send(&users[side], &room, &txn, &body)
                .await
                .unwrap_or_else(|| panic!("the retry of {txn} after the restart failed"));
            if let Some(first) = first_ids.get(&txn) {
                assert_eq!(&id, first, "{txn} acknowledged as {first}, retried as {id}");
            }
            sent[side].push(body);
        }
    }
    println!("{acknowledged} sends acknowledged before a kill, {unacknowledged} cut off");
    // (How many were acknowledged first depends on the machine's speed: from 0 to 40
    // of 64 over seeds 1-12 here. Acknowledged sends across kills are the test above's.)
    assert!(
        unacknowledged > 0,
        "this seed's kills never came in the middle of the sends"
    );

    // Each side ends with each message of both, exactly once, within 30 s.
    for (side, user) in users.iter().enumerate() {
        let started = Instant::now();
        loop {
            let (history, _) = user.page_back(&room, 100).await;
            let mut shown: Vec<String> = history
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str())
                .map(str::to_owned)
                .collect();
            shown.sort();
            let mut expected: Vec<String> = sent.concat();
            expected.sort();
            let mut unique = shown.clone();
            unique.dedup();
            assert_eq!(
                unique.len(),
                shown.len(),
                "{}: a message twice: {shown:?}",
                user.user_id
            );
            if shown == expected {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}: after 30 s shown {shown:?}, expected {expected:?}",
                user.user_id
            );
            let other = &users[1 - side];
            let _ = user.get(&format!("/profile/{}", enc(&other.user_id))).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // A client that synced before the kills and follows on sees no event twice.
    let mut seen = std::collections::BTreeSet::new();
    let mut token = since;
    for _ in 0..20 {
        let (status, sync) = users[0]
            .get(&format!(
                "/sync?timeout=0&since={}&filter={}",
                enc(&token),
                enc(r#"{"room":{"timeline":{"limit":200}}}"#)
            ))
            .await;
        assert_eq!(status, 200, "{sync}");
        let events = sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for event in &events {
            let id = event["event_id"].as_str().unwrap_or_default().to_owned();
            assert!(seen.insert(id.clone()), "{id} came twice through /sync");
        }
        token = sync["next_batch"].as_str().unwrap().to_owned();
        if events.is_empty() {
            break;
        }
    }
}

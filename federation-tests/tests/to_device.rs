//! To-device messages between servers: delivered through the durable outbox and the
//! sender, once and in order, also when the destination was down while they queued and
//! when the sending server restarted meanwhile.

use std::time::Duration;

use federation_tests::{enc, Cluster, User};
use serde_json::json;

async fn send(from: &User, to: &User, n: u32) {
    let (status, body) = from
        .put(
            &format!("/sendToDevice/m.test/t{n}"),
            json!({"messages": {to.user_id.clone(): {to.device_id.clone(): {"n": n}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_to_device_message_reaches_a_device_of_another_server_once() {
    let cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let (_, since) = bob.to_device_events(None, 0, Duration::ZERO).await;
    send(&alice, &bob, 1).await;
    // The same transaction id again: nothing more.
    send(&alice, &bob, 1).await;
    let (events, since) = bob
        .to_device_events(since, 1, Duration::from_secs(20))
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["sender"], alice.user_id);
    assert_eq!(events[0]["type"], "m.test");
    assert_eq!(events[0]["content"], json!({"n": 1}));
    let (more, _) = bob.to_device_events(since, 1, Duration::from_secs(2)).await;
    assert!(more.is_empty(), "delivered once: {more:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn messages_queued_while_the_destination_is_down_arrive_in_order_after_a_restart_of_both() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let (_, since) = bob.to_device_events(None, 0, Duration::ZERO).await;
    let bob_server = cluster.instances[1].name().to_owned();

    cluster.instances[1].stop().await;
    for n in 1..=3 {
        send(&alice, &bob, n).await;
    }
    // The sending server restarts with the messages still queued (its first tries
    // failed): they are in its database, not only in memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.instances[0].restart().await.unwrap();
    let alice = User {
        base: cluster.instances[0].client_url(),
        ..alice
    };
    cluster.instances[1].restart().await.unwrap();
    let bob = User {
        base: cluster.instances[1].client_url(),
        ..bob
    };
    // Bob's server contacts alice's (a profile lookup): her server's back-off for it ends
    // and the queue goes at once.
    let (status, _) = bob.get(&format!("/profile/{}", enc(&alice.user_id))).await;
    assert_eq!(status, 200);
    let (events, _) = bob
        .to_device_events(since, 3, Duration::from_secs(30))
        .await;
    let order: Vec<u64> = events
        .iter()
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, vec![1, 2, 3], "to {bob_server}: {events:?}");
    cluster.shutdown().await;
}

/// Follows `user`'s `/sync` until `device_lists.changed` names `target`.
async fn device_list_changes(user: &User, since: String, target: &str) -> bool {
    let mut since = since;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        let (status, body) = user
            .get(&format!(
                "/sync?timeout=1000&since={}",
                federation_tests::enc(&since)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["device_lists"]["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|u| u == target)
        {
            return true;
        }
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
    }
    false
}

#[tokio::test]
async fn a_new_device_and_new_keys_are_told_to_servers_sharing_a_room() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let (status, created) = alice
        .post("/createRoom", serde_json::json!({"preset": "public_chat"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, body) = bob
        .post(
            &format!(
                "/join/{}?via={}",
                federation_tests::enc(&room),
                federation_tests::enc(a.name())
            ),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, first) = alice.get("/sync?timeout=0").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Bob uploads device keys on his server: alice's server hears of it.
    bob.upload_device_keys(7).await;
    assert!(
        device_list_changes(&alice, since, &bob.user_id).await,
        "alice was never told bob's keys changed"
    );
    // And her query of bob's keys (through his server) shows the device.
    let (status, keys) = alice
        .post(
            "/keys/query",
            serde_json::json!({"device_keys": {bob.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    assert!(
        keys["device_keys"][&bob.user_id][&bob.device_id].is_object(),
        "{keys}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn presence_goes_to_servers_sharing_a_room() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&room, a.name()).await;
    let (status, body) = alice
        .put(
            &format!("/presence/{}/status", enc(&alice.user_id)),
            json!({"presence": "unavailable", "status_msg": "at lunch"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = bob
        .sync_until(|b| {
            b["presence"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["sender"] == alice.user_id.as_str()
                        && e["content"]["presence"] == "unavailable"
                        && e["content"]["status_msg"] == "at lunch"
                })
        })
        .await;
    assert!(seen.is_some(), "bob never saw alice's presence");
    let (status, shown) = bob
        .get(&format!("/presence/{}/status", enc(&alice.user_id)))
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["presence"], "unavailable", "{shown}");
    assert_eq!(shown["status_msg"], "at lunch", "{shown}");
    // Alice was never active: not shown as active just now (the EDU must say when).
    assert!(
        shown["last_active_ago"]
            .as_u64()
            .is_none_or(|ago| ago > 86_400_000),
        "{shown}"
    );
    cluster.shutdown().await;
}

/// The device ids `/keys/query` gives `asker` for `target`, and the answer's failures.
async fn queried_devices(asker: &User, target: &str) -> (Vec<String>, serde_json::Value) {
    let (status, keys) = asker
        .post(
            "/keys/query",
            serde_json::json!({"device_keys": {target: []}, "timeout": 10000}),
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    let mut devices: Vec<String> = keys["device_keys"][target]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    devices.sort();
    (devices, keys["failures"].clone())
}

/// Spec: server-server API, "Device Management": a server keeps the device lists of the
/// other servers' users it shares a room with, follows their `m.device_list_update`s, and
/// fetches a list again when an update shows a gap.
#[tokio::test]
async fn a_remote_device_list_is_kept_followed_and_fetched_again_after_a_gap() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let mut bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let a_name = cluster.instances[0].name().to_owned();
    let room = alice
        .create_room(serde_json::json!({"preset": "public_chat"}))
        .await;
    bob.join_via(&room, &a_name).await;
    let (_, first) = alice.get("/sync?timeout=0").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    bob.upload_device_keys(7).await;
    assert!(device_list_changes(&alice, since, &bob.user_id).await);

    // The first query fetches bob's list from his server, which then keeps it (fetched
    // again in the background if an update came meanwhile).
    let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, vec![bob.device_id.clone()], "{failures}");
    fresh_list(&cluster, 0, &bob.user_id).await;
    // With bob's server down, alice still gets his keys.
    cluster.instances[1].stop().await;
    let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, vec![bob.device_id.clone()]);
    assert_eq!(failures, serde_json::json!({}));
    cluster.instances[1].restart().await.unwrap();
    bob.base = cluster.instances[1].client_url();

    // Bob's second device: the update that follows is applied, so with bob's server
    // down again alice gets both devices.
    let (_, before) = alice.get("/sync?timeout=0").await;
    let since = before["next_batch"].as_str().unwrap().to_owned();
    let phone = bob.login_another_device().await.unwrap();
    phone.upload_device_keys(8).await;
    assert!(device_list_changes(&alice, since, &bob.user_id).await);
    let mut both = vec![bob.device_id.clone(), phone.device_id.clone()];
    both.sort();
    let started = std::time::Instant::now();
    while alice_server_list(&cluster, &bob.user_id).is_none_or(|l| {
        l.devices
            .get(&phone.device_id)
            .is_none_or(|d| d.keys.is_none())
    }) && started.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.instances[1].stop().await;
    let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, both, "{failures}");
    cluster.instances[1].restart().await.unwrap();
    bob.base = cluster.instances[1].client_url();

    // An update of bob's server that follows the list is applied (a device bob's
    // server does not have: the test speaks for it). A query first fetches the list
    // again, should it have turned stale while bob's server was down.
    queried_devices(&alice, &bob.user_id).await;
    let kept = fresh_list(&cluster, 0, &bob.user_id).await;
    let follower = serde_json::json!({
        "edu_type": "m.device_list_update",
        "content": {
            "user_id": bob.user_id, "device_id": "FOLLOWER",
            "stream_id": kept.stream_id + 1000, "prev_id": [kept.stream_id]
        }
    });
    second_server_sends(&cluster, "follow1", follower).await;
    let followed = alice_server_list(&cluster, &bob.user_id).unwrap();
    assert!(
        followed.devices.contains_key("FOLLOWER")
            && followed.stream_id == kept.stream_id + 1000
            && !followed.stale,
        "{followed:?}"
    );
    // One whose prev_id names a position alice's server never saw: nothing of it is
    // applied, the list is stale, and alice's server fetches it again from bob's server
    // (which has neither device) at once, by itself.
    let kept = followed;
    let ghost = serde_json::json!({
        "edu_type": "m.device_list_update",
        "content": {
            "user_id": bob.user_id, "device_id": "GHOST", "stream_id": kept.stream_id + 10,
            "prev_id": [kept.stream_id + 5],
            "keys": {"user_id": bob.user_id, "device_id": "GHOST", "keys": {"ed25519:GHOST": "x"}}
        }
    });
    second_server_sends(&cluster, "gap1", ghost).await;
    let fresh = fresh_list(&cluster, 0, &bob.user_id).await;
    assert!(
        !fresh.devices.contains_key("GHOST") && !fresh.devices.contains_key("FOLLOWER"),
        "{fresh:?}"
    );
    assert_eq!(
        fresh.seen,
        vec![fresh.stream_id],
        "fetched again: {fresh:?}"
    );
    // The list follows bob's updates again: his tablet and its keys are applied.
    let tablet = bob.login_another_device().await.unwrap();
    tablet.upload_device_keys(9).await;
    let started = std::time::Instant::now();
    while alice_server_list(&cluster, &bob.user_id).is_none_or(|l| {
        l.devices
            .get(&tablet.device_id)
            .is_none_or(|d| d.keys.is_none())
    }) && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followed = alice_server_list(&cluster, &bob.user_id).unwrap();
    assert!(
        followed
            .devices
            .get(&tablet.device_id)
            .is_some_and(|d| d.keys.is_some()),
        "{followed:?}"
    );
    assert!(!followed.stale, "{followed:?}");
    assert!(
        followed.seen.len() > 1,
        "applied, not fetched: {followed:?}"
    );
    let mut all = both.clone();
    all.push(tablet.device_id.clone());
    all.sort();
    let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, all, "{failures}");

    // A member event of bob's (a new display name) drops the list: it is fetched
    // afresh when next asked for.
    let (status, body) = bob
        .put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            json!({"displayname": "Bob B."}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    while alice_server_list(&cluster, &bob.user_id).is_some()
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alice_server_list(&cluster, &bob.user_id).is_none());
    let (devices, _) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, all);
    cluster.shutdown().await;
}

/// The cluster's second server sends the first the transaction `txn_id` holding `edu`
/// (must be answered 200).
async fn second_server_sends(cluster: &Cluster, txn_id: &str, edu: serde_json::Value) {
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let (status, body) = b
        .ask(
            a.name(),
            reqwest::Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn_id}"),
            Some(serde_json::json!({
                "origin": b.name(), "origin_server_ts": 1, "pdus": [], "edus": [edu]
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The list the server `instance` keeps for `user`, once it is fresh (waits up to
/// 10 s: a list that turned stale is fetched again in the background).
async fn fresh_list(
    cluster: &Cluster,
    instance: usize,
    user: &str,
) -> ourwhats::services::federation::device_lists::RemoteDeviceList {
    let started = std::time::Instant::now();
    loop {
        let kept = cluster.instances[instance]
            .running()
            .services
            .remote_device_lists
            .get(user)
            .unwrap();
        match kept {
            Some(list) if !list.stale => return list,
            _ if started.elapsed() > Duration::from_secs(10) => {
                panic!("alice's server keeps no fresh list of {user}: {kept:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The device list alice's server (the first instance) keeps for `user`.
fn alice_server_list(
    cluster: &Cluster,
    user: &str,
) -> Option<ourwhats::services::federation::device_lists::RemoteDeviceList> {
    cluster.instances[0]
        .running()
        .services
        .remote_device_lists
        .get(user)
        .unwrap()
}

/// A list kept from a room we no longer share misses the updates made meanwhile: our
/// server joining, through another server, a room the user is in drops it.
#[tokio::test]
async fn a_device_list_kept_from_a_room_left_is_fetched_again_after_joining_another() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let first = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&first, a.name()).await;
    bob.upload_device_keys(7).await;
    let (devices, _) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, vec![bob.device_id.clone()]);
    assert!(alice_server_list(&cluster, &bob.user_id).is_some());
    // Alice leaves: her server shares no room with bob, and hears nothing of him.
    let (status, body) = alice
        .post(&format!("/rooms/{}/leave", enc(&first)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let phone = bob.login_another_device().await.unwrap();
    phone.upload_device_keys(8).await;
    // Bob's own room on his server; alice joins it through his server.
    let second = bob.create_room(json!({"preset": "public_chat"})).await;
    let (status, body) = alice
        .post(
            &format!("/join/{}?via={}", enc(&second), enc(b.name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut both = vec![bob.device_id.clone(), phone.device_id.clone()];
    both.sort();
    let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(
        devices, both,
        "the list kept from before was not trusted: {failures}"
    );
    cluster.shutdown().await;
}

/// Spec: a destination coming back after an outage with a backlog is sent the newest
/// event of each room (catch-up) and pulls the gap itself: bob's client gets alice's
/// latest message live, not all of them replayed, and paging back reaches the first.
#[tokio::test]
async fn a_destination_back_from_an_outage_catches_up_with_the_newest_events() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let mut bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let a_name = cluster.instances[0].name().to_owned();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&room, &a_name).await;
    let (_, first) = bob.get("/sync?timeout=0").await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    cluster.instances[1].stop().await;
    let total = 150;
    for n in 1..=total {
        let (status, body) = alice
            .put(
                &format!("/rooms/{}/send/m.room.message/c{n}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("m{n}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    cluster.instances[1].restart().await.unwrap();
    bob.base = cluster.instances[1].client_url();
    // Bob speaks: his server's request ends alice's server's back-off at once.
    let (status, body) = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/back", enc(&room)),
            json!({"msgtype": "m.text", "body": "back"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut live = Vec::new();
    let started = std::time::Instant::now();
    while !live.contains(&format!("m{total}")) && started.elapsed() < Duration::from_secs(30) {
        // A timeline long enough for every event that comes live.
        let filter = enc(r#"{"room":{"timeline":{"limit":500}}}"#);
        let (status, body) = bob
            .get(&format!(
                "/sync?timeout=1000&filter={filter}&since={}",
                enc(&since)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        for event in body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if event["sender"] == alice.user_id.as_str() {
                live.push(event["content"]["body"].as_str().unwrap_or("").to_owned());
            }
        }
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
    }
    assert!(
        live.contains(&format!("m{total}")),
        "the newest arrived: {live:?}"
    );
    assert!(
        live.len() < total / 2,
        "{} of {total} came live: no catch-up",
        live.len()
    );
    // The rest is history bob's server pulls when his client pages back.
    let (events, _) = bob.page_back(&room, 400).await;
    let bodies: Vec<&str> = events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(
        bodies.contains(&"m1"),
        "paging back reached the first: {bodies:?}"
    );
    cluster.shutdown().await;
}

/// Spec: "Device Management": updates are sent "when that user joins a room which
/// contains servers which are not already receiving updates for that user's device
/// list". Alice's changes while she shares no room still take a place in her sequence
/// (a server that kept her list from before sees the gap); her join of a room on bob's
/// server sends bob's server her whole list, a new place in the sequence with no device
/// changed (`stream_id` of `/user/devices`), and bob then sees both her devices.
#[tokio::test]
async fn joining_a_room_tells_its_new_servers_the_device_list() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let stream_id = || async {
        let path = format!(
            "/_matrix/federation/v1/user/devices/{}",
            enc(&alice.user_id)
        );
        let (status, body) = b.ask(a.name(), reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        body["stream_id"].as_u64().unwrap()
    };
    alice.upload_device_keys(7).await;
    let first = stream_id().await;
    assert!(
        first > 0,
        "a change with nobody to tell still has its place"
    );
    let phone = alice.login_another_device().await.unwrap();
    phone.upload_device_keys(8).await;
    let second = stream_id().await;
    assert!(second > first, "{second} after {first}");
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    alice.join_via(&room, b.name()).await;
    let joined = stream_id().await;
    assert!(
        joined > second,
        "the join told bob's server the list: {joined}"
    );
    let mut both = vec![alice.device_id.clone(), phone.device_id.clone()];
    both.sort();
    let (devices, failures) = queried_devices(&bob, &alice.user_id).await;
    assert_eq!(devices, both, "{failures}");
    // A device with no keys is not listed (spec: each device's `keys` are required).
    let laptop = alice.login_another_device().await.unwrap();
    let path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        enc(&alice.user_id)
    );
    let (status, body) = b.ask(a.name(), reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["devices"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{body}");
    assert!(listed.iter().all(|d| d["keys"].is_object()), "{body}");
    assert!(listed
        .iter()
        .all(|d| d["device_id"] != laptop.device_id.as_str()));

    // Deleting the laptop along with made-up devices announces the laptop alone, not
    // one update per id asked for.
    let before = stream_id().await;
    let mut ids: Vec<String> = (0..20).map(|n| format!("NOSUCH{n}")).collect();
    ids.push(laptop.device_id.clone());
    let (status, challenge) = alice.post("/delete_devices", json!({"devices": ids})).await;
    assert_eq!(status, 401, "{challenge}");
    let (status, body) = alice
        .post(
            "/delete_devices",
            json!({"devices": ids, "auth": {"type": "m.login.password",
                   "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": alice.user_id},
                   "password": "correct horse battery"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Each update is queued at a stream position of its own: 21 would take 21.
    let after = stream_id().await;
    assert!(after > before && after < before + 10, "{before} → {after}");
    cluster.shutdown().await;
}

/// A device change that committed but whose update never reached the outbox (the server
/// stopped between the two): at the next start the server sees the change is past the
/// latest update it queued and sends the whole list again, so a server keeping the list
/// gets the new device.
#[tokio::test]
async fn a_device_change_whose_update_was_lost_is_sent_at_the_next_start() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let bob = User::register(&cluster.instances[0], "bob").await.unwrap();
    let mut alice = User::register(&cluster.instances[1], "alice")
        .await
        .unwrap();
    let b_name = cluster.instances[1].name().to_owned();
    let a_name = cluster.instances[0].name().to_owned();
    let room = bob
        .create_room(serde_json::json!({"preset": "public_chat"}))
        .await;
    alice.join_via(&room, &a_name).await;
    bob.upload_device_keys(7).await;
    let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
    assert_eq!(devices, vec![bob.device_id.clone()], "{failures}");
    fresh_list(&cluster, 1, &bob.user_id).await;

    // Bob's phone, while alice's server is down; then its update is lost: taken out of
    // the outbox, and the sequence put back to before it.
    let services = &cluster.instances[0].running().services;
    let last_told = services
        .accounts
        .device_list_update_id(&bob.user_id)
        .unwrap();
    cluster.instances[1].stop().await;
    let phone = bob.login_another_device().await.unwrap();
    phone.upload_device_keys(8).await;
    let services = &cluster.instances[0].running().services;
    let db = &services.db;
    let mut batch = db.batch();
    let queued: Vec<Vec<u8>> = db
        .scan_prefix(
            ourwhats::storage::Table::ServernamePosEdu,
            &ourwhats::storage::keys::prefix(b_name.as_bytes()),
        )
        .map(|entry| entry.unwrap().0.to_vec())
        .collect();
    assert!(
        !queued.is_empty(),
        "the phone's update waits for alice's server"
    );
    for key in queued {
        batch.delete(ourwhats::storage::Table::ServernamePosEdu, key);
    }
    batch.put(
        ourwhats::storage::Table::UseridDevicelistedu,
        bob.user_id.as_bytes(),
        last_told.to_be_bytes(),
    );
    db.commit_blocking(batch).unwrap();

    cluster.instances[0].restart().await.unwrap();
    cluster.instances[1].restart().await.unwrap();
    alice.base = cluster.instances[1].client_url();
    let mut both = vec![bob.device_id.clone(), phone.device_id.clone()];
    both.sort();
    let started = std::time::Instant::now();
    loop {
        let (devices, failures) = queried_devices(&alice, &bob.user_id).await;
        if devices == both {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "alice's server never learnt of the phone: {devices:?} {failures}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}

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
    let device_key = ourwhats::core::SigningKeyPair::from_seed(&[7; 32], &bob.device_id);
    let mut device_keys = serde_json::json!({
        "user_id": bob.user_id,
        "device_id": bob.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", bob.device_id): "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
            format!("ed25519:{}", bob.device_id): device_key.public_key_base64()
        }
    });
    ourwhats::core::signatures::sign_json(&mut device_keys, &bob.user_id, &device_key).unwrap();
    let (status, body) = bob
        .post(
            "/keys/upload",
            serde_json::json!({"device_keys": device_keys}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
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
    cluster.shutdown().await;
}

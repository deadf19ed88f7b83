//! A server replaces its signing key (`ourwhats rotate-key`): its key document lists the
//! old key under `old_verify_keys` with the time it stopped signing, so a server that
//! never saw the old key still accepts the room history it signed (spec: server-server
//! API, "Retrieving server keys": old keys are "only valid for signing events").

use std::time::{Duration, Instant};

use federation_tests::{enc, Cluster, User};
use ourwhats::services::{now_ms, server_keys};
use serde_json::{json, Value};

#[tokio::test]
async fn history_signed_with_a_replaced_key_is_taken_by_a_server_joining_later() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "before the new key"}))
        .await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/t1", enc(&room)),
            json!({"msgtype": "m.text", "body": "signed with the old key"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Stopped, rotated, started again.
    cluster.instances[0].stop().await;
    let data_dir = cluster.instances[0].config.data_dir.clone();
    let (old_id, new_id) = server_keys::rotate(&data_dir, now_ms()).unwrap();
    cluster.instances[0].restart().await.unwrap();
    let a = &cluster.instances[0];
    let alice = User {
        base: a.client_url(),
        ..alice
    };

    // Bob's server never saw the old key: the room's state and history came with it.
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    bob.join_via(&room, a.name()).await;
    let (status, name) = bob
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
        .await;
    assert_eq!((status, &name["name"]), (200, &json!("before the new key")));
    let (history, _) = bob.page_back(&room, 20).await;
    assert!(
        history
            .iter()
            .any(|e| e["content"]["body"] == "signed with the old key"),
        "{history:?}"
    );

    // The document: the new key to verify with, the old one with its expiry.
    let document = cluster.key_document(a.name()).await.unwrap();
    assert!(document["verify_keys"].get(&new_id).is_some(), "{document}");
    assert!(document["verify_keys"].get(&old_id).is_none(), "{document}");
    let expired = document["old_verify_keys"][&old_id]["expired_ts"].as_u64();
    assert!(expired.is_some_and(|t| t <= now_ms()), "{document}");
    assert!(document["signatures"][a.name()].get(&new_id).is_some());

    // And what alice says now, signed with the new key, reaches bob.
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/t2", enc(&room)),
            json!({"msgtype": "m.text", "body": "signed with the new key"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    loop {
        let (_, page) = bob
            .get(&format!("/rooms/{}/messages?dir=b&limit=5", enc(&room)))
            .await;
        if page.to_string().contains("signed with the new key") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

/// A server that replaces its key without listing the old one (Synapse does so unless
/// its admin configures `old_signing_keys`): a server that knew the old key keeps it when
/// it fetches the new document, so history signed with it, backfilled later, is taken.
#[tokio::test]
async fn a_key_dropped_from_a_servers_document_still_verifies_what_it_signed() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "history_visibility": "shared"}))
        .await;
    for n in 0..15 {
        let (status, body) = alice
            .put(
                &format!("/rooms/{}/send/m.room.message/old{n}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("old key {n}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Bob's server joins, learning the old key; it holds the recent past only.
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    bob.join_via(&room, cluster.instances[0].name()).await;

    // Replaced, and the old key forgotten by its own server's document.
    cluster.instances[0].stop().await;
    let data_dir = cluster.instances[0].config.data_dir.clone();
    server_keys::rotate(&data_dir, now_ms()).unwrap();
    std::fs::remove_file(data_dir.join(server_keys::OLD_SIGNING_KEYS_FILE)).unwrap();
    cluster.instances[0].restart().await.unwrap();
    let a = &cluster.instances[0];
    let alice = User {
        base: a.client_url(),
        ..alice
    };
    // A message signed with the new key makes bob's server fetch the new document.
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/new", enc(&room)),
            json!({"msgtype": "m.text", "body": "new key"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    loop {
        let (_, page) = bob
            .get(&format!("/rooms/{}/messages?dir=b&limit=3", enc(&room)))
            .await;
        if page.to_string().contains("new key") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Paging back past the join backfills what the old key signed.
    let (history, _) = bob.page_back(&room, 10).await;
    let old: Vec<&Value> = history
        .iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("old key"))
        })
        .collect();
    assert_eq!(old.len(), 15, "{history:?}");
    cluster.shutdown().await;
}

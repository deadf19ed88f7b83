//! `kill -9` of a sending server while to-device messages wait for a destination that is
//! down: after the restart nothing is lost, nothing is doubled, the order holds.

use std::time::Duration;

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

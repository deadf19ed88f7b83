//! A restart keeps accounts and the signing key.

use crate::common;

use common::TestServer;
use reqwest::StatusCode;

#[tokio::test]
async fn accounts_and_signing_key_survive_a_restart() {
    let mut s = TestServer::start().await;
    let (user_id, token, _) = s.register("olga", "persistent").await;
    let key_before = s.running().services.signing_key.public_key_base64();
    let key_id_before = s.running().services.signing_key.key_id().to_owned();

    s.restart().await;

    let (status, body) = s.login("olga", "persistent").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id.as_str());
    // Tokens survive too: they are stored (hashed), not kept in memory.
    let (status, _) = s
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        s.running().services.signing_key.public_key_base64(),
        key_before
    );
    assert_eq!(s.running().services.signing_key.key_id(), key_id_before);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            serde_json::json!({"username": "olga"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_USER_IN_USE");
    s.stop().await;
}

#[tokio::test]
async fn a_restart_waits_for_a_lingering_handle_of_the_database() {
    // A background worker of the stopped server may still hold the database for a
    // moment (its RocksDB lock with it); the new server waits for it, on the same
    // runtime, rather than failing.
    let mut s = TestServer::start().await;
    let lingering = std::sync::Arc::clone(&s.running().services.db);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(lingering);
    });
    s.restart().await;
    let (status, _) = s
        .call(reqwest::Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_drops_a_transaction_in_flight_and_ends_the_senders_tasks() {
    use tokio::io::AsyncReadExt;
    // A server that takes the connection and never answers (not even TLS).
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let destination = format!("127.0.0.1:{}", hole.local_addr().unwrap().port());
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = hole.accept().await.unwrap();
        let _ = connected_tx.send(());
        let mut buf = [0u8; 1024];
        // Reads the client's hello, then waits for the connection to be dropped.
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        let _ = closed_tx.send(std::time::Instant::now());
    });
    let mut s = TestServer::start_with(|config| {
        config.federation.ip_range_allowlist =
            vec![ourwhats::config::IpNet::parse("127.0.0.0/8").unwrap()];
    })
    .await;
    let alice = common::client::Client::new(&s, "alice").await;
    let (status, body) = alice
        .put(
            "/sendToDevice/m.test/t1",
            serde_json::json!({"messages": {format!("@x:{destination}"): {"*": {"a": 1}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The sender is now waiting on the hole.
    tokio::time::timeout(std::time::Duration::from_secs(10), connected)
        .await
        .expect("the sender connects to the destination")
        .unwrap();
    let started = std::time::Instant::now();
    s.server.take().unwrap().shutdown().await;
    let stopped = std::time::Instant::now();
    assert!(stopped - started < std::time::Duration::from_secs(5));
    // Shutdown waited for the destination's task, which dropped its request: the
    // connection was closed when it returned (the hole's task notices it as soon as it
    // runs, which a busy machine may put off a little; a request left open would wait
    // for its timeout, a minute).
    let closed_at = tokio::time::timeout(std::time::Duration::from_secs(2), closed)
        .await
        .expect("the request was dropped at shutdown")
        .unwrap();
    assert!(closed_at <= stopped + std::time::Duration::from_secs(1));
}

/// A to-device send's transaction id makes a retry a no-op, but is not kept for ever: a
/// week on, the first send after a start sweeps it (a row of before times were kept is
/// given the sweep's time instead).
#[tokio::test]
async fn to_device_transaction_ids_are_forgotten_after_a_week() {
    use ourwhats::storage::Table;
    let mut s = TestServer::start().await;
    let alice = common::client::Client::new(&s, "alice").await;
    let login = (
        alice.user_id.clone(),
        alice.token.clone(),
        alice.device_id.clone(),
    );
    let bob = common::client::Client::new(&s, "bob").await;
    let body = serde_json::json!({"messages": {bob.user_id.clone(): {"*": {"a": 1}}}});
    for txn in ["old", "older", "recent"] {
        let (status, out) = alice
            .put(&format!("/sendToDevice/m.test/{txn}"), body.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
    }
    let rows = |s: &TestServer| -> Vec<(Vec<u8>, Vec<u8>)> {
        s.running()
            .services
            .db
            .scan_prefix(Table::TxnidTodevice, b"")
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    };
    let before = rows(&s);
    assert_eq!(before.len(), 3);
    // Eight days pass for "old"; "older" is a row of before times were kept.
    let db = &s.running().services.db;
    let mut batch = db.batch();
    for (key, value) in &before {
        let ends = |txn: &[u8]| key.ends_with(txn) && !key.ends_with(b"older");
        if ends(b"old") {
            let mut aged = value[..8].to_vec();
            let eight_days_ago = ourwhats::services::now_ms() - 8 * 24 * 3_600_000;
            aged.extend_from_slice(&eight_days_ago.to_be_bytes());
            batch.put(Table::TxnidTodevice, key, aged);
        } else if key.ends_with(b"older") {
            batch.put(Table::TxnidTodevice, key, &value[..8]);
        }
    }
    db.commit_blocking(batch).unwrap();
    s.restart().await;
    let alice = common::client::Client::signed_in(&s, &login);
    let (status, out) = alice.put("/sendToDevice/m.test/new", body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    // The sweep runs in the background.
    let mut left = rows(&s);
    for _ in 0..500 {
        if left.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        left = rows(&s);
    }
    let names: Vec<String> = left
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k.rsplit(|b| *b == 0xff).next().unwrap()).into())
        .collect();
    assert_eq!(names, ["new", "older", "recent"], "{names:?}");
    // The row with no time was given the sweep's: it goes a week from now.
    assert!(left.iter().all(|(_, v)| v.len() == 16), "{left:?}");
}

/// A deactivated account's leaving of its rooms, cut short by a stop, is finished at the
/// next start (here the stop came before any leave: the account is marked deactivated
/// while the server is down).
#[tokio::test]
async fn a_start_finishes_a_deactivated_accounts_leaving() {
    use ourwhats::storage::Table;
    let mut s = TestServer::start().await;
    let alice = common::client::Client::new(&s, "alice").await;
    let alice_login = (
        alice.user_id.clone(),
        alice.token.clone(),
        alice.device_id.clone(),
    );
    let bob = common::client::Client::new(&s, "bob").await;
    let room = alice
        .create_room(serde_json::json!({"preset": "public_chat"}))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let bob_id = bob.user_id.clone();
    s.restart_after(
        |db| {
            let mut account: serde_json::Value =
                serde_json::from_slice(&db.get(Table::UseridAccount, &bob_id).unwrap().unwrap())
                    .unwrap();
            account["deactivated"] = serde_json::json!(true);
            let mut batch = db.batch();
            batch.put(
                Table::UseridAccount,
                &bob_id,
                serde_json::to_vec(&account).unwrap(),
            );
            db.commit_blocking(batch).unwrap();
        },
        |_| {},
    )
    .await;
    let alice = common::client::Client::signed_in(&s, &alice_login);
    let member = alice.member_once(&room, &bob_id, "leave").await;
    assert_eq!(member["membership"], "leave", "{member}");
}

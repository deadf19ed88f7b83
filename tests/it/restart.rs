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

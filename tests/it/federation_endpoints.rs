//! The federation listener: TLS, the key server and the version endpoint.
//! Spec: server-server API, "Retrieving server keys" and "GET /_matrix/federation/v1/version".

use crate::common;

use common::TestServer;
use ourwhats::core::base64;
use ourwhats::core::signatures::verify_json;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn key_server_publishes_a_self_signed_key_over_tls() {
    let s = TestServer::start().await;
    let (client, base) = s.federation_client();
    let response = client
        .get(format!("{base}/_matrix/key/v2/server"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["server_name"], "localhost");
    let key_id = s.running().services.signing_key.key_id().to_owned();
    let public = doc["verify_keys"][&key_id]["key"].as_str().unwrap();
    let bytes: [u8; 32] = base64::decode(public).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap();
    verify_json(&doc, "localhost", &key_id, &key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let valid_until = doc["valid_until_ts"].as_u64().unwrap();
    assert!(valid_until > now + 3_600_000, "valid for at least an hour");

    let (status, version) = {
        let r = client
            .get(format!("{base}/_matrix/federation/v1/version"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["server"]["name"], "ourwhats");

    let r = client
        .get(format!("{base}/_matrix/federation/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );

    // Plain HTTP is not served on the federation port.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://{}/_matrix/key/v2/server",
            s.running().federation_addr.unwrap()
        ))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    s.stop().await;
}

#[tokio::test]
async fn federation_disabled_opens_no_listener() {
    let s = TestServer::start_with(|c| c.federation.enabled = false).await;
    assert!(s.running().federation_addr.is_none());
    assert!(!s.dir.path().join("tls").exists());
    // The client listener does not serve the federation API.
    let (status, body) = s.get("/_matrix/federation/v1/version", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    s.stop().await;
}

//! Endpoints older clients and integrations still call: OpenID tokens (requested on the
//! client API, checked on the federation API by a third party) and `admin/whois`.

use crate::common;

use common::client::Client;
use common::{assert_error, TestServer};
use ourwhats::core::UserId;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn userinfo(s: &TestServer, query: &str) -> (StatusCode, Value) {
    let (client, base) = s.federation_client();
    let response = client
        .get(format!(
            "{base}/_matrix/federation/v1/openid/userinfo{query}"
        ))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_openid_token_tells_a_third_party_who_the_user_is_and_nothing_more() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let path = format!("/user/{}/openid/request_token", alice.user_id);
    let (status, body) = alice.post(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "localhost");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap().to_owned();

    let (status, info) = userinfo(&s, &format!("?access_token={token}")).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info, json!({ "sub": alice.user_id }));

    // Not an access token: the client API does not take it.
    let (status, body) = s
        .call(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            None,
        )
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    // Nor is an access token an OpenID token.
    let (status, body) = userinfo(&s, &format!("?access_token={}", alice.token)).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, body) = userinfo(&s, "").await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");

    // An hour later the token is refused (the stored expiry moved into the past, as
    // the clock would).
    let db = &s.running().services.db;
    let key = ourwhats::services::accounts::secrets::token_hash(&token);
    let table = ourwhats::storage::Table::TokenhashOpenid;
    let mut record: Value = serde_json::from_slice(&db.get(table, key).unwrap().unwrap()).unwrap();
    record["expires_at"] = json!(1);
    let mut batch = db.batch();
    batch.put(table, key, serde_json::to_vec(&record).unwrap());
    db.commit_blocking(batch).unwrap();
    let (status, body) = userinfo(&s, &format!("?access_token={token}")).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    assert!(
        db.get(table, key).unwrap().is_none(),
        "an expired token is deleted"
    );

    // Only for oneself, and the body is an object.
    let (status, body) = bob.post(&path, json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice.post(&path, json!([])).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    s.stop().await;
}

/// A deactivated account's OpenID tokens prove nothing, like its access tokens; and an
/// erasure empties its account data (spec: `erase`, "any non-event data associated with
/// the user, such as account data").
#[tokio::test]
async fn deactivation_ends_openid_tokens_and_erasure_empties_account_data() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let path = format!("/user/{}/openid/request_token", alice.user_id);
    let (status, body) = alice.post(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let room = alice.create_room(json!({})).await;
    let data = format!("/user/{}/account_data/org.example.notes", alice.user_id);
    let (status, _) = alice.put(&data, json!({"secret": "kept"})).await;
    assert_eq!(status, StatusCode::OK);
    let room_data = format!(
        "/user/{}/rooms/{room}/account_data/org.example.notes",
        alice.user_id
    );
    let (status, _) = alice.put(&room_data, json!({"secret": "in room"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = userinfo(&s, &format!("?access_token={token}")).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = alice.deactivate(true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = userinfo(&s, &format!("?access_token={token}")).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let accounts = &s.running().services.accounts;
    for room in [None, Some(room.as_str())] {
        let left = accounts
            .account_data(&alice.user_id, room, "org.example.notes")
            .unwrap();
        assert_eq!(left, None, "{room:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn whois_is_for_oneself_and_server_admins() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    // Alice's device has made requests: it has a last connection.
    let path = |user: &str| format!("/admin/whois/{user}");
    let (status, body) = alice.get(&path(&alice.user_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.user_id.as_str());
    let connections = &body["devices"][&alice.device_id]["sessions"][0]["connections"];
    assert!(connections[0]["last_seen"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(connections[0]["ip"], "127.0.0.1", "{body}");

    let (status, body) = alice.get(&path(&bob.user_id)).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice.get(&path("not-a-user")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // A server admin may look anyone up.
    let root = UserId::parse("@root:localhost").unwrap();
    s.running()
        .services
        .accounts
        .create_account(&root, Some("admin password 1"), true, false)
        .await
        .unwrap();
    let (status, login) = s
        .call(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": "root"},
                        "password": "admin password 1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let admin = Client::signed_in(
        &s,
        &(
            root.as_str().to_owned(),
            login["access_token"].as_str().unwrap().to_owned(),
            login["device_id"].as_str().unwrap().to_owned(),
        ),
    );
    let (status, body) = admin.get(&path(&bob.user_id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["devices"][&bob.device_id].is_object(), "{body}");
    let (status, body) = admin.get(&path("@nobody:localhost")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = admin.get(&path("@someone:elsewhere.example")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // A deactivated account has no sessions to tell of.
    let (status, body) = bob.deactivate(false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = admin.get(&path(&bob.user_id)).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    s.stop().await;
}

//! Profiles over HTTP: fields, validation, and member events following a profile change.
//! Spec: client-server API, "Profiles".

use crate::common;

use common::{assert_error, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

async fn put(s: &TestServer, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    s.call(Method::PUT, &format!("{V3}{path}"), Some(token), Some(body))
        .await
}

#[tokio::test]
async fn profile_fields_are_set_read_and_deleted() {
    let s = TestServer::start().await;
    let (alice, token, _) = s.register("alice", "correct horse battery").await;
    let (_, bob_token, _) = s.register("bob", "correct horse battery").await;

    // A new account's display name is its localpart; no token is needed to read.
    let (status, profile) = s.get(&format!("{V3}/profile/{alice}"), None).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile, json!({"displayname": "alice"}));

    let (status, body) = put(
        &s,
        &token,
        &format!("/profile/{alice}/displayname"),
        json!({"displayname": "Alice W."}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, name) = s
        .get(&format!("{V3}/profile/{alice}/displayname"), None)
        .await;
    assert_eq!(name, json!({"displayname": "Alice W."}));

    // Other fields: m.tz and namespaced custom keys, with any JSON value.
    put(
        &s,
        &token,
        &format!("/profile/{alice}/m.tz"),
        json!({"m.tz": "Europe/Paris"}),
    )
    .await;
    put(
        &s,
        &token,
        &format!("/profile/{alice}/org.example.pronouns"),
        json!({"org.example.pronouns": ["she", "her"]}),
    )
    .await;
    let (_, profile) = s.get(&format!("{V3}/profile/{alice}"), None).await;
    assert_eq!(profile["m.tz"], "Europe/Paris");
    assert_eq!(profile["org.example.pronouns"], json!(["she", "her"]));
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("{V3}/profile/{alice}/m.tz"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.get(&format!("{V3}/profile/{alice}/m.tz"), None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Refusals.
    let (status, body) = put(
        &s,
        &bob_token,
        &format!("/profile/{alice}/displayname"),
        json!({"displayname": "hacked"}),
    )
    .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = put(
        &s,
        &token,
        &format!("/profile/{alice}/avatar_url"),
        json!({"avatar_url": "https://example.org/cat.png"}),
    )
    .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = put(
        &s,
        &token,
        &format!("/profile/{alice}/pronouns"),
        json!({"pronouns": "x"}),
    )
    .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let long_key = format!("org.{}", "a".repeat(300));
    let (status, body) = put(
        &s,
        &token,
        &format!("/profile/{alice}/{long_key}"),
        json!({ long_key.clone(): 1 }),
    )
    .await;
    assert_error(status, &body, 400, "M_KEY_TOO_LARGE");
    let (status, body) = put(
        &s,
        &token,
        &format!("/profile/{alice}/org.example.big"),
        json!({"org.example.big": "x".repeat(70_000)}),
    )
    .await;
    assert_error(status, &body, 400, "M_PROFILE_TOO_LARGE");
    let (status, body) = put(
        &s,
        &token,
        &format!("/profile/{alice}/displayname"),
        json!({"other": "x"}),
    )
    .await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    let (status, body) = s
        .get(&format!("{V3}/profile/@nobody:localhost"), None)
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&token)).await;
    assert_eq!(caps["capabilities"]["m.set_displayname"]["enabled"], true);
    assert_eq!(caps["capabilities"]["m.set_avatar_url"]["enabled"], true);
    s.stop().await;
}

#[tokio::test]
async fn a_new_display_name_reaches_every_joined_room() {
    let s = TestServer::start().await;
    let (alice, token, _) = s.register("alice", "correct horse battery").await;
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let (_, created) = s
            .post(&format!("{V3}/createRoom"), Some(&token), json!({}))
            .await;
        rooms.push(created["room_id"].as_str().unwrap().to_owned());
    }
    put(
        &s,
        &token,
        &format!("/profile/{alice}/displayname"),
        json!({"displayname": "Alice W."}),
    )
    .await;
    for room in &rooms {
        let (_, member) = s
            .get(
                &format!("{V3}/rooms/{room}/state/m.room.member/{alice}"),
                Some(&token),
            )
            .await;
        assert_eq!(member["displayname"], "Alice W.", "{member}");
        assert_eq!(member["membership"], "join");
        let (_, joined) = s
            .get(&format!("{V3}/rooms/{room}/joined_members"), Some(&token))
            .await;
        assert_eq!(joined["joined"][&alice]["display_name"], "Alice W.");
    }
    // Removing the name removes it from the member events too.
    s.call(
        Method::DELETE,
        &format!("{V3}/profile/{alice}/displayname"),
        Some(&token),
        None,
    )
    .await;
    let (_, member) = s
        .get(
            &format!("{V3}/rooms/{}/state/m.room.member/{alice}", rooms[0]),
            Some(&token),
        )
        .await;
    assert!(member.get("displayname").is_none(), "{member}");
    s.stop().await;
}

//! Rooms over HTTP: creation, membership, state, sending, history, visibility, relations,
//! aliases, directory, upgrades, as a client sees them.

use crate::common;

use common::client::Client;
use common::{assert_error, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn create_room_applies_preset_name_topic_alias_and_directory() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "name": "The Pub",
            "topic": "Happy hour",
            "room_alias_name": "pub",
            "visibility": "public",
        }))
        .await;

    let (status, name) = alice.state(&room, "m.room.name", "").await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name, json!({"name": "The Pub"}));
    let (_, topic) = alice.state(&room, "m.room.topic", "").await;
    assert_eq!(topic["topic"], "Happy hour");
    let (_, rules) = alice.state(&room, "m.room.join_rules", "").await;
    assert_eq!(rules["join_rule"], "public");
    let (_, guest) = alice.state(&room, "m.room.guest_access", "").await;
    assert_eq!(guest["guest_access"], "forbidden");
    let (_, visibility) = alice.state(&room, "m.room.history_visibility", "").await;
    assert_eq!(visibility["history_visibility"], "shared");
    let (_, alias) = alice.state(&room, "m.room.canonical_alias", "").await;
    assert_eq!(alias["alias"], "#pub:localhost");
    let (_, levels) = alice.state(&room, "m.room.power_levels", "").await;
    // Room v12 (the default): the creator has infinite power and is not listed.
    assert_eq!(levels["users"], json!({}));
    assert_eq!(levels["events"]["m.room.tombstone"], 150);
    assert_eq!(levels["invite"], 50);

    // The full state, in order of the spec's creation steps.
    let (status, state) = alice.get(&format!("/rooms/{room}/state")).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.canonical_alias",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(types.contains(&kind), "{kind} missing from {types:?}");
    }
    // format=event answers the whole event.
    let (_, event) = alice
        .get(&format!("/rooms/{room}/state/m.room.name/?format=event"))
        .await;
    assert_eq!(event["type"], "m.room.name");
    assert_eq!(event["room_id"], room.as_str());
    assert_eq!(event["sender"], alice.user_id.as_str());

    // The alias resolves without a token; the room is in the directory.
    let (status, resolved) = server
        .get(&format!("{V3}/directory/room/%23pub:localhost"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["room_id"], room.as_str());
    assert_eq!(resolved["servers"], json!(["localhost"]));
    let (_, public) = server.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(public["chunk"][0]["room_id"], room.as_str());
    assert_eq!(public["chunk"][0]["name"], "The Pub");
    assert_eq!(public["chunk"][0]["num_joined_members"], 1);
    assert_eq!(public["chunk"][0]["join_rule"], "public");
    let (_, listed) = server
        .get(&format!("{V3}/directory/list/room/{room}"), None)
        .await;
    assert_eq!(listed["visibility"], "public");

    // A second room cannot take the alias.
    let (status, body) = alice
        .post("/createRoom", json!({"room_alias_name": "pub"}))
        .await;
    assert_error(status, &body, 400, "M_ROOM_IN_USE");
    server.stop().await;
}

#[tokio::test]
async fn room_ids_follow_the_room_version() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    // v12: the room id is the create event's reference hash.
    let v12 = alice.create_room(json!({})).await;
    let (_, create) = alice
        .get(&format!("/rooms/{v12}/state/m.room.create/?format=event"))
        .await;
    assert_eq!(
        v12,
        format!("!{}", &create["event_id"].as_str().unwrap()[1..]),
        "{create}"
    );
    assert_eq!(create["content"]["room_version"], "12");
    assert!(create["content"].get("creator").is_none());
    // v10: an opaque id on our server, and `creator` in the create content.
    let v10 = alice.create_room(json!({"room_version": "10"})).await;
    assert!(v10.starts_with('!') && v10.ends_with(":localhost"), "{v10}");
    let (_, create) = alice.state(&v10, "m.room.create", "").await;
    assert_eq!(create["creator"], alice.user_id.as_str());
    let (_, levels) = alice.state(&v10, "m.room.power_levels", "").await;
    assert_eq!(levels["users"][&alice.user_id], 100);
    // Unsupported versions are refused.
    for unsupported in ["0", "13", "org.example.v1"] {
        let (status, body) = alice
            .post("/createRoom", json!({"room_version": unsupported}))
            .await;
        assert_error(status, &body, 400, "M_UNSUPPORTED_ROOM_VERSION");
    }
    // Identical requests at the same moment still make distinct v12 rooms (their create
    // events would otherwise be identical, and so would the hashes that name them).
    let answers = futures_util::future::join_all(
        (0..8).map(|_| alice.post("/createRoom", json!({"preset": "private_chat"}))),
    )
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.insert(body["room_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 8, "{ids:?}");
    server.stop().await;
}

#[tokio::test]
async fn messages_paginate_both_ways_with_filters() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    for i in 0..5 {
        alice.text(&room, &format!("a{i}")).await;
    }
    bob.send(
        &room,
        json!({"msgtype": "m.image", "body": "pic", "url": "mxc://localhost/abc"}),
    )
    .await;

    let filter = r#"{"types":["m.room.message"]}"#;
    let page = alice
        .messages(&room, &format!("dir=b&limit=3&filter={filter}"))
        .await;
    assert_eq!(bodies(&page["chunk"]), ["pic", "a4", "a3"]);
    let end = page["end"].as_str().unwrap();
    let page2 = alice
        .messages(&room, &format!("dir=b&limit=3&from={end}&filter={filter}"))
        .await;
    assert_eq!(bodies(&page2["chunk"]), ["a2", "a1", "a0"]);
    let end2 = page2["end"].as_str().unwrap();
    let page3 = alice
        .messages(&room, &format!("dir=b&limit=3&from={end2}&filter={filter}"))
        .await;
    assert_eq!(bodies(&page3["chunk"]), Vec::<String>::new());
    assert!(page3.get("end").is_none(), "{page3}");

    // Forwards from the start: the room's creation comes first.
    let forward = alice.messages(&room, "dir=f&limit=100").await;
    let chunk = forward["chunk"].as_array().unwrap();
    assert_eq!(chunk[0]["type"], "m.room.create");
    assert_eq!(
        bodies(&forward["chunk"]),
        ["a0", "a1", "a2", "a3", "a4", "pic"]
    );
    assert!(forward.get("end").is_none());

    // Sender, url and wildcard filters.
    let only_bob = alice
        .messages(
            &room,
            &format!(
                "dir=b&filter={}",
                r#"{"senders":["@bob:localhost"],"types":["m.room.*"]}"#
            ),
        )
        .await;
    let senders: Vec<&str> = only_bob["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sender"].as_str().unwrap())
        .collect();
    assert!(senders.iter().all(|s| *s == "@bob:localhost"), "{only_bob}");
    let urls = alice
        .messages(
            &room,
            &format!("dir=b&filter={}", r#"{"contains_url":true}"#),
        )
        .await;
    assert_eq!(bodies(&urls["chunk"]), ["pic"]);
    let lazy = alice
        .messages(
            &room,
            &format!("dir=b&limit=1&filter={}", r#"{"lazy_load_members":true}"#),
        )
        .await;
    assert_eq!(lazy["state"][0]["state_key"], "@bob:localhost", "{lazy}");

    // Bad requests.
    let (status, body) = alice.get(&format!("/rooms/{room}/messages")).await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    let (status, body) = alice.get(&format!("/rooms/{room}/messages?dir=x")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .get(&format!("/rooms/{room}/messages?dir=b&from=garbage"))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test]
async fn sends_are_idempotent_per_device_and_survive_restart() {
    let mut server = TestServer::start().await;
    let (user, token, _) = server.register("alice", "correct horse battery").await;
    let path = |room: &str, txn: &str| format!("{V3}/rooms/{room}/send/m.room.message/{txn}");
    let (_, created) = server
        .post(&format!("{V3}/createRoom"), Some(&token), json!({}))
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let body = json!({"msgtype": "m.text", "body": "once"});
    let (_, first) = server
        .call(
            Method::PUT,
            &path(&room, "txn1"),
            Some(&token),
            Some(body.clone()),
        )
        .await;
    let (_, again) = server
        .call(
            Method::PUT,
            &path(&room, "txn1"),
            Some(&token),
            Some(body.clone()),
        )
        .await;
    assert_eq!(first["event_id"], again["event_id"]);
    // The sending device sees its transaction id; another device of the same user does not.
    let event_path = format!(
        "{V3}/rooms/{room}/event/{}",
        first["event_id"].as_str().unwrap()
    );
    let (_, event) = server.get(&event_path, Some(&token)).await;
    assert_eq!(event["unsigned"]["transaction_id"], "txn1", "{event}");
    let (_, login) = server.login(&user, "correct horse battery").await;
    let other = login["access_token"].as_str().unwrap().to_owned();
    let (_, seen_elsewhere) = server.get(&event_path, Some(&other)).await;
    assert!(seen_elsewhere["unsigned"].get("transaction_id").is_none());
    // Another device with the same txn id makes a new event.
    let (_, other_event) = server
        .call(
            Method::PUT,
            &path(&room, "txn1"),
            Some(&other),
            Some(body.clone()),
        )
        .await;
    assert_ne!(other_event["event_id"], first["event_id"]);

    server.restart().await;
    let (status, after) = server
        .call(Method::PUT, &path(&room, "txn1"), Some(&token), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["event_id"], first["event_id"]);
    // Rooms, state and history survived too.
    let (_, name) = server
        .get(
            &format!("{V3}/rooms/{room}/state/m.room.create/"),
            Some(&token),
        )
        .await;
    assert_eq!(name["room_version"], "12");
    let (_, page) = server
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=b&limit=10"),
            Some(&token),
        )
        .await;
    assert_eq!(bodies(&page["chunk"]), ["once", "once"]);
    let (_, sent) = server
        .call(
            Method::PUT,
            &path(&room, "txn2"),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": "after restart"})),
        )
        .await;
    assert!(sent["event_id"].is_string(), "{sent}");
    server.stop().await;
}

#[tokio::test]
async fn membership_rules_refuse_what_they_should() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let carol = Client::new(&server, "carol").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;

    // An invite-only room refuses an uninvited join.
    let (status, body) = bob.join(&room).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Invited, bob joins; he shows in the member lists.
    let (status, body) = alice.invite(&room, &bob.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, invited) = alice
        .get(&format!("/rooms/{room}/members?membership=invite"))
        .await;
    assert_eq!(invited["chunk"][0]["state_key"], bob.user_id.as_str());
    let (status, body) = bob.post(&format!("/rooms/{room}/join"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (_, joined) = bob.get("/joined_rooms").await;
    assert_eq!(joined["joined_rooms"], json!([room]));
    let (_, members) = bob.get(&format!("/rooms/{room}/joined_members")).await;
    assert!(members["joined"][&alice.user_id].is_object(), "{members}");
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");
    let (_, not_join) = bob
        .get(&format!("/rooms/{room}/members?not_membership=join"))
        .await;
    assert_eq!(not_join["chunk"], json!([]));

    // Power levels forbid a state change by a default user.
    let (status, body) = bob
        .put(
            &format!("/rooms/{room}/state/m.room.name/"),
            json!({"name": "mine now"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Nor may bob kick alice.
    let (status, body) = bob
        .post(
            &format!("/rooms/{room}/kick"),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // A kicked user can't send.
    bob.text(&room, "hello").await;
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/kick"),
            json!({"user_id": bob.user_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob.try_send(&room, "still here?").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Nor list who is joined (spec: "The current user must be in the room").
    let (status, body) = bob.get(&format!("/rooms/{room}/joined_members")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (_, member) = alice.state(&room, "m.room.member", &bob.user_id).await;
    assert_eq!(member["membership"], "leave");
    assert_eq!(member["reason"], "spam");

    // A banned user can't join, even when invited.
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/ban"),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.invite(&room, &carol.user_id).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = carol.join(&room).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Unbanned and invited, carol joins.
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/unban"),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/unban"),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    alice.invite(&room, &carol.user_id).await;
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);

    // Leave, then forget; forgetting before leaving is refused.
    let (status, body) = carol
        .post(&format!("/rooms/{room}/forget"), json!({}))
        .await;
    assert_error(status, &body, 400, "M_UNKNOWN");
    let (status, _) = carol.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = carol
        .post(&format!("/rooms/{room}/forget"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, joined) = carol.get("/joined_rooms").await;
    assert_eq!(joined["joined_rooms"], json!([]));

    // Unknown rooms and bad targets.
    let (status, body) = bob.join("!nope:localhost").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/invite"),
            json!({"user_id": "not a user"}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/invite"),
            json!({"user_id": "@ghost:localhost"}),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn knocking_and_restricted_joins() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let space = alice.create_room(json!({"preset": "public_chat"})).await;
    let knock_room = alice
        .create_room(json!({
            "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
        }))
        .await;
    let (status, body) = bob
        .post(
            &format!("/knock/{knock_room}"),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, member) = alice
        .state(&knock_room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(member["membership"], "knock");
    // A knock is accepted with an invite.
    alice.invite(&knock_room, &bob.user_id).await;
    assert_eq!(bob.join(&knock_room).await.0, StatusCode::OK);
    // Knocking on an invite-only room is refused.
    let invite_only = alice.create_room(json!({})).await;
    let (status, body) = bob.post(&format!("/knock/{invite_only}"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // Restricted: members of `space` may join.
    let restricted = alice
        .create_room(json!({
            "initial_state": [{"type": "m.room.join_rules", "content": {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": space}]
            }}]
        }))
        .await;
    let (status, body) = bob.join(&restricted).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert_eq!(bob.join(&space).await.0, StatusCode::OK);
    let (status, body) = bob.join(&restricted).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, member) = alice
        .state(&restricted, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice.user_id.as_str()
    );
    server.stop().await;
}

/// Rooms v1 to v9 (`rooms/v1.md` to `v9.md`): made and used like newer ones, with what their
/// version adds: event ids that name our server in 1 and 2, knocking from 7, restricted joins
/// from 8 (`allow` surviving redaction), power levels written as strings before 10.
#[tokio::test]
async fn rooms_v1_to_v9_do_what_their_version_allows() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let space = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&space).await.0, StatusCode::OK);
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9"] {
        let v: u32 = version.parse().unwrap();
        let public = alice
            .create_room(json!({"room_version": version, "preset": "public_chat"}))
            .await;
        let (_, create) = alice.state(&public, "m.room.create", "").await;
        assert_eq!(create["room_version"], version);
        assert_eq!(create["creator"], alice.user_id.as_str());
        assert_eq!(bob.join(&public).await.0, StatusCode::OK, "v{version}");
        bob.text(&public, "hello").await;
        let page = alice.messages(&public, "dir=b&limit=1").await;
        assert_eq!(page["chunk"][0]["content"]["body"], "hello", "v{version}");
        // Event ids: `$opaque:server` in 1 and 2, the reference hash after.
        let id = page["chunk"][0]["event_id"].as_str().unwrap();
        assert_eq!(id.ends_with(":localhost"), v <= 2, "v{version}: {id}");
        let (status, event) = alice
            .get(&format!("/rooms/{public}/event/{}", common::urlencode(id)))
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {event}");
        assert_eq!(event["event_id"], id);

        // Knocking: from v7.
        let knock_room = alice
            .create_room(json!({
                "room_version": version,
                "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]
            }))
            .await;
        let (status, body) = bob.post(&format!("/knock/{knock_room}"), json!({})).await;
        if v >= 7 {
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        } else {
            assert_error(status, &body, 403, "M_FORBIDDEN");
        }

        // Restricted joins: from v8, and their `allow` survives a redaction from v8.
        let restricted = alice
            .create_room(json!({
                "room_version": version,
                "initial_state": [{"type": "m.room.join_rules", "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]
                }}]
            }))
            .await;
        let (status, body) = bob.join(&restricted).await;
        if v >= 8 {
            assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        } else {
            assert_error(status, &body, 403, "M_FORBIDDEN");
        }
        let (_, rules) = alice
            .get(&format!(
                "/rooms/{restricted}/state/m.room.join_rules/?format=event"
            ))
            .await;
        // v3 event ids may hold `/`: encoded, as in any path.
        let rules_id = common::urlencode(rules["event_id"].as_str().unwrap());
        let (status, body) = alice
            .put(
                &format!("/rooms/{restricted}/redact/{rules_id}/r{version}"),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, rules) = alice.state(&restricted, "m.room.join_rules", "").await;
        assert_eq!(rules["join_rule"], "restricted", "v{version}");
        assert_eq!(rules.get("allow").is_some(), v >= 8, "v{version}: {rules}");

        // Power levels as strings: accepted before v10, and in force.
        let levels =
            json!({"users": {alice.user_id.as_str(): "100", bob.user_id.as_str(): " 50 "}});
        let (status, body) = alice
            .put(
                &format!("/rooms/{public}/state/m.room.power_levels/"),
                levels.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let (status, body) = bob
            .put(
                &format!("/rooms/{public}/state/m.room.name/"),
                json!({"name": "by bob"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: bob has 50: {body}");
    }
    // Version 10 refuses the same strings.
    let v10 = alice
        .create_room(json!({"room_version": "10", "preset": "public_chat"}))
        .await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{v10}/state/m.room.power_levels/"),
            json!({"users": {alice.user_id.as_str(): "100"}}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

/// A redacted power levels event counts redacted at once: in a v10 room the redaction
/// drops `invite`, so the default (0) applies and a member without power may invite. The
/// writer kept the levels it had parsed before (the redaction's own hooks read the event
/// again before its batch was written) and went on refusing.
#[tokio::test]
async fn a_redacted_power_levels_event_is_judged_redacted_at_once() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    Client::new(&server, "carol").await;
    let room = alice
        .create_room(json!({"room_version": "10", "preset": "public_chat"}))
        .await;
    let (status, levels) = alice.state(&room, "m.room.power_levels", "").await;
    assert_eq!(status, StatusCode::OK, "{levels}");
    let mut levels = levels;
    levels["invite"] = json!(50);
    let (status, body) = alice
        .put(&format!("/rooms/{room}/state/m.room.power_levels/"), levels)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let levels_id = body["event_id"].as_str().unwrap().to_owned();
    let (status, body) = bob.join(&room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob.invite(&room, "@carol:localhost").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    let (status, body) = alice.redact(&room, &levels_id, "levels").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, shown) = alice.state(&room, "m.room.power_levels", "").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown.get("invite").is_none(), "redacted: {shown}");
    let (status, body) = bob.invite(&room, "@carol:localhost").await;
    assert_eq!(status, StatusCode::OK, "invite falls back to 0: {body}");
    server.stop().await;
}

/// A redaction is served naming its target at the top level and in the content in
/// every room version (spec: room version 11, "Moving the `redacts` property": older
/// clients read the top level, newer ones the content), through `/event` and `/sync`.
#[tokio::test]
async fn a_redaction_names_its_target_in_both_places_in_every_room_version() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    for version in ["10", "11", "12"] {
        let room = alice
            .create_room(json!({"preset": "public_chat", "room_version": version}))
            .await;
        let said = alice.text(&room, "soon gone").await;
        let (status, body) = alice.redact(&room, &said, &format!("r{version}")).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let redaction_id = body["event_id"].as_str().unwrap().to_owned();
        let (status, shown) = alice
            .get(&format!("/rooms/{room}/event/{redaction_id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {shown}");
        assert_eq!(shown["redacts"], said.as_str(), "v{version}: {shown}");
        assert_eq!(
            shown["content"]["redacts"],
            said.as_str(),
            "v{version}: {shown}"
        );
        let (status, synced) = alice.get("/sync").await;
        assert_eq!(status, StatusCode::OK, "{synced}");
        let listed = synced["rooms"]["join"][room.as_str()]["timeline"]["events"]
            .as_array()
            .and_then(|events| {
                events
                    .iter()
                    .find(|e| e["event_id"] == redaction_id.as_str())
            })
            .unwrap_or_else(|| panic!("v{version}: {synced}"));
        assert_eq!(listed["redacts"], said.as_str(), "v{version}: {listed}");
        assert_eq!(
            listed["content"]["redacts"],
            said.as_str(),
            "v{version}: {listed}"
        );
        // The redaction redacted in turn (in v10 it then names no target): it and the
        // target's `redacted_because` are still shown.
        let (status, body) = alice
            .redact(&room, &redaction_id, &format!("rr{version}"))
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let (status, shown) = alice
            .get(&format!("/rooms/{room}/event/{redaction_id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "v{version}: {shown}");
        let (status, target) = alice.get(&format!("/rooms/{room}/event/{said}")).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {target}");
        assert_eq!(
            target["unsigned"]["redacted_because"]["event_id"],
            redaction_id.as_str(),
            "v{version}: {target}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn redactions_need_power_over_others_events() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let alices = alice.text(&room, "alice's secret").await;
    let bobs = bob.text(&room, "bob's secret").await;

    // Bob (power 0) may not redact alice's message.
    let (status, body) = bob
        .put(&format!("/rooms/{room}/redact/{alices}/r1"), json!({}))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // He may redact his own; alice (power 100) may redact anyone's.
    let (status, own) = bob
        .put(
            &format!("/rooms/{room}/redact/{bobs}/r2"),
            json!({"reason": "oops"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let (status, body) = alice
        .put(&format!("/rooms/{room}/redact/{alices}/r3"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The redacted content is served per the room version, with redacted_because.
    let (_, event) = alice.get(&format!("/rooms/{room}/event/{bobs}")).await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(
        event["unsigned"]["redacted_because"]["event_id"],
        own["event_id"]
    );
    assert_eq!(
        event["unsigned"]["redacted_because"]["content"]["reason"],
        "oops"
    );
    // `/messages` reads it through its timeline entry, which carries the event's
    // metadata: the redaction shows there too.
    let (status, page) = alice
        .get(&format!("/rooms/{room}/messages?dir=b&limit=10"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = page["chunk"]
        .as_array()
        .and_then(|chunk| chunk.iter().find(|e| e["event_id"] == bobs.as_str()))
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(listed["content"], json!({}), "{listed}");
    assert_eq!(
        listed["unsigned"]["redacted_because"]["event_id"],
        own["event_id"]
    );
    // The redaction event itself names the redacted event (top level and, v11+, content).
    let redaction_id = own["event_id"].as_str().unwrap();
    let (_, redaction) = alice
        .get(&format!("/rooms/{room}/event/{redaction_id}"))
        .await;
    assert_eq!(redaction["redacts"], bobs.as_str());
    assert_eq!(redaction["content"]["redacts"], bobs.as_str());
    // Unknown events can't be redacted.
    let (status, body) = alice
        .put(&format!("/rooms/{room}/redact/$nope/r4"), json!({}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn history_visibility_decides_who_reads_what() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let eve = Client::new(&server, "eve").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility",
                               "content": {"history_visibility": "joined"}}]
        }))
        .await;
    let before = alice.text(&room, "before bob").await;
    bob.join(&room).await;
    let during = alice.text(&room, "while bob is here").await;
    bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    let after = alice.text(&room, "after bob left").await;

    // Bob sees only what was sent while he was joined.
    let page = bob.messages(&room, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["while bob is here"]);
    assert_eq!(
        bob.get(&format!("/rooms/{room}/event/{during}")).await.0,
        StatusCode::OK
    );
    let (status, body) = bob.get(&format!("/rooms/{room}/event/{before}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = bob.get(&format!("/rooms/{room}/event/{after}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    // His view of the state stops at his leave.
    let (_, members) = bob
        .get(&format!("/rooms/{room}/members?membership=leave"))
        .await;
    assert_eq!(members["chunk"][0]["state_key"], bob.user_id.as_str());
    alice
        .put(
            &format!("/rooms/{room}/state/m.room.topic/"),
            json!({"topic": "after bob"}),
        )
        .await;
    let (status, body) = bob.state(&room, "m.room.topic", "").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // A non-member gets 403 everywhere but on /event, which (spec) answers 404 alike for
    // an event one may not read and an unknown one.
    let (status, body) = eve.get(&format!("/rooms/{room}/event/{during}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    for path in [
        format!("/rooms/{room}/messages?dir=b"),
        format!("/rooms/{room}/context/{during}"),
        format!("/rooms/{room}/state"),
        format!("/rooms/{room}/members"),
        format!("/rooms/{room}/joined_members"),
    ] {
        let (status, body) = eve.get(&path).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    let (status, body) = alice.get(&format!("/rooms/{room}/event/$unknown")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // With `shared`, a newcomer sees the history from before they joined.
    let shared = alice.create_room(json!({"preset": "public_chat"})).await;
    alice.text(&shared, "old news").await;
    eve.join(&shared).await;
    let page = eve.messages(&shared, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["old news"]);

    // world_readable: anyone may read without joining.
    let open = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility",
                               "content": {"history_visibility": "world_readable"}}]
        }))
        .await;
    alice.text(&open, "for everyone").await;
    let page = eve.messages(&open, "dir=b&limit=50").await;
    assert_eq!(bodies(&page["chunk"]), ["for everyone"]);
    server.stop().await;
}

#[tokio::test]
async fn context_relations_and_threads() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    for i in 0..3 {
        alice.text(&room, &format!("before{i}")).await;
    }
    let root = alice.text(&room, "root").await;
    for i in 0..3 {
        alice.text(&room, &format!("after{i}")).await;
    }

    let (status, context) = alice
        .get(&format!("/rooms/{room}/context/{root}?limit=4"))
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(context["event"]["event_id"], root.as_str());
    assert_eq!(bodies(&context["events_before"]), ["before2", "before1"]);
    assert_eq!(bodies(&context["events_after"]), ["after0", "after1"]);
    assert!(context["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));
    // The tokens continue the pagination on either side.
    let start = context["start"].as_str().unwrap();
    let older = alice
        .messages(&room, &format!("dir=b&limit=1&from={start}"))
        .await;
    assert_eq!(bodies(&older["chunk"]), ["before0"]);
    let end = context["end"].as_str().unwrap();
    let newer = alice
        .messages(&room, &format!("dir=f&limit=1&from={end}"))
        .await;
    assert_eq!(bodies(&newer["chunk"]), ["after2"]);

    // An edit, two reactions and a thread reply.
    let edit = alice
        .send(
            &room,
            json!({
                "msgtype": "m.text", "body": "* root (edited)",
                "m.new_content": {"msgtype": "m.text", "body": "root (edited)"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": root}
            }),
        )
        .await;
    let txn = |n: u32| format!("react{n}");
    for (who, n) in [(&alice, 1), (&bob, 2)] {
        let (status, body) = who
            .put(
                &format!("/rooms/{room}/send/m.reaction/{}", txn(n)),
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let reply = bob
        .send(
            &room,
            json!({
                "msgtype": "m.text", "body": "in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}
            }),
        )
        .await;

    let (_, all) = alice.get(&format!("/rooms/{room}/relations/{root}")).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 4, "{all}");
    assert_eq!(all["chunk"][0]["event_id"], reply.as_str(), "newest first");
    let (_, edits) = alice
        .get(&format!("/rooms/{room}/relations/{root}/m.replace"))
        .await;
    assert_eq!(edits["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(edits["chunk"][0]["event_id"], edit.as_str());
    let (_, reactions) = alice
        .get(&format!(
            "/rooms/{room}/relations/{root}/m.annotation/m.reaction?limit=1"
        ))
        .await;
    assert_eq!(reactions["chunk"].as_array().unwrap().len(), 1);
    let next = reactions["next_batch"].as_str().unwrap();
    let (_, rest) = alice
        .get(&format!(
            "/rooms/{room}/relations/{root}/m.annotation/m.reaction?limit=1&from={next}"
        ))
        .await;
    assert_eq!(rest["chunk"].as_array().unwrap().len(), 1);
    assert_ne!(
        rest["chunk"][0]["event_id"],
        reactions["chunk"][0]["event_id"]
    );
    assert!(rest.get("next_batch").is_none(), "{rest}");

    // A redacted reaction no longer counts.
    let reaction_id = rest["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    alice
        .put(&format!("/rooms/{room}/redact/{reaction_id}/x"), json!({}))
        .await;
    let (_, reactions) = alice
        .get(&format!("/rooms/{room}/relations/{root}/m.annotation"))
        .await;
    assert_eq!(reactions["chunk"].as_array().unwrap().len(), 1);

    // The root carries the bundled aggregations: the latest edit and the thread summary.
    let (_, bundled) = bob.get(&format!("/rooms/{room}/event/{root}")).await;
    let relations = &bundled["unsigned"]["m.relations"];
    assert_eq!(
        relations["m.replace"]["event_id"],
        edit.as_str(),
        "{bundled}"
    );
    assert_eq!(relations["m.thread"]["count"], 1);
    assert_eq!(
        relations["m.thread"]["latest_event"]["event_id"],
        reply.as_str()
    );
    assert_eq!(relations["m.thread"]["current_user_participated"], true);
    let (_, seen_by_alice) = alice.get(&format!("/rooms/{room}/event/{root}")).await;
    assert_eq!(
        seen_by_alice["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true,
        "the root's sender takes part in its thread"
    );
    // An edit by someone else is not a valid replacement; redacting the edit unbundles it.
    bob.send(
        &room,
        json!({
            "msgtype": "m.text", "body": "* hijack",
            "m.new_content": {"msgtype": "m.text", "body": "hijack"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}
        }),
    )
    .await;
    let (_, still) = alice.get(&format!("/rooms/{room}/event/{root}")).await;
    assert_eq!(
        still["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit.as_str()
    );
    alice
        .put(&format!("/rooms/{room}/redact/{edit}/unedit"), json!({}))
        .await;
    let (_, unedited) = alice.get(&format!("/rooms/{room}/event/{root}")).await;
    assert!(
        unedited["unsigned"]["m.relations"]
            .get("m.replace")
            .is_none(),
        "{unedited}"
    );
    assert_eq!(unedited["unsigned"]["m.relations"]["m.thread"]["count"], 1);

    // Threads list the root; `participated` only for those who took part.
    let (_, threads) = alice.get(&format!("/rooms/{room}/threads")).await;
    assert_eq!(threads["chunk"][0]["event_id"], root.as_str(), "{threads}");
    let (_, mine) = bob
        .get(&format!("/rooms/{room}/threads?include=participated"))
        .await;
    assert_eq!(mine["chunk"].as_array().unwrap().len(), 1);
    let carol = Client::new(&server, "carol").await;
    carol.join(&room).await;
    let (_, none) = carol
        .get(&format!("/rooms/{room}/threads?include=participated"))
        .await;
    assert_eq!(none["chunk"], json!([]));
    let (status, body) = alice
        .get(&format!("/rooms/{room}/relations/$missing"))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn aliases_and_directory_listing() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Lobby"}))
        .await;
    let (status, body) = alice
        .put(
            "/directory/room/%23lobby:localhost",
            json!({"room_id": room}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob
        .put(
            "/directory/room/%23lobby:localhost",
            json!({"room_id": room}),
        )
        .await;
    assert_error(status, &body, 409, "M_UNKNOWN");
    let (status, body) = alice
        .put(
            "/directory/room/%23x:elsewhere.org",
            json!({"room_id": room}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (_, aliases) = alice.get(&format!("/rooms/{room}/aliases")).await;
    assert_eq!(aliases["aliases"], json!(["#lobby:localhost"]));

    // canonical_alias must name aliases that point to the room.
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/state/m.room.canonical_alias/"),
            json!({"alias": "#nothere:localhost"}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_ALIAS");
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/state/m.room.canonical_alias/"),
            json!({"alias": "#lobby:localhost"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Joining by alias; bob (not the creator, no power) may not delete it.
    let (status, joined) = bob.join("#lobby:localhost").await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());
    let (status, body) = bob
        .call(Method::DELETE, "/directory/room/%23lobby:localhost", None)
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, _) = alice
        .call(Method::DELETE, "/directory/room/%23lobby:localhost", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .get(&format!("{V3}/directory/room/%23lobby:localhost"), None)
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Publishing needs power; the directory filters and paginates.
    let (status, body) = bob
        .put(
            &format!("/directory/list/room/{room}"),
            json!({"visibility": "public"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    alice
        .put(
            &format!("/directory/list/room/{room}"),
            json!({"visibility": "public"}),
        )
        .await;
    let other = alice
        .create_room(json!({"visibility": "public", "name": "Garden"}))
        .await;
    let (_, page) = alice.post("/publicRooms", json!({"limit": 1})).await;
    assert_eq!(
        page["chunk"][0]["room_id"],
        room.as_str(),
        "most members first"
    );
    assert_eq!(page["total_room_count_estimate"], 2);
    let next = page["next_batch"].as_str().unwrap();
    let (_, page2) = alice
        .post("/publicRooms", json!({"limit": 1, "since": next}))
        .await;
    assert_eq!(page2["chunk"][0]["room_id"], other.as_str());
    let (_, found) = alice
        .post(
            "/publicRooms",
            json!({"filter": {"generic_search_term": "gard"}}),
        )
        .await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["name"], "Garden");
    alice
        .put(
            &format!("/directory/list/room/{room}"),
            json!({"visibility": "private"}),
        )
        .await;
    let (_, listed) = server
        .get(&format!("{V3}/directory/list/room/{room}"), None)
        .await;
    assert_eq!(listed["visibility"], "private");
    server.stop().await;
}

#[tokio::test]
async fn upgrade_replaces_the_room() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let old = alice
        .create_room(json!({
            "room_version": "11", "preset": "public_chat", "name": "Old name",
            "room_alias_name": "up"
        }))
        .await;
    bob.join(&old).await;
    let (status, body) = bob
        .post(
            &format!("/rooms/{old}/upgrade"),
            json!({"new_version": "12"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice
        .post(
            &format!("/rooms/{old}/upgrade"),
            json!({"new_version": "99"}),
        )
        .await;
    assert_error(status, &body, 400, "M_UNSUPPORTED_ROOM_VERSION");
    let (status, body) = alice
        .post(
            &format!("/rooms/{old}/upgrade"),
            json!({"new_version": "12"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();

    let (_, tombstone) = alice.state(&old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new);
    let (_, create) = alice.state(new, "m.room.create", "").await;
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(create["room_version"], "12");
    let (_, name) = alice.state(new, "m.room.name", "").await;
    assert_eq!(name["name"], "Old name");
    let (_, rules) = alice.state(new, "m.room.join_rules", "").await;
    assert_eq!(rules["join_rule"], "public");
    let (_, levels) = alice.state(new, "m.room.power_levels", "").await;
    assert!(levels["users"].get(&alice.user_id).is_none(), "{levels}");
    // The old room is restricted; the alias moved.
    let (status, body) = bob.try_send(&old, "still talking").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (_, resolved) = alice.get("/directory/room/%23up:localhost").await;
    assert_eq!(resolved["room_id"], new);
    let (_, alias) = alice.state(new, "m.room.canonical_alias", "").await;
    assert_eq!(alias["alias"], "#up:localhost");
    // Bob follows.
    assert_eq!(bob.join(new).await.0, StatusCode::OK);
    server.stop().await;
}

/// Spec: "Room Upgrades", "When a user joins the new room, the server should
/// automatically transfer/replicate some of the user's personalized settings such as
/// notifications, tags, etc.": bob's tag, his mute rules and his `m.direct` entry for
/// the old room come with him to the new one.
#[tokio::test]
async fn a_members_settings_follow_them_into_the_upgraded_room() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let old = alice
        .create_room(json!({"room_version": "11", "preset": "public_chat"}))
        .await;
    assert_eq!(bob.join(&old).await.0, StatusCode::OK);
    let bob_id = bob.user_id.clone();
    let (status, _) = bob
        .put(
            &format!("/user/{bob_id}/rooms/{old}/tags/u.work"),
            json!({"order": 0.5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = bob
        .put(
            &format!("/pushrules/global/room/{old}"),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob
        .put(
            &format!("/pushrules/global/override/{old}"),
            json!({"actions": [], "conditions": [
                {"kind": "event_match", "key": "room_id", "pattern": old}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = bob
        .put(
            &format!("/user/{bob_id}/account_data/m.direct"),
            json!({&alice.user_id: [old]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = bob
        .put(
            &format!("/pushrules/global/override/{old}/enabled"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A room that only claims to follow the old one gets nothing of bob's.
    let carol = Client::new(&server, "carol").await;
    let claimed = carol
        .create_room(json!({"preset": "public_chat",
                            "creation_content": {"predecessor": {"room_id": old}}}))
        .await;
    assert_eq!(bob.join(&claimed).await.0, StatusCode::OK);
    let (_, tags) = bob
        .get(&format!("/user/{bob_id}/rooms/{claimed}/tags"))
        .await;
    assert_eq!(tags["tags"], json!({}), "{tags}");
    let (status, _) = bob.get(&format!("/pushrules/global/room/{claimed}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = alice
        .post(
            &format!("/rooms/{old}/upgrade"),
            json!({"new_version": "12"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert_eq!(bob.join(&new).await.0, StatusCode::OK);

    let (_, tags) = bob.get(&format!("/user/{bob_id}/rooms/{new}/tags")).await;
    assert_eq!(tags["tags"]["u.work"]["order"], 0.5, "{tags}");
    let (status, rule) = bob.get(&format!("/pushrules/global/room/{new}")).await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["actions"], json!([]));
    let (status, rule) = bob.get(&format!("/pushrules/global/override/{new}")).await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["conditions"][0]["pattern"], new.as_str(), "{rule}");
    assert_eq!(
        rule["enabled"], false,
        "a disabled rule stays disabled: {rule}"
    );
    let (_, direct) = bob
        .get(&format!("/user/{bob_id}/account_data/m.direct"))
        .await;
    assert_eq!(direct[&alice.user_id], json!([old, new]), "{direct}");
    // The old room's settings stay.
    let (_, tags) = bob.get(&format!("/user/{bob_id}/rooms/{old}/tags")).await;
    assert!(tags["tags"]["u.work"].is_object(), "{tags}");
    server.stop().await;
}

/// An upgrader who may send the tombstone but not restrict the old room as far as an
/// upgrade does (the restriction needs level 50, they have 40): the upgrade stands once
/// the tombstone is in, the alias moves, and the answer is 200, not an error after the
/// fact.
#[tokio::test]
async fn an_upgrade_whose_restriction_is_refused_still_completes() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let old = alice
        .create_room(json!({"room_version": "11", "preset": "public_chat",
                            "room_alias_name": "lowpower"}))
        .await;
    assert_eq!(bob.join(&old).await.0, StatusCode::OK);
    let (status, body) = alice
        .put(
            &format!("/rooms/{old}/state/m.room.power_levels/"),
            json!({"users": {&alice.user_id: 100, &bob.user_id: 40},
                   "events": {"m.room.tombstone": 40, "m.room.power_levels": 40},
                   "state_default": 40}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob
        .post(
            &format!("/rooms/{old}/upgrade"),
            json!({"new_version": "12"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    let (_, tombstone) = bob.state(&old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new);
    let (_, resolved) = bob.get("/directory/room/%23lowpower:localhost").await;
    assert_eq!(resolved["room_id"], new, "{resolved}");
    server.stop().await;
}

/// A moderator who may send the tombstone upgrades the room: they are raised only to copy
/// the state across, and end with their own level (as Synapse does), not an admin's.
#[tokio::test]
async fn an_upgrade_by_a_moderator_leaves_them_a_moderator() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let old = alice
        .create_room(json!({"room_version": "10", "preset": "public_chat", "name": "Ours"}))
        .await;
    assert_eq!(bob.join(&old).await.0, StatusCode::OK);
    let (status, body) = alice
        .put(
            &format!("/rooms/{old}/state/m.room.power_levels/"),
            json!({"users": {&alice.user_id: 100, &bob.user_id: 50},
                   "events": {"m.room.tombstone": 50}, "state_default": 50}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob
        .post(
            &format!("/rooms/{old}/upgrade"),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    let (_, levels) = bob.state(new, "m.room.power_levels", "").await;
    assert_eq!(levels["users"][&bob.user_id], 50, "{levels}");
    assert_eq!(levels["users"][&alice.user_id], 100, "{levels}");
    let (_, name) = bob.state(new, "m.room.name", "").await;
    assert_eq!(name["name"], "Ours");
    server.stop().await;
}

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_visible_event() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let first = alice.text(&room, "first").await;
    let (_, event) = alice.get(&format!("/rooms/{room}/event/{first}")).await;
    let ts = event["origin_server_ts"].as_u64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = alice.text(&room, "second").await;

    let (status, found) = alice
        .get(&format!(
            "/rooms/{room}/timestamp_to_event?ts={}&dir=f",
            ts + 1
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["event_id"], second.as_str());
    let (_, found) = alice
        .get(&format!("/rooms/{room}/timestamp_to_event?ts={ts}&dir=b"))
        .await;
    assert_eq!(found["event_id"], first.as_str());
    assert_eq!(found["origin_server_ts"], ts);
    let (status, body) = alice
        .get(&format!("/rooms/{room}/timestamp_to_event?ts=1&dir=b"))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice
        .get(&format!("/rooms/{room}/timestamp_to_event?ts=x&dir=b"))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test]
async fn create_room_options_and_bad_input() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    // trusted_private_chat in v12: invitees become additional creators; is_direct marks them.
    let dm = alice
        .create_room(json!({
            "preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true
        }))
        .await;
    let (_, create) = alice.state(&dm, "m.room.create", "").await;
    assert_eq!(create["additional_creators"], json!([bob.user_id]));
    let (_, invite) = alice.state(&dm, "m.room.member", &bob.user_id).await;
    assert_eq!(invite["membership"], "invite");
    assert_eq!(invite["is_direct"], true);
    // In v11 they get the creator's power level instead.
    let dm11 = alice
        .create_room(json!({
            "room_version": "11", "preset": "trusted_private_chat", "invite": [bob.user_id]
        }))
        .await;
    let (_, levels) = alice.state(&dm11, "m.room.power_levels", "").await;
    assert_eq!(levels["users"][&bob.user_id], 100);

    // The override applies on top of the defaults.
    let room = alice
        .create_room(json!({"power_level_content_override": {"events_default": 20}}))
        .await;
    let (_, levels) = alice.state(&room, "m.room.power_levels", "").await;
    assert_eq!(levels["events_default"], 20);
    assert_eq!(levels["state_default"], 50);

    // Initial state the rules refuse is M_INVALID_ROOM_STATE.
    let (status, body) = alice
        .post(
            "/createRoom",
            json!({"room_version": "11", "power_level_content_override": {"users": {}},
                   "name": "unreachable"}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_ROOM_STATE");
    for bad in [
        json!({"visibility": "secret"}),
        json!({"preset": "party"}),
        json!({"invite": ["nobody"]}),
    ] {
        let (status, body) = alice.post("/createRoom", bad).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
    let (status, body) = alice.post("/createRoom", json!({"name": 5})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    // Sending: content must be an object; an event over 64 KiB is too large.
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/send/m.room.message/bad1"),
            json!([1, 2]),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let big = "x".repeat(70_000);
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/send/m.room.message/bad2"),
            json!({"msgtype": "m.text", "body": big}),
        )
        .await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/send/m.room.message/bad3"),
            json!({"n": 1.5}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = alice
        .put("/rooms/!nope:localhost/send/m.room.message/t", json!({}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_sends_form_one_chain() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let sends = (0..40).map(|i| {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/c{i}");
        let server = &server;
        let token = alice.token.clone();
        async move {
            let (status, body) = server
                .call(
                    Method::PUT,
                    &path,
                    Some(&token),
                    Some(json!({"body": format!("{i}"), "msgtype": "m.text"})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    });
    futures_util::future::join_all(sends).await;
    let page = alice.messages(&room, "dir=f&limit=100").await;
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(bodies(&page["chunk"]).len(), 40);
    // Each PDU's prev_events is the event before it and its depth one more: a single
    // chain, no forks, whatever order the writer took the requests in.
    let store = server.running().services.rooms.store();
    let mut previous: Option<(String, u64)> = None;
    for event in chunk {
        let id = event["event_id"].as_str().unwrap();
        let pdu = store.event_by_id(id).unwrap().unwrap().pdu().clone();
        let depth = pdu["depth"].as_u64().unwrap();
        if let Some((prev_id, prev_depth)) = &previous {
            assert_eq!(pdu["prev_events"], json!([prev_id]));
            assert_eq!(depth, prev_depth + 1);
        }
        assert!(
            pdu.get("event_id").is_none(),
            "federation format has no event_id"
        );
        assert!(pdu["signatures"]["localhost"].is_object());
        previous = Some((id.to_owned(), depth));
    }
    server.stop().await;
}

#[tokio::test]
async fn refusals_leave_nothing_half_done_and_edges_hold() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    // A refused createRoom leaves no room behind.
    let (status, body) = alice
        .post(
            "/createRoom",
            json!({"room_version": "11", "power_level_content_override": {"users": {}},
                   "name": "unreachable", "room_alias_name": "never"}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_ROOM_STATE");
    let (_, joined) = alice.get("/joined_rooms").await;
    assert_eq!(joined["joined_rooms"], json!([]));
    let (status, _) = alice.get("/directory/room/%23never:localhost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Upgrading a v12 room (infinite creator power) to v11 works.
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "down"}))
        .await;
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/upgrade"),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    let (_, levels) = alice.state(new, "m.room.power_levels", "").await;
    // The highest level the old content names (v12's tombstone level, 150).
    assert_eq!(levels["users"][&alice.user_id], 150, "{levels}");

    // joined_members uses the spec's `display_name`.
    let profile_room = alice.create_room(json!({})).await;
    alice
        .put(
            &format!(
                "/rooms/{profile_room}/state/m.room.member/{}",
                alice.user_id
            ),
            json!({"membership": "join", "displayname": "Alice A."}),
        )
        .await;
    let (_, members) = alice
        .get(&format!("/rooms/{profile_room}/joined_members"))
        .await;
    assert_eq!(
        members["joined"][&alice.user_id]["display_name"],
        "Alice A."
    );

    // Tokens at the edge of u64 and limit=0 neither panic nor loop.
    let page = alice
        .messages(
            &room,
            "dir=b&to=s18446744073709551615&from=s18446744073709551615",
        )
        .await;
    assert_eq!(page["chunk"], json!([]));
    let page = alice.messages(&room, "dir=b&limit=0").await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let (status, _) = alice
        .post("/publicRooms", json!({"since": "p18446744073709551615"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // After /forget the history is gone for that user.
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    bob.text(&room, "bye").await;
    bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(
        bob.get(&format!("/rooms/{room}/messages?dir=b")).await.0,
        StatusCode::OK
    );
    bob.post(&format!("/rooms/{room}/forget"), json!({})).await;
    let (status, body) = bob.get(&format!("/rooms/{room}/messages?dir=b")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

/// Room version 3 names events by their reference hash in standard base64, so ids hold
/// `/` and `+` (`rooms/v3.md`, "Event IDs"; v4 switched to URL-safe base64 for that
/// reason). Clients percent-encode them in paths; every endpoint that takes an event id
/// in its path must find the event.
#[tokio::test]
async fn room_v3_event_ids_with_slashes_work_in_paths() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let room = alice
        .create_room(json!({"room_version": "3", "preset": "public_chat"}))
        .await;
    let mut with_slash = None;
    for n in 0..64 {
        let id = alice.text(&room, &format!("message {n}")).await;
        assert_eq!(id.len(), 44, "{id}");
        assert!(!id.contains(['-', '_']), "standard alphabet: {id}");
        if id.contains('/') && with_slash.is_none() {
            with_slash = Some(id);
        }
    }
    let id = with_slash.expect("one of 64 hashes encodes a /");
    let path_id = common::urlencode(&id);
    let (status, event) = alice.get(&format!("/rooms/{room}/event/{path_id}")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["event_id"], id.as_str());
    let (status, context) = alice
        .get(&format!("/rooms/{room}/context/{path_id}?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(context["event"]["event_id"], id.as_str());
    let edit = alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": id}}),
        )
        .await;
    let (status, relations) = alice
        .get(&format!("/rooms/{room}/relations/{path_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{relations}");
    assert_eq!(
        relations["chunk"][0]["event_id"],
        edit.as_str(),
        "{relations}"
    );
    let (status, body) = alice
        .put(&format!("/rooms/{room}/redact/{path_id}/t1"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, event) = alice.get(&format!("/rooms/{room}/event/{path_id}")).await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(
        event["unsigned"]["redacted_because"]["redacts"],
        id.as_str()
    );
    server.stop().await;
}

/// Invites are rate-limited like messages (Synapse's `rc_invites`): per inviting user, and
/// per invited user of ours whoever invites (so that nobody can flood one user with
/// invites from many accounts); beyond the burst, 429 `M_LIMIT_EXCEEDED` with the wait.
#[tokio::test]
async fn invites_are_rate_limited_per_inviter_and_per_invitee() {
    let server = TestServer::start_with(|config| {
        let limits = &mut config.rate_limits;
        limits.enabled = true;
        limits.message_burst = 1_000;
        limits.room_create_burst = 1_000;
        limits.register_burst = 1_000;
        limits.login_burst = 1_000;
        limits.invite_per_minute = 1;
        limits.invite_burst = 3;
        limits.invites_received_per_minute = 1;
        limits.invites_received_burst = 2;
    })
    .await;
    let alice = Client::new(&server, "alice").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let mut invitees = Vec::new();
    for name in ["b1", "b2", "b3", "b4"] {
        invitees.push(Client::new(&server, name).await);
    }
    for (n, invitee) in invitees.iter().enumerate() {
        let (status, body) = alice.invite(&room, &invitee.user_id).await;
        if n < 3 {
            assert_eq!(status, StatusCode::OK, "invite {n}: {body}");
        } else {
            assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
            assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
        }
    }
    // A room made with invitees counts them too: over the limit, no room.
    let (status, body) = alice
        .post(
            "/createRoom",
            json!({"preset": "private_chat", "invite": [invitees[3].user_id]}),
        )
        .await;
    assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
    // Carol is invited by three different users: the third is refused for her sake.
    let carol = Client::new(&server, "carol").await;
    for (n, inviter) in ["i1", "i2", "i3"].iter().enumerate() {
        let inviter = Client::new(&server, inviter).await;
        let room = inviter.create_room(json!({"preset": "private_chat"})).await;
        let (status, body) = inviter.invite(&room, &carol.user_id).await;
        if n < 2 {
            assert_eq!(status, StatusCode::OK, "invite {n}: {body}");
        } else {
            assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
        }
    }
    server.stop().await;
}

//! Rooms over HTTP: creation, membership, state, sending, history, visibility, relations,
//! aliases, directory, upgrades, as a client sees them.

mod common;

use common::{assert_error, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

fn enc(s: &str) -> String {
    s.replace('#', "%23")
}

struct Client<'a> {
    server: &'a TestServer,
    token: String,
    user_id: String,
}

impl<'a> Client<'a> {
    async fn new(server: &'a TestServer, name: &str) -> Self {
        let (user_id, token, _) = server.register(name, "correct horse battery").await;
        Self {
            server,
            token,
            user_id,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.server
            .call(method, &format!("{V3}{path}"), Some(&self.token), body)
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn create_room(&self, body: Value) -> String {
        let (status, body) = self.post("/createRoom", body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    async fn send(&self, room: &str, body: Value) -> String {
        let txn = format!("t{}", rand_suffix());
        let (status, out) = self
            .put(&format!("/rooms/{room}/send/m.room.message/{txn}"), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        out["event_id"].as_str().unwrap().to_owned()
    }

    async fn text(&self, room: &str, text: &str) -> String {
        self.send(room, json!({"msgtype": "m.text", "body": text}))
            .await
    }

    async fn try_send(&self, room: &str, text: &str) -> (StatusCode, Value) {
        let txn = format!("t{}", rand_suffix());
        self.put(
            &format!("/rooms/{room}/send/m.room.message/{txn}"),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await
    }

    async fn join(&self, room: &str) -> (StatusCode, Value) {
        self.post(&format!("/join/{}", enc(room)), json!({})).await
    }

    async fn state(&self, room: &str, kind: &str, key: &str) -> (StatusCode, Value) {
        self.get(&format!("/rooms/{room}/state/{kind}/{key}")).await
    }

    async fn messages(&self, room: &str, query: &str) -> Value {
        let (status, body) = self.get(&format!("/rooms/{room}/messages?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

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
    let (status, body) = alice
        .post("/createRoom", json!({"room_version": "9"}))
        .await;
    assert_error(status, &body, 400, "M_UNSUPPORTED_ROOM_VERSION");
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

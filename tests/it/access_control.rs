//! Access control as a client meets it: guests and the rooms' guest access, what a user
//! who left or was banned can still read, and user-interactive auth bound to its request.

use crate::common;

use common::client::{enc, Client};
use common::{assert_error, urlencode, TestServer};
use ourwhats::core::SigningKeyPair;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const V3: &str = "/_matrix/client/v3";

async fn guest_server() -> TestServer {
    TestServer::start_with(|c| c.registration.allow_guests = true).await
}

/// Registers a guest; answers a client for it.
async fn guest(s: &TestServer) -> Client<'_> {
    let (status, body) = s
        .post(&format!("{V3}/register?kind=guest"), None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Client {
        server: s,
        token: body["access_token"].as_str().unwrap().to_owned(),
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
    }
}

async fn set_guest_access(owner: &Client<'_>, room: &str, value: Value) {
    let (status, body) = owner
        .put(
            &format!("/rooms/{room}/state/m.room.guest_access/"),
            json!({ "guest_access": value }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn membership_of(members: &Value, user: &str) -> Option<(String, String)> {
    members["chunk"].as_array()?.iter().find_map(|e| {
        (e["state_key"] == user).then(|| {
            (
                e["content"]["membership"].as_str().unwrap_or("").to_owned(),
                e["sender"].as_str().unwrap_or("").to_owned(),
            )
        })
    })
}

#[tokio::test]
async fn a_guest_joins_only_rooms_whose_guest_access_is_can_join() {
    let s = guest_server().await;
    let alice = Client::new(&s, "alice").await;
    let g = guest(&s).await;

    // public_chat sets guest access to forbidden: refused by id, by alias and after an
    // invite, and a guest may not knock at all.
    let public = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "lobby"}))
        .await;
    let (status, body) = g.post(&format!("/rooms/{public}/join"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let alias = "#lobby:localhost".to_owned();
    let (status, body) = g.join(&alias).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice.invite(&public, &g.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = g.join(&public).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = g.post(&format!("/knock/{}", enc(&public)), json!({})).await;
    assert_error(status, &body, 403, "M_GUEST_ACCESS_FORBIDDEN");

    // Any value but can_join keeps guests out, and so does none at all.
    set_guest_access(&alice, &public, json!("sometimes")).await;
    let (status, body) = g.join(&public).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice
        .put(
            &format!("/rooms/{public}/state/m.room.guest_access/"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = g.join(&public).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // can_join lets the guest in, to read and to talk.
    set_guest_access(&alice, &public, json!("can_join")).await;
    let (status, body) = g.join(&alias).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    g.text(&public, "hello from a guest").await;
    let page = g.messages(&public, "dir=b&limit=5").await;
    assert_eq!(page["chunk"][0]["content"]["body"], "hello from a guest");
    let (_, member) = g.state(&public, "m.room.member", &g.user_id).await;
    assert_eq!(member["kind"], "guest", "a guest's join is marked as one");

    // A guest never changes its membership through the state endpoint.
    let (status, body) = g
        .put(
            &format!("/rooms/{public}/state/m.room.member/{}", g.user_id),
            json!({"membership": "join", "displayname": "not marked"}),
        )
        .await;
    assert_error(status, &body, 403, "M_GUEST_ACCESS_FORBIDDEN");
    s.stop().await;
}

#[tokio::test]
async fn guests_leave_when_guest_access_ends() {
    let s = guest_server().await;
    let alice = Client::new(&s, "alice").await;
    let g = guest(&s).await;
    let invited = guest(&s).await;
    // private_chat lets guests join.
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let (status, body) = alice.invite(&room, &g.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = g.join(&room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.invite(&room, &invited.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    set_guest_access(&alice, &room, json!("forbidden")).await;
    let (status, members) = alice.get(&format!("/rooms/{room}/members")).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    // As Synapse: each guest leaves by its own leave event. The invited guest was never
    // marked as one (its invite came from alice), so it stays invited.
    assert_eq!(
        membership_of(&members, &g.user_id),
        Some(("leave".to_owned(), g.user_id.clone()))
    );
    assert_eq!(
        membership_of(&members, &invited.user_id).map(|m| m.0),
        Some("invite".to_owned())
    );
    assert_eq!(
        membership_of(&members, &alice.user_id).map(|m| m.0),
        Some("join".to_owned())
    );
    let (status, body) = g.try_send(&room, "still here?").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = g.join(&room).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // Redacting the guest access event ends it too (its content goes).
    let other = alice.create_room(json!({"preset": "private_chat"})).await;
    let (status, body) = alice.invite(&other, &g.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = g.join(&other).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, access) = alice
        .get(&format!(
            "/rooms/{other}/state/m.room.guest_access/?format=event"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{access}");
    let access_id = access["event_id"].as_str().unwrap().to_owned();
    let (status, body) = alice.redact(&other, &access_id, "end-guests").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, members) = alice.get(&format!("/rooms/{other}/members")).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert_eq!(
        membership_of(&members, &g.user_id).map(|m| m.0),
        Some("leave".to_owned())
    );
    s.stop().await;
}

#[tokio::test]
async fn guests_use_only_the_endpoints_the_spec_opens_to_them() {
    let s = guest_server().await;
    let g = guest(&s).await;
    let closed: [(Method, String, Option<Value>); 8] = [
        (Method::POST, "/createRoom".into(), Some(json!({}))),
        (
            Method::PUT,
            format!("/user/{}/account_data/m.x", g.user_id),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/user/{}/filter", g.user_id),
            Some(json!({})),
        ),
        (Method::GET, "/pushrules/".into(), None),
        (
            Method::POST,
            "/search".into(),
            Some(json!({"search_categories": {"room_events": {"search_term": "x"}}})),
        ),
        (
            Method::PUT,
            format!("/profile/{}/avatar_url", g.user_id),
            Some(json!({"avatar_url": "mxc://x/y"})),
        ),
        (
            Method::POST,
            "/account/password".into(),
            Some(json!({"new_password": "x"})),
        ),
        (
            Method::POST,
            "/user_directory/search".into(),
            Some(json!({"search_term": "a"})),
        ),
    ];
    for (method, path, body) in closed {
        let (status, answer) = g.call(method.clone(), &path, body).await;
        assert_error(status, &answer, 403, "M_GUEST_ACCESS_FORBIDDEN");
    }
    let open: [(Method, String, Option<Value>); 6] = [
        (Method::GET, "/account/whoami".into(), None),
        (Method::GET, "/sync?timeout=0".into(), None),
        (Method::GET, "/devices".into(), None),
        (Method::GET, "/joined_rooms".into(), None),
        (
            Method::PUT,
            format!("/profile/{}/displayname", g.user_id),
            Some(json!({"displayname": "Guesty"})),
        ),
        (
            Method::POST,
            "/keys/query".into(),
            Some(json!({"device_keys": {}})),
        ),
    ];
    for (method, path, body) in open {
        let (status, answer) = g.call(method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
    }

    // What a guest may read of rooms it is not in: only world-readable history.
    let alice = Client::new(&s, "alice").await;
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.text(&private, "members only").await;
    for path in [
        format!("/rooms/{private}/messages?dir=b"),
        format!("/rooms/{private}/state"),
        format!("/rooms/{private}/members"),
    ] {
        let (status, body) = g.get(&path).await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    let open_room = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "world_readable"}}]}))
        .await;
    alice.text(&open_room, "anyone may read this").await;
    let page = g.messages(&open_room, "dir=b&limit=1").await;
    assert_eq!(page["chunk"][0]["content"]["body"], "anyone may read this");
    s.stop().await;
}

#[tokio::test]
async fn a_guest_upgrades_to_a_full_account_with_its_token() {
    let s = guest_server().await;
    let alice = Client::new(&s, "alice").await;
    let g = guest(&s).await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.invite(&room, &g.user_id).await;
    assert_eq!(g.join(&room).await.0, StatusCode::OK);
    let localpart = g.user_id[1..].split(':').next().unwrap().to_owned();

    // Not a guest's token, or another name: refused.
    let (status, body) = s
        .post(
            &format!("{V3}/register"),
            None,
            json!({"username": localpart, "password": "pw", "guest_access_token": alice.token,
                   "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = s
        .post(
            &format!("{V3}/register"),
            None,
            json!({"username": "someoneelse", "password": "pw", "guest_access_token": g.token,
                   "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // The ordinary flow with the guest's token and its own name keeps the account.
    let request =
        json!({"username": localpart, "password": "new pw", "guest_access_token": g.token});
    let (status, challenge) = s
        .post(&format!("{V3}/register"), None, request.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let mut request = request;
    request["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let (status, done) = s.post(&format!("{V3}/register"), None, request).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["user_id"], g.user_id);
    let full = Client {
        server: &s,
        token: done["access_token"].as_str().unwrap().to_owned(),
        user_id: g.user_id.clone(),
        device_id: done["device_id"].as_str().unwrap().to_owned(),
    };
    let (_, me) = full.get("/account/whoami").await;
    assert_eq!(me["is_guest"], false);
    full.create_room(json!({})).await;
    // The old guest token is no longer a guest's either, and the rooms stayed.
    let (_, me) = g.get("/account/whoami").await;
    assert_eq!(me["is_guest"], false);
    let (_, rooms) = full.get("/joined_rooms").await;
    assert!(
        rooms["joined_rooms"]
            .as_array()
            .unwrap()
            .contains(&json!(room)),
        "{rooms}"
    );
    let (status, body) = s.login(&g.user_id, "new pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.stop().await;
}

/// alice's private room (history `shared`) that `reader` joined, read `hello`, then left
/// or was banned; after that alice edits it, replies in its thread, references it and
/// sends a later message. Answers `(room, hello's event id, the later message's id)`.
async fn history_after_the_reader_is_gone(
    alice: &Client<'_>,
    reader: &Client<'_>,
    banned: bool,
) -> (String, String, String) {
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.invite(&room, &reader.user_id).await;
    assert_eq!(reader.join(&room).await.0, StatusCode::OK);
    let hello = alice.text(&room, "hello everyone").await;
    if banned {
        let (status, body) = alice
            .post(
                &format!("/rooms/{room}/ban"),
                json!({"user_id": reader.user_id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    } else {
        let (status, body) = reader
            .post(&format!("/rooms/{room}/leave"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "* hello everyone, secretly edited",
                   "m.new_content": {"msgtype": "m.text", "body": "hello everyone, secretly edited"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": hello}}),
        )
        .await;
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "secret thread reply about hello",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": hello}}),
        )
        .await;
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "secret reference to hello",
                   "m.relates_to": {"rel_type": "m.reference", "event_id": hello}}),
        )
        .await;
    let later = alice
        .text(&room, "hello again, a secret later message")
        .await;
    (room, hello, later)
}

/// Everything that is not the reader's to see: no bundle on `hello`.
fn assert_no_bundle(event: &Value) {
    assert!(
        event["unsigned"].get("m.relations").is_none(),
        "a bundle leaked: {event}"
    );
    let text = event.to_string();
    assert!(!text.contains("secret"), "leaked: {text}");
}

fn events_with_id<'v>(events: &'v Value, id: &str) -> Vec<&'v Value> {
    events
        .as_array()
        .map(|a| a.iter().filter(|e| e["event_id"] == id).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_user_who_left_or_was_banned_reads_nothing_sent_after() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    for (name, banned) in [("bob", false), ("carol", true)] {
        let reader = Client::new(&s, name).await;
        let (room, hello, later) = history_after_the_reader_is_gone(&alice, &reader, banned).await;

        // alice, still joined, sees every aggregation (the control).
        let (_, seen) = alice.get(&format!("/rooms/{room}/event/{hello}")).await;
        let relations = &seen["unsigned"]["m.relations"];
        assert!(relations["m.replace"].is_object(), "{seen}");
        assert_eq!(relations["m.thread"]["count"], 1, "{seen}");
        assert!(relations["m.reference"].is_object(), "{seen}");

        // /event: hello without its later bundle; the later message is not found.
        let (status, event) = reader.get(&format!("/rooms/{room}/event/{hello}")).await;
        assert_eq!(status, StatusCode::OK, "{event}");
        assert_no_bundle(&event);
        let (status, body) = reader.get(&format!("/rooms/{room}/event/{later}")).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");

        // /messages, both directions.
        for dir in ["b", "f"] {
            let page = reader.messages(&room, &format!("dir={dir}&limit=50")).await;
            let found = events_with_id(&page["chunk"], &hello);
            assert_eq!(found.len(), 1, "{page}");
            assert_no_bundle(found[0]);
            assert!(!page.to_string().contains("secret"), "{page}");
        }

        // /context.
        let (status, context) = reader
            .get(&format!("/rooms/{room}/context/{hello}?limit=20"))
            .await;
        assert_eq!(status, StatusCode::OK, "{context}");
        assert_no_bundle(&context["event"]);
        assert!(!context.to_string().contains("secret"), "{context}");

        // /threads: the thread started after the reader was gone.
        let (status, threads) = s
            .get(
                &format!("/_matrix/client/v1/rooms/{room}/threads"),
                Some(&reader.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{threads}");
        assert_eq!(threads["chunk"], json!([]), "{threads}");

        // /relations of hello: none of its children are the reader's to see.
        let (status, relations) = s
            .get(
                &format!("/_matrix/client/v1/rooms/{room}/relations/{hello}"),
                Some(&reader.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{relations}");
        assert_eq!(relations["chunk"], json!([]), "{relations}");

        // /search: only hello matches "hello" for the reader, and the count says so; its
        // context stops at what the reader could see.
        let (status, found) = reader
            .post(
                "/search",
                json!({"search_categories": {"room_events": {"search_term": "hello",
                       "event_context": {"before_limit": 5, "after_limit": 20}}}}),
            )
            .await;
        assert!(!found.to_string().contains("secret"), "{found}");
        assert_eq!(status, StatusCode::OK, "{found}");
        let results = &found["search_categories"]["room_events"];
        assert_eq!(results["count"], 1, "{found}");
        let list = results["results"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{found}");
        assert_eq!(list[0]["result"]["event_id"], hello.as_str());
        assert_no_bundle(&list[0]["result"]);
        let (_, secret) = reader
            .post(
                "/search",
                json!({"search_categories": {"room_events": {"search_term": "secret",
                       "event_context": {"before_limit": 5, "after_limit": 5}}}}),
            )
            .await;
        let results = &secret["search_categories"]["room_events"];
        assert_eq!(results["count"], 0, "{secret}");
        assert_eq!(results["results"], json!([]), "{secret}");

        // /sync, with the left room included.
        let filter = json!({"room": {"include_leave": true}}).to_string();
        let sync = reader.sync(&format!("filter={}", urlencode(&filter))).await;
        let left = &sync["rooms"]["leave"][&room];
        let found = events_with_id(&left["timeline"]["events"], &hello);
        assert_eq!(found.len(), 1, "{left}");
        assert_no_bundle(found[0]);
        assert!(!left.to_string().contains("secret"), "{left}");

        // /notifications: hello notified the reader (a room of two); no bundle on it.
        let (status, notifications) = reader.get("/notifications").await;
        assert_eq!(status, StatusCode::OK, "{notifications}");
        let list = notifications["notifications"].as_array().unwrap();
        let of_hello: Vec<&Value> = list
            .iter()
            .filter(|n| n["event"]["event_id"] == hello.as_str())
            .collect();
        assert_eq!(of_hello.len(), 1, "{notifications}");
        assert_no_bundle(&of_hello[0]["event"]);
        assert!(
            !notifications.to_string().contains("secret"),
            "{notifications}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_redaction_after_the_reader_left_is_not_shown_to_them() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;
    let hello = alice.text(&room, "hello").await;
    bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/redact/{hello}/r1"),
            json!({"reason": "secret reason"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Redacted for everyone; who redacted it and why is for those who may see it.
    let (_, seen) = alice.get(&format!("/rooms/{room}/event/{hello}")).await;
    assert_eq!(seen["content"], json!({}));
    assert_eq!(
        seen["unsigned"]["redacted_because"]["content"]["reason"],
        "secret reason"
    );
    let (status, event) = bob.get(&format!("/rooms/{room}/event/{hello}")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"], json!({}));
    assert!(!event.to_string().contains("secret"), "{event}");
    s.stop().await;
}

#[tokio::test]
async fn a_rejoined_reader_sees_the_bundles_again() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let (room, hello, _) = history_after_the_reader_is_gone(&alice, &bob, false).await;
    alice.invite(&room, &bob.user_id).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    // History is `shared`: having joined again, bob may read everything before.
    let (_, event) = bob.get(&format!("/rooms/{room}/event/{hello}")).await;
    let relations = &event["unsigned"]["m.relations"];
    assert_eq!(relations["m.thread"]["count"], 1, "{event}");
    assert!(relations["m.replace"].is_object(), "{event}");
    s.stop().await;
}

/// Opens a delete session for `device` and answers its id.
async fn delete_session(user: &Client<'_>, device: &str) -> String {
    let (status, challenge) = user
        .call(
            Method::DELETE,
            &format!("/devices/{device}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    challenge["session"].as_str().unwrap().to_owned()
}

fn password_auth(session: &str, user: &str, password: &str) -> Value {
    json!({"type": "m.login.password", "session": session,
           "identifier": {"type": "m.id.user", "user": user}, "password": password})
}

#[tokio::test]
async fn a_uia_session_serves_only_the_request_that_opened_it() {
    let s = TestServer::start().await;
    let dan = Client::new(&s, "dan").await;
    let d1 = dan.another_device().await;
    let d2 = dan.another_device().await;
    let pw = "correct horse battery";

    // A session opened by deleting d1, completed against d2: refused, d2 stays.
    let session = delete_session(&dan, &d1.device_id).await;
    let (status, body) = dan
        .call(
            Method::DELETE,
            &format!("/devices/{}", d2.device_id),
            Some(json!({"auth": password_auth(&session, &dan.user_id, pw)})),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = dan
        .post(
            "/delete_devices",
            json!({"devices": [d1.device_id, d2.device_id],
                   "auth": password_auth(&session, &dan.user_id, pw)}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Nor the other endpoint deleting the same device.
    let (status, body) = dan
        .post(
            "/delete_devices",
            json!({"devices": [d1.device_id],
                   "auth": password_auth(&session, &dan.user_id, pw)}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Nor another operation. (A first cross-signing upload needs no auth; replacing the
    // keys does.)
    let master = |seed: u8| {
        let public = SigningKeyPair::from_seed(&[seed; 32], "x").public_key_base64();
        json!({"master_key": {"user_id": dan.user_id, "usage": ["master"],
               "keys": {format!("ed25519:{public}"): public}}})
    };
    let (status, body) = dan.post("/keys/device_signing/upload", master(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let other_operations = [
        ("/account/password", json!({"new_password": "stolen"})),
        ("/account/deactivate", json!({})),
        ("/keys/device_signing/upload", master(2)),
    ];
    for (path, mut body) in other_operations {
        body["auth"] = password_auth(&session, &dan.user_id, pw);
        let (status, answer) = dan.post(path, body).await;
        assert_error(status, &answer, 403, "M_FORBIDDEN");
    }
    // Sessions opened by the other operations do not delete a device either.
    let openers = [
        ("/account/password", json!({"new_password": "another one"})),
        ("/account/deactivate", json!({})),
        ("/keys/device_signing/upload", master(3)),
    ];
    for (path, body) in openers {
        let (status, challenge) = dan.post(path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {challenge}");
        let other = challenge["session"].as_str().unwrap().to_owned();
        let (status, answer) = dan
            .call(
                Method::DELETE,
                &format!("/devices/{}", d2.device_id),
                Some(json!({"auth": password_auth(&other, &dan.user_id, pw)})),
            )
            .await;
        assert_error(status, &answer, 403, "M_FORBIDDEN");
    }
    let (_, devices) = dan.get("/devices").await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 3, "{devices}");
    assert_eq!(d2.get("/account/whoami").await.0, StatusCode::OK);
    assert_eq!(s.login(&dan.user_id, pw).await.0, StatusCode::OK);

    // The session still does what it was opened for.
    let (status, body) = dan
        .call(
            Method::DELETE,
            &format!("/devices/{}", d1.device_id),
            Some(json!({"auth": password_auth(&session, &dan.user_id, pw)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(d1.get("/account/whoami").await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// A session whose stages passed for one body, its operation then failing (an empty new
/// password), does not complete the same operation with another body: the client
/// completes the stages "by resubmitting the same request".
#[tokio::test]
async fn a_uia_session_whose_operation_failed_serves_no_other_body() {
    let s = TestServer::start().await;
    let dan = Client::new(&s, "dan").await;
    let pw = "correct horse battery";
    let (status, challenge) = dan
        .post("/account/password", json!({"new_password": ""}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session = challenge["session"].as_str().unwrap().to_owned();
    let (status, body) = dan
        .post(
            "/account/password",
            json!({"new_password": "", "auth": password_auth(&session, &dan.user_id, pw)}),
        )
        .await;
    assert_error(status, &body, 400, "M_WEAK_PASSWORD");
    // The passed session with another new password, no password given: refused.
    let (status, body) = dan
        .post(
            "/account/password",
            json!({"new_password": "chosen by someone else", "auth": {"session": session}}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert_eq!(s.login(&dan.user_id, pw).await.0, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn password_auth_naming_another_user_is_forbidden() {
    let s = TestServer::start().await;
    let eve = Client::new(&s, "eve").await;
    let frank = Client::new(&s, "frank").await;
    let session = delete_session(&eve, &eve.device_id).await;
    // frank's own, correct password does not authorise eve's request.
    let (status, body) = eve
        .call(
            Method::DELETE,
            &format!("/devices/{}", eve.device_id),
            Some(json!({"auth": password_auth(&session, &frank.user_id, "correct horse battery")})),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    assert!(body.get("flows").is_none(), "not a challenge: {body}");
    // A wrong password of eve's is a failed stage: the 401 challenge again.
    let (status, body) = eve
        .call(
            Method::DELETE,
            &format!("/devices/{}", eve.device_id),
            Some(json!({"auth": password_auth(&session, &eve.user_id, "wrong")})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(eve.get("/account/whoami").await.0, StatusCode::OK);
    s.stop().await;
}

/// The shortcut for rooms whose history was always readable by later members must not
/// cover a room that was ever `joined`-only: what was sent then stays hidden from users
/// who joined afterwards, also after the room turns `shared`.
#[tokio::test]
async fn history_sent_while_joined_only_stays_hidden_after_the_room_turns_shared() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "joined"}}]}))
        .await;
    alice.text(&room, "members only, back then").await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/state/m.room.history_visibility/"),
            json!({"history_visibility": "shared"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    alice.text(&room, "shared from now on").await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let page = bob.messages(&room, "dir=b&limit=50").await;
    let text = page.to_string();
    assert!(text.contains("shared from now on"), "{page}");
    assert!(!text.contains("members only"), "{page}");
    let sync = bob.sync("timeout=0").await;
    let text = sync["rooms"]["join"][&room].to_string();
    assert!(!text.contains("members only"), "{text}");
    s.stop().await;
}

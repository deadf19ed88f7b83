//! Smaller points of the spec a conformance suite checks: typing without a timeout, what
//! `/event` says of rooms one may not read, errors the HTTP layer makes itself, third-party
//! invites, and the page a browser gets at the server's root.

use crate::common;

use common::client::Client;
use common::{assert_error, urlencode, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn typing_needs_only_typing() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let room = alice.create_room(json!({})).await;
    let path = format!("/rooms/{room}/typing/{}", alice.user_id);
    let (status, body) = alice.put(&path, json!({"typing": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = alice.sync("timeout=0").await;
    let ephemeral = &sync["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(
        ephemeral.to_string().contains(&alice.user_id),
        "{ephemeral}"
    );
    let (status, body) = alice.put(&path, json!({"typing": false})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.put(&path, json!({"timeout": 1000})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    s.stop().await;
}

#[tokio::test]
async fn an_event_of_a_room_one_may_not_read_is_not_found() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let eve = Client::new(&s, "eve").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let secret = alice.text(&room, "secret").await;
    // Not allowed and unknown answer alike.
    let (status, body) = eve.get(&format!("/rooms/{room}/event/{secret}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = eve.get(&format!("/rooms/{room}/event/$nope")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice.get(&format!("/rooms/{room}/event/$nope")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    // The deprecated `GET /events/{eventId}` answers the same without the room id.
    let (status, body) = alice.get(&format!("/events/{secret}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"]["body"], "secret");
    assert_eq!(body["room_id"], room.as_str());
    let (status, body) = eve.get(&format!("/events/{secret}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice.get("/events/$nope").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn errors_of_the_http_layer_are_matrix_errors() {
    let s = TestServer::start().await;
    // 414: a path and query over the limit.
    let long = format!("/_matrix/client/versions?x={}", "a".repeat(20_000));
    let (status, body) = s.get(&long, None).await;
    assert_error(status, &body, 414, "M_UNKNOWN");
    // 405: a known path, another method.
    let (status, body) = s
        .call(Method::DELETE, "/_matrix/client/versions", None, None)
        .await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
    // 404: an unknown path.
    let (status, body) = s.get("/_matrix/client/v3/nowhere", None).await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    // 413: a declared body over the limit.
    let answer = s
        .http
        .post(format!("{}/_matrix/client/v3/login", s.base))
        .header("Content-Type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    // 400: a path parameter that is not valid percent-encoded UTF-8.
    let (status, body) = s.get("/_matrix/client/v3/profile/%FF%FE", None).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    s.stop().await;
}

#[tokio::test]
async fn third_party_invites_are_refused_clearly() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let room = alice.create_room(json!({})).await;
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/invite"),
            json!({"id_server": "id.example.org", "id_access_token": "t",
                   "medium": "email", "address": "bob@example.org"}),
        )
        .await;
    assert_error(status, &body, 400, "M_UNRECOGNIZED");
    assert!(
        body["error"].as_str().unwrap().contains("Third-party"),
        "{body}"
    );
    let (status, body) = alice
        .post(&format!("/rooms/{room}/invite"), json!({}))
        .await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    s.stop().await;
}

#[tokio::test]
async fn a_browser_at_the_root_gets_a_page_about_the_server() {
    let s = TestServer::start().await;
    let answer = s.http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = answer.text().await.unwrap();
    assert!(page.contains("Matrix homeserver"), "{page}");
    assert!(page.contains("localhost"), "{page}");
    assert!(page.contains("http://localhost:8008"), "{page}");
    s.stop().await;
}

#[tokio::test]
async fn an_erased_users_messages_are_redacted_for_those_who_join_afterwards() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "shared"}}]}))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let words = alice.text(&room, "my own words").await;
    // Her edit and her thread reply come bundled with older events.
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "* my edited words",
                   "m.new_content": {"msgtype": "m.text", "body": "my edited words"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": words}}),
        )
        .await;
    let root = bob.text(&room, "a thread root by bob").await;
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "my reply words",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    // dave joins after her words, before the erasure: under `shared` he could read them.
    let dave = Client::new(&s, "dave").await;
    assert_eq!(dave.join(&room).await.0, StatusCode::OK);
    let (status, body) = alice.deactivate(true).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // bob was there before the erasure: he still sees the words. So does dave.
    let (_, seen) = bob.get(&format!("/rooms/{room}/event/{words}")).await;
    assert_eq!(seen["content"]["body"], "my own words");
    let (_, seen) = dave.get(&format!("/rooms/{room}/event/{words}")).await;
    assert_eq!(seen["content"]["body"], "my own words");
    // Neither a display name change (a new join event) nor leaving and coming back
    // takes that away.
    let (status, _) = bob
        .put(
            &format!("/profile/{}/displayname", bob.user_id),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, seen) = bob.get(&format!("/rooms/{room}/event/{words}")).await;
    assert_eq!(seen["content"]["body"], "my own words", "{seen}");
    let (status, _) = dave.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dave.join(&room).await.0, StatusCode::OK);
    let (_, seen) = dave.get(&format!("/rooms/{room}/event/{words}")).await;
    assert_eq!(seen["content"]["body"], "my own words", "{seen}");
    // carol joins afterwards: the message is there, its content redacted.
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);
    let (_, seen) = carol.get(&format!("/rooms/{room}/event/{words}")).await;
    assert_eq!(seen["event_id"], words.as_str());
    assert_eq!(seen["content"], json!({}), "{seen}");
    let page = carol.messages(&room, "dir=b&limit=50").await;
    assert!(!page.to_string().contains("my own words"), "{page}");
    let sync = carol.sync("timeout=0").await;
    let section = sync["rooms"]["join"][&room].to_string();
    for text in ["my own words", "my edited words", "my reply words"] {
        assert!(!section.contains(text), "{text} in {sync}");
        assert!(!page.to_string().contains(text), "{text} in {page}");
    }
    // The thread root is bob's: carol sees it, with the erased reply bundled redacted.
    let (_, seen) = carol.get(&format!("/rooms/{room}/event/{root}")).await;
    assert_eq!(seen["content"]["body"], "a thread root by bob");
    let latest = &seen["unsigned"]["m.relations"]["m.thread"]["latest_event"];
    assert_eq!(latest["sender"], alice.user_id.as_str(), "{seen}");
    assert_eq!(latest["content"], json!({}), "{seen}");
    // Search finds nothing of hers for carol, and counts nothing; bob still finds it.
    let search =
        |words: &str| json!({"search_categories": {"room_events": {"search_term": words}}});
    let (status, found) = carol.post("/search", search("words")).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let events = &found["search_categories"]["room_events"];
    assert_eq!(events["count"], 0, "{found}");
    assert_eq!(events["results"], json!([]), "{found}");
    let (_, found) = bob.post("/search", search("words")).await;
    assert!(
        found["search_categories"]["room_events"]["count"].as_u64() >= Some(2),
        "{found}"
    );
    // Across a restart too.
    let carol_token = carol.token.clone();
    let mut s = s;
    s.restart().await;
    let (_, seen) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{words}"),
            Some(&carol_token),
        )
        .await;
    assert_eq!(seen["content"], json!({}), "{seen}");
    s.stop().await;
}

#[tokio::test]
async fn room_initial_sync_is_a_snapshot_for_members_and_peekers() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let eve = Client::new(&s, "eve").await;
    let readable = alice
        .create_room(json!({"preset": "public_chat", "name": "open",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "world_readable"}}]}))
        .await;
    for n in 0..25 {
        alice.text(&readable, &format!("message {n}")).await;
    }
    let (status, _) = alice
        .put(
            &format!(
                "/user/{}/rooms/{readable}/account_data/m.tag.note",
                alice.user_id
            ),
            json!({"note": "mine"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A member: membership, the latest messages oldest first, state, account data.
    let (status, body) = alice.get(&format!("/rooms/{readable}/initialSync")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], readable.as_str());
    assert_eq!(body["membership"], "join");
    assert_eq!(body["visibility"], "private");
    let chunk = body["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 20);
    assert_eq!(chunk.last().unwrap()["content"]["body"], "message 24");
    assert_eq!(chunk[0]["content"]["body"], "message 5");
    assert!(body["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "open"));
    assert_eq!(body["account_data"][0]["type"], "m.tag.note");
    // `start` pages back through /messages to the earlier ones.
    let start = body["messages"]["start"].as_str().unwrap();
    let (status, earlier) = alice
        .get(&format!(
            "/rooms/{readable}/messages?dir=b&from={start}&limit=5"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{earlier}");
    assert_eq!(earlier["chunk"][0]["content"]["body"], "message 4");

    // A peeker into world-readable history: no membership, the same messages.
    let (status, body) = bob.get(&format!("/rooms/{readable}/initialSync")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("membership").is_none(), "{body}");
    assert_eq!(body["messages"]["chunk"].as_array().unwrap().len(), 20);
    assert_eq!(body["account_data"], json!([]));

    // A private room: not for outsiders.
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    let (status, body) = eve.get(&format!("/rooms/{private}/initialSync")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Unknown and malformed room ids answer as any room one is not in (as /messages).
    let (status, body) = eve.get("/rooms/!unknown:localhost/initialSync").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = eve.get("/rooms/not-a-room/initialSync").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // `joined` history: a member who came late sees nothing from before their join, in
    // both initial syncs; one who left sees nothing from after.
    let joined_only = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": "joined"}}]}))
        .await;
    alice.text(&joined_only, "before eve came").await;
    assert_eq!(eve.join(&joined_only).await.0, StatusCode::OK);
    alice.text(&joined_only, "while eve is here").await;
    let (status, left) = eve
        .post(&format!("/rooms/{joined_only}/leave"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{left}");
    alice.text(&joined_only, "after eve left").await;
    let (status, body) = eve.get(&format!("/rooms/{joined_only}/initialSync")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.to_string();
    assert!(text.contains("while eve is here"), "{body}");
    assert!(!text.contains("before eve came"), "{body}");
    assert!(!text.contains("after eve left"), "{body}");
    let (status, all) = eve.get("/initialSync?archived=true").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let text = all.to_string();
    assert!(!text.contains("before eve came"), "{all}");
    assert!(!text.contains("after eve left"), "{all}");
    // An invite eve rejected, to a room she never joined: still 200, the room not listed.
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    assert_eq!(alice.invite(&private, &eve.user_id).await.0, StatusCode::OK);
    let (status, body) = eve
        .post(&format!("/rooms/{private}/leave"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, all) = eve.get("/initialSync?archived=true").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(
        !all["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == private.as_str()),
        "{all}"
    );
    s.stop().await;
}

#[tokio::test]
async fn initial_sync_lists_every_room_with_its_messages_invites_and_presence() {
    let s = TestServer::start().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let joined = bob.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(alice.join(&joined).await.0, StatusCode::OK);
    for n in 0..5 {
        bob.text(&joined, &format!("message {n}")).await;
    }
    let invited = bob
        .create_room(json!({"invite": [alice.user_id.clone()]}))
        .await;
    let left = bob.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(alice.join(&left).await.0, StatusCode::OK);
    let (status, _) = alice.post(&format!("/rooms/{left}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Bob is online (he syncs); so is alice.
    bob.sync("timeout=0").await;

    let (status, body) = alice.get("/initialSync?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["end"].is_string());
    let rooms = body["rooms"].as_array().unwrap();
    let room = |id: &str| rooms.iter().find(|r| r["room_id"] == id).cloned();
    let joined_room = room(&joined).expect("the joined room");
    assert_eq!(joined_room["membership"], "join");
    let chunk = joined_room["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2);
    assert_eq!(chunk[1]["content"]["body"], "message 4");
    assert!(joined_room["state"].as_array().unwrap().len() > 3);
    let invite = room(&invited).expect("the invite");
    assert_eq!(invite["membership"], "invite");
    assert_eq!(invite["invite"]["content"]["membership"], "invite");
    assert!(room(&left).is_none(), "left rooms only with archived=true");
    let senders: Vec<&str> = body["presence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["sender"].as_str())
        .collect();
    assert!(senders.contains(&bob.user_id.as_str()), "{body}");
    // "at most `limit` elements": none for 0, with tokens to page back from.
    let (status, body) = alice.get("/initialSync?limit=0").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rooms = body["rooms"].as_array().unwrap();
    let joined_room = rooms
        .iter()
        .find(|r| r["room_id"] == joined.as_str())
        .unwrap();
    assert_eq!(joined_room["messages"]["chunk"], json!([]), "{body}");
    let from = joined_room["messages"]["start"].as_str().unwrap();
    let page = alice
        .messages(&joined, &format!("dir=b&limit=1&from={}", urlencode(from)))
        .await;
    assert_eq!(page["chunk"][0]["content"]["body"], "message 4", "{page}");

    let (status, body) = alice.get("/initialSync?archived=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let left_room = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == left.as_str())
        .cloned()
        .expect("the left room with archived=true");
    assert_eq!(left_room["membership"], "leave");
    let (status, body) = alice.get("/initialSync?archived=maybe").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice.get("/initialSync?limit=many").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    s.stop().await;
}

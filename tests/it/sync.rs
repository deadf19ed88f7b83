//! Live chat over HTTP: `/sync` (initial, incremental, long-poll, filters, lazy loading),
//! account data and tags, typing, receipts and read markers, as clients see them.

use crate::common;

use std::time::{Duration, Instant};

use common::client::Client;
use common::{assert_error, urlencode, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn timeline_bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ephemeral_of<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

#[tokio::test]
async fn a_group_and_a_dm_appear_in_the_room_list_with_their_last_message() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let group = alice
        .create_room(json!({"preset": "public_chat", "name": "Team"}))
        .await;
    let dm = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob.user_id]}),
        )
        .await;

    // Bob sees the DM invitation with stripped state, and nothing of the group yet.
    let first = bob.sync("").await;
    let invite = &first["rooms"]["invite"][&dm]["invite_state"]["events"];
    let events = invite.as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "m.room.create"));
    let own = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .expect("the invite itself");
    assert_eq!(own["content"]["membership"], "invite");
    assert_eq!(own["content"]["is_direct"], true);
    assert!(first["rooms"]["join"].get(&group).is_none());

    // Bob joins both and marks the DM in m.direct.
    assert_eq!(bob.join(&dm).await.0, StatusCode::OK);
    assert_eq!(bob.join(&group).await.0, StatusCode::OK);
    let (status, _) = bob
        .put(
            &format!("/user/{}/account_data/m.direct", bob.user_id),
            json!({ alice.user_id.clone(): [dm] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    alice.text(&group, "hello team").await;
    alice.text(&dm, "psst bob").await;
    alice.text(&dm, "lunch?").await;

    let initial = bob.sync("").await;
    assert!(initial["next_batch"].is_string());
    assert_eq!(
        timeline_bodies(&initial, &group).last().unwrap(),
        "hello team"
    );
    assert_eq!(timeline_bodies(&initial, &dm).last().unwrap(), "lunch?");
    let dm_summary = &initial["rooms"]["join"][&dm]["summary"];
    assert_eq!(dm_summary["m.joined_member_count"], 2);
    assert_eq!(dm_summary["m.heroes"], json!([alice.user_id]));
    let group_summary = &initial["rooms"]["join"][&group]["summary"];
    assert_eq!(group_summary["m.joined_member_count"], 2);
    assert!(
        group_summary.get("m.heroes").is_none(),
        "named rooms need no heroes"
    );
    // Full state: the room's name is in the state (or the timeline).
    let state = &initial["rooms"]["join"][&group]["state"]["events"];
    let timeline = &initial["rooms"]["join"][&group]["timeline"]["events"];
    let has_name = state
        .as_array()
        .unwrap()
        .iter()
        .chain(timeline.as_array().unwrap())
        .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Team");
    assert!(has_name);
    let direct = initial["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.direct")
        .expect("m.direct in account data");
    assert_eq!(direct["content"][&alice.user_id], json!([dm]));

    // Incremental: only the room with news, only the news.
    alice.text(&group, "second").await;
    let next = bob.sync_since(&initial["next_batch"]).await;
    assert_eq!(timeline_bodies(&next, &group), vec!["second"]);
    assert_eq!(next["rooms"]["join"][&group]["timeline"]["limited"], false);
    assert!(next["rooms"]["join"].get(&dm).is_none());
    assert!(next.get("account_data").is_none());

    // Nothing new: an empty answer with a usable token.
    let empty = bob.sync_since(&next["next_batch"]).await;
    assert!(empty.get("rooms").is_none(), "{empty}");

    // Bob leaves the group: it moves to `leave` once, then disappears.
    assert_eq!(
        bob.post(&format!("/rooms/{group}/leave"), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let left = bob.sync_since(&empty["next_batch"]).await;
    let leave_events = left["rooms"]["leave"][&group]["timeline"]["events"]
        .as_array()
        .unwrap();
    assert_eq!(
        leave_events.last().unwrap()["content"]["membership"],
        "leave"
    );
    alice.text(&group, "after bob left").await;
    let after = bob.sync_since(&left["next_batch"]).await;
    assert!(after.get("rooms").is_none(), "{after}");
    // Left rooms come back with include_leave.
    let with_leave = bob
        .sync(&format!(
            "filter={}",
            urlencode(&json!({"room": {"include_leave": true}}).to_string())
        ))
        .await;
    assert!(with_leave["rooms"]["leave"].get(&group).is_some());
    assert!(bob.sync("").await["rooms"]["leave"].get(&group).is_none());
    // A left room's account data goes through the filter as a joined room's does.
    let (status, body) = bob
        .put(
            &format!("/user/{}/rooms/{group}/tags/u.work", bob.user_id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let types_in = |answer: &Value| -> Vec<String> {
        answer["rooms"]["leave"][&group]["account_data"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["type"].as_str().map(str::to_owned))
            .collect()
    };
    let all = bob
        .sync(&format!(
            "filter={}",
            urlencode(&json!({"room": {"include_leave": true}}).to_string())
        ))
        .await;
    assert!(types_in(&all).contains(&"m.tag".to_owned()), "{all}");
    let filtered = bob
        .sync(&format!(
            "filter={}",
            urlencode(
                &json!({"room": {"include_leave": true,
                                 "account_data": {"not_types": ["m.tag"]}}})
                .to_string()
            )
        ))
        .await;
    assert!(
        !types_in(&filtered).contains(&"m.tag".to_owned()),
        "{filtered}"
    );
}

/// Starts a long-poll from `since` and answers (elapsed, response).
async fn long_poll(client: &Client<'_>, since: &Value) -> (Duration, Value) {
    let started = Instant::now();
    let body = client
        .sync(&format!("since={}&timeout=10000", since.as_str().unwrap()))
        .await;
    (started.elapsed(), body)
}

#[tokio::test]
async fn long_poll_wakes_on_a_message_a_receipt_typing_and_an_invite() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    // Alice is online already: her message below changes nothing of her presence.
    alice
        .put(
            &format!("/presence/{}/status", alice.user_id),
            json!({"presence": "online"}),
        )
        .await;
    let mut since = bob.sync("").await["next_batch"].clone();

    // A message.
    let (took, body) = tokio::join!(long_poll(&bob, &since), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice.text(&room, "wake up").await
    })
    .0;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(timeline_bodies(&body, &room), vec!["wake up"]);
    let event_id = body["rooms"]["join"][&room]["timeline"]["events"][0]["event_id"].clone();
    since = body["next_batch"].clone();

    // A receipt.
    let ((_, body), _) = tokio::join!(long_poll(&bob, &since), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, out) = alice
            .post(
                &format!(
                    "/rooms/{room}/receipt/m.read/{}",
                    event_id.as_str().unwrap()
                ),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
    });
    let receipt = ephemeral_of(&body, &room, "m.receipt").expect("a receipt");
    assert!(
        receipt["content"][event_id.as_str().unwrap()]["m.read"][&alice.user_id]["ts"].is_u64()
    );
    since = body["next_batch"].clone();

    // Typing.
    let ((_, body), _) = tokio::join!(long_poll(&bob, &since), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, out) = alice
            .put(
                &format!("/rooms/{room}/typing/{}", alice.user_id),
                json!({"typing": true, "timeout": 30000}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
    });
    let typing = ephemeral_of(&body, &room, "m.typing").expect("typing");
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));
    since = body["next_batch"].clone();

    // An invite to another room.
    let ((_, body), other) = tokio::join!(long_poll(&bob, &since), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        alice
            .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
            .await
    });
    assert!(body["rooms"]["invite"].get(&other).is_some(), "{body}");

    // With nothing new, the long-poll waits for its timeout.
    let started = Instant::now();
    let quiet = bob
        .sync(&format!(
            "since={}&timeout=300",
            body["next_batch"].as_str().unwrap()
        ))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert!(quiet.get("rooms").is_none(), "{quiet}");
}

#[tokio::test]
async fn typing_ends_by_itself_and_when_told() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let since = bob.sync("").await["next_batch"].clone();
    let path = format!("/rooms/{room}/typing/{}", alice.user_id);
    alice
        .put(&path, json!({"typing": true, "timeout": 300}))
        .await;
    let started = bob.sync_since(&since).await;
    assert_eq!(
        ephemeral_of(&started, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([alice.user_id])
    );
    // The timeout passes: a long-poll hears that nobody types any more.
    let (_, ended) = long_poll(&bob, &started["next_batch"]).await;
    assert_eq!(
        ephemeral_of(&ended, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([])
    );
    // Explicit start and stop.
    alice
        .put(&path, json!({"typing": true, "timeout": 30000}))
        .await;
    alice.put(&path, json!({"typing": false})).await;
    let stopped = bob.sync_since(&ended["next_batch"]).await;
    assert_eq!(
        ephemeral_of(&stopped, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([])
    );
    // Bad requests.
    let (status, body) = bob
        .put(&path, json!({"typing": true, "timeout": 100}))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // Only `typing` is required (the spec): without `timeout` it lasts 30 s.
    let (status, body) = alice.put(&path, json!({"typing": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.put(&path, json!({"timeout": 1000})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let outsider = Client::new(&server, "carol").await;
    let (status, body) = outsider
        .put(
            &format!("/rooms/{room}/typing/{}", outsider.user_id),
            json!({"typing": true, "timeout": 100}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn receipts_and_read_markers() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let first = alice.text(&room, "one").await;
    let second = alice.text(&room, "two").await;
    let since = alice.sync("").await["next_batch"].clone();

    // A private receipt is seen by its owner only.
    let (status, _) = bob
        .post(
            &format!("/rooms/{room}/receipt/m.read.private/{second}"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let alice_view = alice.sync_since(&since).await;
    assert!(
        ephemeral_of(&alice_view, &room, "m.receipt").is_none(),
        "{alice_view}"
    );
    let bob_view = bob.sync("").await;
    let receipt = ephemeral_of(&bob_view, &room, "m.receipt").unwrap();
    assert!(receipt["content"][&second]["m.read.private"][&bob.user_id].is_object());

    // read_markers: the fully read marker is room account data, m.read a public receipt.
    let (status, out) = bob
        .post(
            &format!("/rooms/{room}/read_markers"),
            json!({"m.fully_read": first, "m.read": first}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let bob_view = bob.sync_since(&bob_view["next_batch"]).await;
    let data = bob_view["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap();
    assert!(data
        .iter()
        .any(|e| e["type"] == "m.fully_read" && e["content"]["event_id"] == first.as_str()));
    let alice_view = alice.sync_since(&alice_view["next_batch"]).await;
    let receipt = ephemeral_of(&alice_view, &room, "m.receipt").unwrap();
    assert!(receipt["content"][&first]["m.read"][&bob.user_id]["ts"].is_u64());
    // The marker moves forward only, and a bad event anywhere in the body moves nothing.
    let marker_path = format!(
        "/user/{}/rooms/{room}/account_data/m.fully_read",
        bob.user_id
    );
    let (status, _) = bob
        .post(
            &format!("/rooms/{room}/read_markers"),
            json!({"m.fully_read": second}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = bob
        .post(
            &format!("/rooms/{room}/read_markers"),
            json!({"m.fully_read": first}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bob.get(&marker_path).await.1["event_id"], second.as_str());
    let third = alice.text(&room, "three").await;
    let (status, body) = bob
        .post(
            &format!("/rooms/{room}/read_markers"),
            json!({"m.fully_read": third, "m.read": "$missing"}),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    assert_eq!(bob.get(&marker_path).await.1["event_id"], second.as_str());
    // A threaded receipt carries its thread id.
    bob.post(
        &format!("/rooms/{room}/receipt/m.read/{second}"),
        json!({"thread_id": "main"}),
    )
    .await;
    let alice_view = alice.sync_since(&alice_view["next_batch"]).await;
    let receipt = ephemeral_of(&alice_view, &room, "m.receipt").unwrap();
    assert_eq!(
        receipt["content"][&second]["m.read"][&bob.user_id]["thread_id"],
        "main"
    );

    // Refusals.
    let (status, body) = bob
        .post(&format!("/rooms/{room}/receipt/m.bogus/{first}"), json!({}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = bob
        .post(
            &format!("/rooms/{room}/receipt/m.read/{first}"),
            json!({"thread_id": ""}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = bob
        .post(&format!("/rooms/{room}/receipt/m.read/$nope"), json!({}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let outsider = Client::new(&server, "carol").await;
    let (status, body) = outsider
        .post(&format!("/rooms/{room}/receipt/m.read/{first}"), json!({}))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = bob
        .put(
            &format!(
                "/user/{}/rooms/{room}/account_data/m.fully_read",
                bob.user_id
            ),
            json!({"event_id": first}),
        )
        .await;
    assert_error(status, &body, 405, "M_BAD_JSON");
}

#[tokio::test]
async fn account_data_tags_and_ignored_users() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let since = bob.sync("").await["next_batch"].clone();

    let global = format!("/user/{}/account_data/org.example.settings", bob.user_id);
    assert_eq!(bob.get(&global).await.0, StatusCode::NOT_FOUND);
    bob.put(&global, json!({"theme": "dark"})).await;
    assert_eq!(bob.get(&global).await.1, json!({"theme": "dark"}));
    let tags = format!("/user/{}/rooms/{room}/tags", bob.user_id);
    let (status, out) = bob
        .put(&format!("{tags}/m.favourite"), json!({"order": 0.5}))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    bob.put(&format!("{tags}/u.work"), json!({})).await;
    let (_, listed) = bob.get(&tags).await;
    assert_eq!(
        listed,
        json!({"tags": {"m.favourite": {"order": 0.5}, "u.work": {}}})
    );
    bob.call(Method::DELETE, &format!("{tags}/u.work"), None)
        .await;

    let next = bob.sync_since(&since).await;
    let events = next["account_data"]["events"].as_array().unwrap();
    assert!(events
        .iter()
        .any(|e| e["type"] == "org.example.settings" && e["content"]["theme"] == "dark"));
    let room_data = next["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .unwrap();
    let tag = room_data.iter().find(|e| e["type"] == "m.tag").unwrap();
    assert_eq!(
        tag["content"],
        json!({"tags": {"m.favourite": {"order": 0.5}}})
    );

    // Others can't read or write it; bad bodies are refused.
    let (status, body) = alice.get(&global).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = bob.put(&global, json!([1, 2])).await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let (status, body) = bob
        .put(
            &format!("/user/{}/account_data/m.push_rules", bob.user_id),
            json!({}),
        )
        .await;
    assert_error(status, &body, 405, "M_BAD_JSON");
    let (status, body) = bob
        .put(
            &format!("/user/{}/rooms/not-a-room/account_data/x.y", bob.user_id),
            json!({}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = bob
        .put(&format!("{tags}/m.lowpriority"), json!({"order": "high"}))
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    // Ignoring Alice hides her messages (and her invites) from Bob's sync.
    bob.put(
        &format!("/user/{}/account_data/m.ignored_user_list", bob.user_id),
        json!({"ignored_users": {alice.user_id.clone(): {}}}),
    )
    .await;
    let before = bob.sync_since(&next["next_batch"]).await;
    alice.text(&room, "you can't hear me").await;
    let invite_room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    let after = bob.sync_since(&before["next_batch"]).await;
    assert!(timeline_bodies(&after, &room).is_empty(), "{after}");
    assert!(after["rooms"]["invite"].get(&invite_room).is_none());
}

#[tokio::test]
async fn filters_limit_the_timeline_and_lazy_load_members() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let c = Client::new(&server, name).await;
        c.join(&room).await;
        others.push(c);
    }
    for i in 0..12 {
        alice.text(&room, &format!("m{i}")).await;
    }
    others[0].text(&room, "from bob").await;

    // A stored filter: 5 events, lazy-loaded members.
    let filter = json!({"room": {"timeline": {"limit": 5}, "state": {"lazy_load_members": true}}});
    let (status, created) = alice
        .post(&format!("/user/{}/filter", alice.user_id), filter.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["filter_id"].as_str().unwrap();
    let (_, stored) = alice
        .get(&format!("/user/{}/filter/{id}", alice.user_id))
        .await;
    assert_eq!(stored, filter);
    let sync = alice.sync(&format!("filter={id}")).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(
        timeline_bodies(&sync, &room),
        vec!["m8", "m9", "m10", "m11", "from bob"]
    );
    let members: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    let mut members = members;
    members.sort();
    let mut want = vec![alice.user_id.as_str(), others[0].user_id.as_str()];
    want.sort();
    assert_eq!(members, want, "only the timeline's senders and the user");
    assert!(joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.create"));

    // prev_batch continues with /messages.
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let page = alice
        .messages(&room, &format!("from={prev}&dir=b&limit=3"))
        .await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, vec!["m7", "m6", "m5"]);

    // Incremental and limited: the state delta since `since` is sent.
    let since = sync["next_batch"].clone();
    alice
        .put(
            &format!("/rooms/{room}/state/m.room.topic/"),
            json!({"topic": "new topic"}),
        )
        .await;
    for i in 0..7 {
        alice.text(&room, &format!("n{i}")).await;
    }
    let next = alice
        .sync(&format!(
            "filter={id}&since={}&timeout=0",
            since.as_str().unwrap()
        ))
        .await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert!(joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "new topic"));

    // Inline filters with types and event_fields.
    let inline = json!({
        "room": {"timeline": {"types": ["m.room.message"], "limit": 2}},
        "event_fields": ["type", "content.body"]
    });
    let sync = alice
        .sync(&format!("filter={}", urlencode(&inline.to_string())))
        .await;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1],
        json!({"type": "m.room.message", "content": {"body": "n6"}})
    );

    // Refusals: someone else's filters, unknown filters, bad filters, bad tokens.
    let (status, body) = others[0]
        .get(&format!("/user/{}/filter/{id}", alice.user_id))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice
        .get(&format!("/user/{}/filter/nope", alice.user_id))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice
        .post(
            &format!("/user/{}/filter", alice.user_id),
            json!({"room": {"timeline": {"limit": "ten"}}}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    for query in [
        "filter=nope",
        "filter=%7Bbad",
        "since=garbage",
        "since=s999999999999999",
        "timeout=x",
    ] {
        let (status, body) = alice.get(&format!("/sync?{query}")).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
    let (status, _) = server
        .call(Method::GET, "/_matrix/client/v3/sync", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_since_token_from_before_a_restart_still_works() {
    let mut server = TestServer::start().await;
    let alice_login = server.register("alice", "correct horse battery").await;
    let bob_login = server.register("bob", "correct horse battery").await;
    let room = {
        let alice = Client::signed_in(&server, &alice_login);
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        let bob = Client::signed_in(&server, &bob_login);
        bob.join(&room).await;
        alice.text(&room, "before").await;
        room
    };
    let to_bob = json!({"messages": {bob_login.0.clone(): {bob_login.2.clone(): {"k": "v"}}}});
    let since = {
        let bob = Client::signed_in(&server, &bob_login);
        bob.sync("").await["next_batch"].clone()
    };
    // A to-device message waiting at the restart is still delivered after it.
    let (status, _) = Client::signed_in(&server, &alice_login)
        .put("/sendToDevice/m.dummy/r1", to_bob)
        .await;
    assert_eq!(status, StatusCode::OK);
    server.restart().await;
    let alice = Client::signed_in(&server, &alice_login);
    let bob = Client::signed_in(&server, &bob_login);
    alice.text(&room, "after").await;
    let next = bob.sync_since(&since).await;
    assert_eq!(timeline_bodies(&next, &room), vec!["after"]);
    assert_eq!(
        next["to_device"]["events"][0]["content"]["k"], "v",
        "{next}"
    );
    let again = bob.sync_since(&next["next_batch"]).await;
    assert!(again.get("rooms").is_none(), "{again}");
}

fn unread(sync: &Value, room: &str) -> (u64, u64) {
    let counts = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        counts["notification_count"]
            .as_u64()
            .expect("notification_count"),
        counts["highlight_count"].as_u64().expect("highlight_count"),
    )
}

#[tokio::test]
async fn unread_counts_rise_with_messages_fall_after_reading_and_mentions_highlight() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let start = bob.sync("").await;
    assert_eq!(unread(&start, &room), (0, 0));

    alice.text(&room, "one").await;
    let first = bob.sync_since(&start["next_batch"]).await;
    assert_eq!(unread(&first, &room), (1, 0));
    alice.text(&room, "two").await;
    let mention = alice.mention(&room, &bob.user_id, "bob: look").await;
    let second = bob.sync_since(&first["next_batch"]).await;
    assert_eq!(unread(&second, &room), (3, 1));
    // Notices don't count; Alice's member events neither.
    alice
        .send(&room, json!({"msgtype": "m.notice", "body": "a bot says"}))
        .await;
    let third = bob.sync_since(&second["next_batch"]).await;
    assert_eq!(unread(&third, &room), (3, 1));

    // /notifications lists them, newest first, and only=highlight the mention.
    let (status, listed) = bob.get("/notifications?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let items = listed["notifications"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["event"]["event_id"], mention.as_str());
    assert_eq!(items[0]["read"], false);
    assert_eq!(items[0]["room_id"], room.as_str());
    let token = listed["next_token"].as_str().unwrap();
    let (_, rest) = bob.get(&format!("/notifications?from={token}")).await;
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 1);
    let (_, highlights) = bob.get("/notifications?only=highlight").await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);

    // Reading up to the mention clears everything before it.
    let (status, _) = bob
        .post(
            &format!("/rooms/{room}/read_markers"),
            json!({"m.read": mention}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let read = bob.sync_since(&third["next_batch"]).await;
    assert_eq!(unread(&read, &room), (0, 0));

    // Sending reads what came before (spec, "Marking notifications as read"), with no
    // receipt from the client; Bob's own message does not count.
    alice.text(&room, "three").await;
    let later = alice.mention(&room, &bob.user_id, "bob: and this").await;
    let unread_again = bob.sync_since(&read["next_batch"]).await;
    assert_eq!(unread(&unread_again, &room), (2, 1));
    bob.text(&room, "mine").await;
    let answered = bob.sync_since(&unread_again["next_batch"]).await;
    assert_eq!(unread(&answered, &room), (0, 0));
    let (_, listed) = bob.get("/notifications?limit=1").await;
    assert_eq!(
        listed["notifications"][0]["event"]["event_id"],
        later.as_str()
    );
    assert_eq!(listed["notifications"][0]["read"], true, "{listed}");
    // It is no receipt anyone sees.
    let receipts = answered["rooms"]["join"][&room]["ephemeral"]["events"].to_string();
    assert!(!receipts.contains("m.read"), "{receipts}");
    alice.text(&room, "four").await;
    let read = bob.sync_since(&answered["next_batch"]).await;
    assert_eq!(unread(&read, &room), (1, 0));

    // A room rule that mutes the room: nothing counts any more.
    let (status, out) = bob
        .put(
            &format!("/pushrules/global/room/{}", enc_room(&room)),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    alice.text(&room, "muted").await;
    let muted = bob.sync_since(&read["next_batch"]).await;
    assert_eq!(unread(&muted, &room), (1, 0), "\"four\" only");
    // The rules reach the client as m.push_rules account data.
    let rules = muted["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules after a change");
    assert!(rules["content"]["global"]["room"][0]["rule_id"] == room.as_str());
}

fn enc_room(room: &str) -> String {
    room.replace('!', "%21").replace(':', "%3A")
}

#[tokio::test]
async fn push_rules_can_be_read_changed_and_refused() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let (status, all) = alice.get("/pushrules/").await;
    assert_eq!(status, StatusCode::OK);
    let overrides = all["global"]["override"].as_array().unwrap();
    assert_eq!(overrides[0]["rule_id"], ".m.rule.master");
    assert_eq!(overrides[0]["enabled"], false);
    assert!(all["global"]["underride"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule_id"] == ".m.rule.room_one_to_one"));
    let (_, global) = alice.get("/pushrules/global/").await;
    assert_eq!(global, all["global"]);

    let base = "/pushrules/global/override/.m.rule.suppress_notices";
    let (_, enabled) = alice.get(&format!("{base}/enabled")).await;
    assert_eq!(enabled, json!({"enabled": true}));
    assert_eq!(
        alice
            .put(&format!("{base}/enabled"), json!({"enabled": false}))
            .await
            .0,
        StatusCode::OK
    );
    let (_, enabled) = alice.get(&format!("{base}/enabled")).await;
    assert_eq!(enabled, json!({"enabled": false}));
    alice
        .put(&format!("{base}/actions"), json!({"actions": ["notify"]}))
        .await;
    let (_, actions) = alice.get(&format!("{base}/actions")).await;
    assert_eq!(actions, json!({"actions": ["notify"]}));

    // A user rule, placed before another.
    let rule = |pattern: &str| json!({"actions": ["notify"], "pattern": pattern});
    assert_eq!(
        alice
            .put("/pushrules/global/content/lunch", rule("lunch"))
            .await
            .0,
        StatusCode::OK
    );
    let (status, out) = alice
        .call(
            Method::PUT,
            "/pushrules/global/content/coffee?before=lunch",
            Some(rule("coffee")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (_, content) = alice.get("/pushrules/global/").await;
    let ids: Vec<&str> = content["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[..2], ["coffee", "lunch"]);
    assert_eq!(
        alice
            .call(Method::DELETE, "/pushrules/global/content/lunch", None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = alice.get("/pushrules/global/content/lunch").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Refusals.
    let (status, body) = alice
        .call(
            Method::DELETE,
            "/pushrules/global/override/.m.rule.master",
            None,
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .put("/pushrules/global/content/.mine", rule("x"))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice.put("/pushrules/global/bogus/x", rule("x")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .put(
            "/pushrules/global/content/x",
            json!({"actions": ["notify"]}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .call(
            Method::PUT,
            "/pushrules/global/content/y?before=nope",
            Some(rule("y")),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice.get("/notifications?only=everything").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
}

fn to_device_events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn to_device_messages_reach_their_device_once_in_order() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let bob_phone = bob.another_device().await;
    let since = bob.sync("").await["next_batch"].clone();
    let phone_since = bob_phone.sync("").await["next_batch"].clone();

    // A long-polling device wakes for a message addressed to it.
    let started = Instant::now();
    let query = format!("since={}&timeout=10000", since.as_str().unwrap());
    let poll = bob.sync(&query);
    let send = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = alice
            .put(
                "/sendToDevice/m.room_key_request/t1",
                json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": 1}}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    let (woken, ()) = tokio::join!(poll, send);
    assert!(started.elapsed() < Duration::from_secs(5));
    let events = to_device_events(&woken);
    assert_eq!(events.len(), 1, "{woken}");
    assert_eq!(events[0]["sender"], alice.user_id.as_str());
    assert_eq!(events[0]["type"], "m.room_key_request");
    assert_eq!(events[0]["content"], json!({"n": 1}));

    // The same transaction again is a no-op; `*` reaches every device of the user; an
    // unknown device and a remote user are skipped without failing the send.
    for txn in ["t1", "t2"] {
        let body = if txn == "t1" {
            json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": 1}}}})
        } else {
            json!({"messages": {
                bob.user_id.clone(): {"*": {"n": 2}, "NOSUCHDEVICE": {"n": 3}},
                "@carol:elsewhere.example": {"ABC": {"n": 4}},
            }})
        };
        let (status, body) = alice
            .put(&format!("/sendToDevice/m.room_key_request/{txn}"), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let next = bob.sync_since(&woken["next_batch"]).await;
    let contents: Vec<Value> = to_device_events(&next)
        .iter()
        .map(|e| e["content"].clone())
        .collect();
    assert_eq!(contents, vec![json!({"n": 2})], "{next}");
    // Acknowledged by the next token: gone.
    let after = bob.sync_since(&next["next_batch"]).await;
    assert!(after.get("to_device").is_none(), "{after}");

    // The phone never acknowledged anything: it gets the `*` message, and only that.
    let phone = bob_phone.sync_since(&phone_since).await;
    let contents: Vec<Value> = to_device_events(&phone)
        .iter()
        .map(|e| e["content"].clone())
        .collect();
    assert_eq!(contents, vec![json!({"n": 2})], "{phone}");
    // Syncing again from the same token (the answer was lost) delivers it again.
    let retry = bob_phone.sync_since(&phone_since).await;
    assert_eq!(to_device_events(&retry).len(), 1, "{retry}");

    // A long queue comes 100 at a time, in order, and the token keeps the rest waiting.
    for n in 0..150 {
        let (status, _) = alice
            .put(
                &format!("/sendToDevice/m.dummy/q{n}"),
                json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": n}}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let first = bob.sync_since(&after["next_batch"]).await;
    let second = bob.sync_since(&first["next_batch"]).await;
    let third = bob.sync_since(&second["next_batch"]).await;
    let numbers: Vec<u64> = to_device_events(&first)
        .iter()
        .chain(to_device_events(&second).iter())
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(to_device_events(&first).len(), 100);
    assert_eq!(numbers, (0..150).collect::<Vec<u64>>());
    assert!(third.get("to_device").is_none(), "{third}");
    // An initial sync of a device gets what waits for it too.
    alice
        .put(
            "/sendToDevice/m.dummy/late",
            json!({"messages": {bob.user_id.clone(): {bob_phone.device_id.clone(): {"late": true}}}}),
        )
        .await;
    let initial = bob_phone.sync("").await;
    assert!(to_device_events(&initial)
        .iter()
        .any(|e| e["content"]["late"] == true));

    // Bad input.
    for body in [
        json!({}),
        json!({"messages": []}),
        json!({"messages": {bob.user_id.clone(): {"X": "not an object"}}}),
        json!({"messages": {"not a user": {"X": {}}}}),
    ] {
        let (status, out) = alice.put("/sendToDevice/m.dummy/bad", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
        assert!(out["errcode"].as_str().unwrap().starts_with("M_"), "{out}");
    }
    let (status, out) = bob
        .get(&format!(
            "/sync?since={}_x",
            after["next_batch"].as_str().unwrap()
        ))
        .await;
    assert_error(status, &out, 400, "M_INVALID_PARAM");
}

fn presence_of(sync: &Value, user: &str) -> Option<Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["sender"] == user)
        .map(|e| e["content"].clone())
}

#[tokio::test]
async fn presence_reaches_room_mates_and_times_out() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let carol = Client::new(&server, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let since = bob.sync("set_presence=offline").await["next_batch"].clone();

    // Bob's long-poll wakes when alice says she is online.
    let query = format!(
        "since={}&timeout=10000&set_presence=offline",
        since.as_str().unwrap()
    );
    let poll = bob.sync(&query);
    let put = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = alice
            .put(
                &format!("/presence/{}/status", alice.user_id),
                json!({"presence": "online", "status_msg": "at lunch"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    let (woken, ()) = tokio::join!(poll, put);
    let seen = presence_of(&woken, &alice.user_id).expect("alice's presence");
    assert_eq!(seen["presence"], "online");
    assert_eq!(seen["status_msg"], "at lunch");
    assert_eq!(seen["currently_active"], true);
    assert!(seen["last_active_ago"].as_u64().unwrap() < 5000);
    // Bob said offline on every sync: nobody hears of him.
    assert!(presence_of(&woken, &bob.user_id).is_none());

    // Reading it: alice herself and bob may; carol shares no room with her.
    let path = format!("/presence/{}/status", alice.user_id);
    for reader in [&alice, &bob] {
        let (status, body) = reader.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["presence"], "online");
    }
    let (status, body) = carol.get(&path).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = bob.get("/presence/not-a-user/status").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = bob.put(&path, json!({"presence": "online"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = alice.put(&path, json!({"presence": "busy"})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice.put(&path, json!({})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    // Alice never syncs: after the sync timeout she is offline, and bob hears it.
    let presence = &server.running().services.presence;
    presence
        .expire(ourwhats::services::now_ms() + 31_000)
        .await
        .unwrap();
    let next = bob.sync_since(&woken["next_batch"]).await;
    assert_eq!(
        presence_of(&next, &alice.user_id).unwrap()["presence"],
        "offline"
    );
    // Her next sync brings her back online; `set_presence=unavailable` says otherwise.
    alice.sync("timeout=0").await;
    let back = bob.sync_since(&next["next_batch"]).await;
    assert_eq!(
        presence_of(&back, &alice.user_id).unwrap()["presence"],
        "online"
    );
    alice.sync("set_presence=unavailable").await;
    let away = bob.sync_since(&back["next_batch"]).await;
    assert_eq!(
        presence_of(&away, &alice.user_id).unwrap()["presence"],
        "unavailable"
    );
    // An initial sync has room mates who are not offline; carol gets nothing of alice.
    let initial = bob.sync("set_presence=offline").await;
    assert_eq!(
        presence_of(&initial, &alice.user_id).unwrap()["presence"],
        "unavailable"
    );
    let carols = carol.sync("set_presence=offline").await;
    assert!(presence_of(&carols, &alice.user_id).is_none(), "{carols}");
    // A presence filter can leave it out.
    let filtered = bob
        .sync(&format!(
            "set_presence=offline&filter={}",
            urlencode(&json!({"presence": {"not_types": ["m.presence"]}}).to_string())
        ))
        .await;
    assert!(filtered.get("presence").is_none(), "{filtered}");
}

#[tokio::test]
async fn presence_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.presence.enabled = false).await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let path = format!("/presence/{}/status", alice.user_id);
    let (status, _) = alice
        .put(&path, json!({"presence": "online", "status_msg": "hi"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = bob.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"presence": "offline"}));
    alice.sync("").await;
    let synced = bob.sync("").await;
    assert!(synced.get("presence").is_none(), "{synced}");
}

#[tokio::test]
async fn thread_notifications_are_counted_per_thread_when_asked() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let root = alice.text(&room, "a thread starts").await;
    let reply = alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "in the thread",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    let main = alice.text(&room, "back in the room").await;
    let threaded = urlencode(
        &json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string(),
    );
    let split = |sync: &Value| -> (u64, Option<u64>) {
        let section = &sync["rooms"]["join"][&room];
        (
            section["unread_notifications"]["notification_count"]
                .as_u64()
                .unwrap(),
            section["unread_thread_notifications"][&root]["notification_count"].as_u64(),
        )
    };
    assert_eq!(unread(&bob.sync("").await, &room).0, 3);
    assert_eq!(
        split(&bob.sync(&format!("filter={threaded}")).await),
        (2, Some(1))
    );

    // Reading the thread clears the thread only.
    let (status, body) = bob
        .post(
            &format!("/rooms/{room}/receipt/m.read/{reply}"),
            json!({"thread_id": root}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        split(&bob.sync(&format!("filter={threaded}")).await),
        (2, None)
    );
    assert_eq!(unread(&bob.sync("").await, &room).0, 2);
    // Reading the main timeline clears the rest.
    let (status, body) = bob
        .post(
            &format!("/rooms/{room}/receipt/m.read/{main}"),
            json!({"thread_id": "main"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(unread(&bob.sync("").await, &room).0, 0);
    // `/notifications` says which are read.
    let (status, list) = bob.get("/notifications").await;
    assert_eq!(status, StatusCode::OK);
    let notifications = list["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 3);
    assert!(notifications.iter().all(|n| n["read"] == true), "{list}");

    // Sending in a thread reads that thread only; sending in the main timeline, the main
    // timeline only.
    let in_thread = json!({"msgtype": "m.text", "body": "more in the thread",
                           "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    alice.send(&room, in_thread.clone()).await;
    alice.text(&room, "more in the room").await;
    assert_eq!(
        split(&bob.sync(&format!("filter={threaded}")).await),
        (1, Some(1))
    );
    bob.send(&room, in_thread).await;
    assert_eq!(
        split(&bob.sync(&format!("filter={threaded}")).await),
        (1, None)
    );
    let goes_on = alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "the thread goes on",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    bob.text(&room, "my answer in the room").await;
    assert_eq!(
        split(&bob.sync(&format!("filter={threaded}")).await),
        (0, Some(1))
    );
    // What the server sends for bob (his profile change, in every room) reads nothing,
    // nor does his reaction to the thread's reply (it is not of the main timeline).
    alice.text(&room, "and the room").await;
    let (status, body) = bob
        .put(
            &format!("/rooms/{room}/send/m.reaction/r1"),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": goes_on, "key": "👍"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob
        .put(
            &format!("/profile/{}/displayname", bob.user_id),
            json!({"displayname": "Bob Renamed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        split(&bob.sync(&format!("filter={threaded}")).await),
        (1, Some(1))
    );
}

/// Removes `unsigned.age` at every depth: it is the one field that differs between two
/// answers a moment apart.
fn without_age(mut event: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(unsigned)) = map.get_mut("unsigned") {
                    unsigned.remove("age");
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut event);
    event
}

/// `/sync` writes its events straight from the stored PDUs rather than through the
/// renderer the other endpoints use; both must give the same events, with the same
/// `unsigned` extras, and the federation format must give the stored PDUs.
#[tokio::test]
async fn sync_serves_the_events_the_event_endpoint_serves() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Été \"à la\" plage"}))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    for topic in ["one", "two"] {
        let (status, body) = alice
            .put(
                &format!("/rooms/{room}/state/m.room.topic/"),
                json!({ "topic": topic }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let root = alice
        .text(&room, "root with \"quotes\", ü and \u{1F600}")
        .await;
    bob.send(
        &room,
        json!({"msgtype": "m.text", "body": "in the thread",
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
    .await;
    let doomed = bob.text(&room, "doomed").await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/redact/{doomed}/r1"),
            json!({"reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let filter = urlencode(&json!({"room": {"timeline": {"limit": 50}}}).to_string());
    let sync = alice.sync(&format!("filter={filter}")).await;
    let section = &sync["rooms"]["join"][&room];
    let timeline = section["timeline"]["events"].as_array().unwrap();
    let state = section["state"]["events"].as_array().unwrap();
    assert!(timeline.len() >= 12, "{section}");
    for event in timeline.iter().chain(state) {
        let id = event["event_id"].as_str().unwrap();
        let (status, served) = alice.get(&format!("/rooms/{room}/event/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{served}");
        assert_eq!(without_age(event.clone()), without_age(served));
        assert!(event["unsigned"]["age"].as_u64().is_some(), "{event}");
    }
    let find = |id: &str| {
        timeline
            .iter()
            .find(|e| e["event_id"] == id)
            .unwrap_or_else(|| panic!("{id} in {section}"))
    };
    let second_topic = timeline
        .iter()
        .rfind(|e| e["type"] == "m.room.topic")
        .unwrap();
    assert_eq!(second_topic["unsigned"]["prev_content"]["topic"], "one");
    assert_eq!(
        second_topic["unsigned"]["prev_sender"],
        alice.user_id.as_str()
    );
    assert!(find(&root)["unsigned"]["transaction_id"].is_string());
    assert_eq!(
        find(&root)["unsigned"]["m.relations"]["m.thread"]["count"],
        1
    );
    assert_eq!(
        find(&root)["content"]["body"],
        "root with \"quotes\", ü and \u{1F600}"
    );
    assert_eq!(find(&doomed)["content"], json!({}));
    assert_eq!(
        find(&doomed)["unsigned"]["redacted_because"]["content"]["reason"],
        "spam"
    );
    let redaction = timeline
        .iter()
        .find(|e| e["type"] == "m.room.redaction")
        .unwrap();
    assert_eq!(redaction["redacts"], doomed.as_str());

    // The federation format: the PDUs as stored, signed and hashed, with the same content.
    let filter = urlencode(
        &json!({"event_format": "federation", "room": {"timeline": {"limit": 50}}}).to_string(),
    );
    let sync = alice.sync(&format!("filter={filter}")).await;
    let pdus = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    assert_eq!(pdus.len(), timeline.len());
    for (pdu, event) in pdus.iter().zip(timeline) {
        for field in [
            "hashes",
            "signatures",
            "auth_events",
            "prev_events",
            "depth",
        ] {
            assert!(pdu.get(field).is_some(), "{field} in {pdu}");
        }
        assert_eq!(pdu["content"], event["content"]);
        assert_eq!(pdu["type"], event["type"]);
        assert!(pdu
            .get("unsigned")
            .is_none_or(|u| u.get("transaction_id").is_none()));
    }
}

/// A `GET /events` from `end` (10 s long poll) of `client`, in a task of its own.
fn events_poll(client: &Client<'_>, end: &str) -> tokio::task::JoinHandle<Value> {
    let path = format!("/events?from={}&timeout=10000", urlencode(end));
    let token = client.token.clone();
    let base = client.server.running().client_url();
    tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("{base}/_matrix/client/v3{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    })
}

#[tokio::test]
async fn the_deprecated_event_stream_long_polls_the_users_rooms() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);

    // Without `from`: no room event yet (only bob's own presence, as the call brings him
    // online), and a token to go on from.
    let (status, first) = bob.get("/events?timeout=0").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(
        first["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "m.presence"),
        "{first}"
    );
    let end = first["end"].as_str().unwrap().to_owned();

    // A long poll that a message ends.
    let started = Instant::now();
    let waiting = events_poll(&bob, &end);
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.text(&room, "through the stream").await;
    let answer = waiting.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the poll was not ended"
    );
    let message = answer["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.message")
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(message["content"]["body"], "through the stream");
    assert_eq!(message["room_id"], room.as_str());
    assert_eq!(answer["start"], end.as_str());

    // Typing comes with its room too; a bad token is refused.
    let end = answer["end"].as_str().unwrap().to_owned();
    let (status, _) = alice
        .put(
            &format!(
                "/rooms/{}/typing/{}",
                urlencode(&room),
                urlencode(&alice.user_id)
            ),
            json!({"typing": true, "timeout": 10000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, next) = bob
        .get(&format!("/events?from={}&timeout=5000", urlencode(&end)))
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let typing = next["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.typing")
        .unwrap_or_else(|| panic!("{next}"));
    assert_eq!(typing["room_id"], room.as_str());
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));
    let (status, body) = bob.get("/events?from=nonsense").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // A receipt (which /events does not show) does not end a poll with nothing: it
    // blocks "until an event is received" (spec), here the next message.
    let end = next["end"].as_str().unwrap().to_owned();
    let waiting = events_poll(&bob, &end);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = message["event_id"].as_str().unwrap();
    let (status, _) = alice
        .post(
            &format!(
                "/rooms/{}/receipt/m.read/{}",
                urlencode(&room),
                urlencode(read)
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.text(&room, "after the receipt").await;
    let answer = waiting.await.unwrap();
    assert!(answer.to_string().contains("after the receipt"), "{answer}");

    // `room_id`: one of the user's rooms only; another room's events stay out, and a
    // room the user is not in (peeking) is refused.
    let other = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&other).await.0, StatusCode::OK);
    let end = answer["end"].as_str().unwrap().to_owned();
    alice.text(&other, "in the other room").await;
    alice.text(&room, "in the first room").await;
    let (status, only) = bob
        .get(&format!(
            "/events?from={}&timeout=0&room_id={}",
            urlencode(&end),
            urlencode(&room)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{only}");
    assert!(only.to_string().contains("in the first room"), "{only}");
    assert!(!only.to_string().contains("in the other room"), "{only}");
    let closed = alice.create_room(json!({})).await;
    let (status, body) = bob
        .get(&format!("/events?timeout=0&room_id={}", urlencode(&closed)))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

/// `/events` answers only the user's rooms, carries other members' presence, and leaves
/// to-device messages (which it has no place for) to a later `/sync` from its token.
#[tokio::test]
async fn the_event_stream_keeps_to_other_rooms_and_leaves_to_device_messages_to_sync() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let carol = Client::new(&server, "carol").await;
    let shared = alice.create_room(json!({"preset": "public_chat"})).await;
    assert_eq!(bob.join(&shared).await.0, StatusCode::OK);
    let elsewhere = carol.create_room(json!({"preset": "public_chat"})).await;
    let (_, first) = bob.get("/events?timeout=0").await;
    let from = first["end"].as_str().unwrap().to_owned();

    carol.text(&elsewhere, "not for bob").await;
    let (status, _) = alice
        .put(
            &format!("/presence/{}/status", urlencode(&alice.user_id)),
            json!({"presence": "online", "status_msg": "here"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = alice
        .put(
            "/sendToDevice/m.test/e1",
            json!({"messages": {&bob.user_id: {&bob.device_id: {"n": 1}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    alice.text(&shared, "for bob").await;

    let (status, answer) = bob
        .get(&format!("/events?from={}&timeout=0", urlencode(&from)))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let chunk = answer["chunk"].as_array().unwrap();
    assert!(!answer.to_string().contains("not for bob"), "{answer}");
    assert!(
        chunk
            .iter()
            .any(|e| e["type"] == "m.room.message" && e["room_id"] == shared.as_str()),
        "{answer}"
    );
    assert!(
        chunk.iter().any(|e| e["type"] == "m.presence"
            && e["sender"] == alice.user_id.as_str()
            && e["content"]["status_msg"] == "here"),
        "{answer}"
    );
    assert!(chunk.iter().all(|e| e["type"] != "m.test"), "{answer}");

    // A /sync from the stream's token still delivers the to-device message, once.
    let end = answer["end"].as_str().unwrap();
    let synced = bob
        .sync(&format!("since={}&timeout=0", urlencode(end)))
        .await;
    let events = synced["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 1, "{synced}");
    assert_eq!(events[0]["content"]["n"], 1);
    let next = bob.sync_since(&synced["next_batch"]).await;
    assert!(
        next["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{next}"
    );
}

/// A redacted message notifies no more (as in Synapse, which deletes its push actions):
/// it leaves the unread counts, a count made before the redaction is not served after it,
/// and `/notifications` forgets it; the messages around it still count.
#[tokio::test]
async fn a_redacted_message_leaves_the_unread_counts_and_the_notifications() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let start = bob.sync("").await;
    alice.text(&room, "one").await;
    let regretted = alice.mention(&room, &bob.user_id, "bob: oops").await;
    alice.text(&room, "three").await;
    // Counted (and the count remembered) before the redaction.
    let before = bob.sync_since(&start["next_batch"]).await;
    assert_eq!(unread(&before, &room), (3, 1));

    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/redact/{regretted}/r1"),
            json!({"reason": "wrong room"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = bob.sync_since(&before["next_batch"]).await;
    assert_eq!(unread(&after, &room), (2, 0), "{after}");
    let ids = bob.notified_event_ids().await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&regretted), "{ids:?}");
    let (_, highlights) = bob.get("/notifications?only=highlight").await;
    assert_eq!(highlights["notifications"], json!([]), "{highlights}");

    // Counting goes on as before.
    alice.text(&room, "four").await;
    let more = bob.sync_since(&after["next_batch"]).await;
    assert_eq!(unread(&more, &room), (3, 0));
}

/// A member who has left (or was banned) since a message notified them loses its
/// notification too when it is redacted: it would stay in their `/notifications`.
#[tokio::test]
async fn a_redacted_message_leaves_the_notifications_of_members_who_left() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let carol = Client::new(&server, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    // A redaction before bob and carol join: the room's writer learns its local members
    // now, and must keep them current as they join.
    let early = alice.text(&room, "early").await;
    let (status, body) = alice
        .put(&format!("/rooms/{room}/redact/{early}/r0"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    bob.join(&room).await;
    carol.join(&room).await;
    // Every message notifies every member (the default `.m.rule.message`).
    let kept = alice.text(&room, "hello").await;
    let regretted = alice.text(&room, "oops").await;
    assert_eq!(bob.notified_event_ids().await.len(), 2);
    assert_eq!(carol.notified_event_ids().await.len(), 2);

    let (status, body) = bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice
        .post(
            &format!("/rooms/{room}/ban"),
            json!({"user_id": carol.user_id, "reason": "spam"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice
        .put(&format!("/rooms/{room}/redact/{regretted}/r1"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_eq!(bob.notified_event_ids().await, vec![kept.clone()]);
    assert_eq!(carol.notified_event_ids().await, vec![kept]);
}

/// The room filter's sections name rooms of their own (`rooms`, `not_rooms` of a
/// `RoomEventFilter`): a room the timeline filter leaves out shows no events there,
/// while another room's do.
#[tokio::test]
async fn a_timeline_filter_leaves_out_the_rooms_it_names() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let quiet = alice.create_room(json!({"preset": "private_chat"})).await;
    let loud = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.text(&quiet, "not wanted here").await;
    alice.text(&loud, "wanted").await;
    let filter = json!({"room": {"timeline": {"not_rooms": [quiet]},
                                 "state": {"not_rooms": [quiet]}}});
    let answer = alice
        .sync(&format!("filter={}", urlencode(&filter.to_string())))
        .await;
    let events = |room: &str, part: &str| {
        answer["rooms"]["join"][room][part]["events"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(events(&quiet, "timeline"), 0, "{answer}");
    assert_eq!(events(&quiet, "state"), 0, "{answer}");
    assert!(events(&loud, "timeline") > 0, "{answer}");
}

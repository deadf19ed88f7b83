//! Server-side search over HTTP: accent- and case-insensitive terms, prefixes, ranking and
//! recency, keys, filters, pagination, groups, context, and never a room or an event the
//! searcher may not read.

use crate::common;

use common::client::Client;
use common::{assert_error, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `POST /search` with `room_events` criteria; asserts 200 and answers the category.
async fn search(client: &Client<'_>, criteria: Value) -> Value {
    search_page(client, criteria, None).await
}

async fn search_page(client: &Client<'_>, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(token) => format!("/search?next_batch={token}"),
        None => "/search".to_owned(),
    };
    let (status, body) = client
        .post(
            &path,
            json!({"search_categories": {"room_events": criteria}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["search_categories"]["room_events"].clone()
}

fn bodies(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let content = &r["result"]["content"];
            content["body"]
                .as_str()
                .or(content["name"].as_str())
                .or(content["topic"].as_str())
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn search_finds_accented_words_only_where_the_searcher_may_read() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let carol = Client::new(&server, "carol").await;
    let shared = alice
        .create_room(json!({"preset": "public_chat", "name": "Été plans", "topic": "Summer"}))
        .await;
    bob.join(&shared).await;
    let secret = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.text(&secret, "l'été secret de alice").await;
    let encrypted = alice
        .create_room(json!({"preset": "private_chat", "initial_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ]}))
        .await;
    alice
        .put(
            &format!("/rooms/{encrypted}/state/m.room.name/"),
            json!({"name": "ete encrypted"}),
        )
        .await;
    alice.text(&shared, "L'été sera chaud").await;
    bob.text(&shared, "ETE is coming, said Bob").await;
    alice.text(&shared, "nothing to see").await;
    alice.text(&shared, "Crème brûlée recipe").await;

    // Case and accents don't matter, either way round.
    for term in ["ete", "ÉTÉ", "Été"] {
        let found = search(&bob, json!({"search_term": term, "keys": ["content.body"]})).await;
        let mut got = bodies(&found);
        got.sort();
        assert_eq!(
            got,
            vec!["ETE is coming, said Bob", "L'été sera chaud"],
            "{term}: {found}"
        );
        assert_eq!(found["count"], 2);
        let highlights: Vec<&str> = found["highlights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert!(
            highlights.contains(&"été") && highlights.contains(&"ETE"),
            "{found}"
        );
    }
    // A word's start finds it; every word must match.
    assert_eq!(
        bodies(&search(&bob, json!({"search_term": "creme brul"})).await),
        vec!["Crème brûlée recipe"]
    );
    assert!(bodies(&search(&bob, json!({"search_term": "creme chaud"})).await).is_empty());
    // The room's name and topic are searchable through their keys.
    let names = search(
        &bob,
        json!({"search_term": "ete", "keys": ["content.name"]}),
    )
    .await;
    assert_eq!(bodies(&names), vec!["Été plans"], "{names}");
    let topics = search(
        &bob,
        json!({"search_term": "summer", "keys": ["content.topic"]}),
    )
    .await;
    assert_eq!(bodies(&topics), vec!["Summer"]);

    // Alice finds her secret room too; bob and carol never do, even by asking for it.
    let alice_finds = search(&alice, json!({"search_term": "ete secret"})).await;
    assert_eq!(bodies(&alice_finds), vec!["l'été secret de alice"]);
    assert!(bodies(&search(&bob, json!({"search_term": "secret"})).await).is_empty());
    let asked = search(
        &carol,
        json!({"search_term": "ete", "filter": {"rooms": [secret, shared]}}),
    )
    .await;
    assert!(bodies(&asked).is_empty(), "{asked}");
    assert_eq!(asked["count"], 0);
    // Encrypted rooms are not searched (spec), even their name.
    let all_names = search(&alice, json!({"search_term": "encrypted"})).await;
    assert!(bodies(&all_names).is_empty(), "{all_names}");

    // After bob leaves he still finds what he could see, not what came later.
    bob.post(&format!("/rooms/{shared}/leave"), json!({})).await;
    alice.text(&shared, "ete after bob left").await;
    let after = search(
        &bob,
        json!({"search_term": "ete", "keys": ["content.body"]}),
    )
    .await;
    assert_eq!(bodies(&after).len(), 2, "{after}");
    assert!(!bodies(&after).contains(&"ete after bob left".to_owned()));

    // A redacted message is gone from the index.
    let doomed = alice.text(&shared, "ephemeral zebra").await;
    assert_eq!(
        bodies(&search(&alice, json!({"search_term": "zebra"})).await).len(),
        1
    );
    let (status, _) = alice
        .put(&format!("/rooms/{shared}/redact/{doomed}/x1"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(bodies(&search(&alice, json!({"search_term": "zebra"})).await).is_empty());
}

#[tokio::test]
async fn search_orders_pages_groups_and_gives_context() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let other = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    bob.join(&other).await;
    bob.put(
        &format!("/rooms/{room}/state/m.room.member/{}", bob.user_id),
        json!({"membership": "join", "displayname": "Bobby"}),
    )
    .await;
    for n in 0..15 {
        let sender = if n % 2 == 0 { &alice } else { &bob };
        let target = if n < 12 { &room } else { &other };
        sender.text(target, &format!("report number {n}")).await;
    }
    // Rank: the short exact match beats the long one and the prefix match.
    alice.text(&room, "quarterly").await;
    alice
        .text(
            &room,
            "the quarterly numbers are late again, as every quarter, sadly",
        )
        .await;
    alice.text(&room, "quarterlyish").await;
    let ranked = search(
        &bob,
        json!({"search_term": "quarterly", "order_by": "rank"}),
    )
    .await;
    let got = bodies(&ranked);
    assert_eq!(got[0], "quarterly", "{ranked}");
    assert_eq!(got.len(), 3);
    let ranks: Vec<f64> = ranked["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");

    // Recent, in pages of 10, grouped by room and sender.
    let criteria = json!({
        "search_term": "report",
        "order_by": "recent",
        "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    });
    let first = search(&bob, criteria.clone()).await;
    assert_eq!(first["count"], 15);
    let numbers = |page: &Value| -> Vec<u64> {
        bodies(page)
            .iter()
            .map(|b| b.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(numbers(&first), (5..15).rev().collect::<Vec<u64>>());
    let token = first["next_batch"]
        .as_str()
        .expect("more results")
        .to_owned();
    let groups = &first["groups"]["room_id"];
    assert_eq!(groups[&other]["results"].as_array().unwrap().len(), 3);
    assert_eq!(groups[&room]["results"].as_array().unwrap().len(), 7);
    assert_eq!(groups[&other]["order"], 1);
    assert_eq!(
        first["groups"]["sender"][&alice.user_id]["results"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let second = search_page(&bob, criteria.clone(), Some(&token)).await;
    assert_eq!(numbers(&second), (0..5).rev().collect::<Vec<u64>>());
    assert!(second.get("next_batch").is_none(), "{second}");
    // A group's token goes on within the group.
    let group_token = groups[&room]["next_batch"].as_str().unwrap();
    let in_room = search_page(&bob, criteria.clone(), Some(group_token)).await;
    assert_eq!(numbers(&in_room), (0..5).rev().collect::<Vec<u64>>());
    // A token of another order is refused.
    let (status, body) = bob
        .post(
            &format!("/search?next_batch={token}"),
            json!({"search_categories": {"room_events": {"search_term": "report"}}}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // Filter by sender and limit.
    let bobs = search(
        &bob,
        json!({"search_term": "report", "filter": {"senders": [bob.user_id], "limit": 3}}),
    )
    .await;
    assert_eq!(bodies(&bobs).len(), 3);
    assert!(bobs["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["result"]["sender"] == bob.user_id.as_str()));

    // Context around a result, with the senders' profiles, and the room's state.
    let with_context = search(
        &bob,
        json!({
            "search_term": "number 6",
            "event_context": {"before_limit": 2, "after_limit": 1, "include_profile": true},
            "include_state": true,
        }),
    )
    .await;
    assert_eq!(bodies(&with_context), vec!["report number 6"]);
    let context = &with_context["results"][0]["context"];
    let before: Vec<&str> = context["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(before, vec!["report number 5", "report number 4"]);
    assert_eq!(
        context["events_after"][0]["content"]["body"],
        "report number 7"
    );
    assert!(context["start"].is_string() && context["end"].is_string());
    assert_eq!(
        context["profile_info"][&bob.user_id]["displayname"],
        "Bobby"
    );
    let state = with_context["state"][&room].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));

    // Bad requests get Matrix errors.
    for (body, code) in [
        (
            json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.foo"]}}}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"search_categories": {"room_events": {"search_term": "x", "order_by": "oldest"}}}),
            "M_BAD_JSON",
        ),
        (
            json!({"search_categories": {"room_events": {"search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}}}),
            "M_INVALID_PARAM",
        ),
        (
            json!({"search_categories": {"room_events": {}}}),
            "M_BAD_JSON",
        ),
        (json!({}), "M_BAD_JSON"),
    ] {
        let (status, out) = bob.post("/search", body).await;
        assert_error(status, &out, 400, code);
    }
    let (status, out) = bob
        .post(
            "/search?next_batch=garbage!",
            json!({"search_categories": {"room_events": {"search_term": "x"}}}),
        )
        .await;
    assert_error(status, &out, 400, "M_INVALID_PARAM");
    // No category asked: an empty answer.
    let (status, out) = bob.post("/search", json!({"search_categories": {}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out, json!({"search_categories": {}}));
    // Punctuation only: no terms, no results.
    assert!(bodies(&search(&bob, json!({"search_term": "?!"})).await).is_empty());
}

#[tokio::test]
async fn a_database_from_before_the_index_is_indexed_at_start_up() {
    let mut server = TestServer::start().await;
    let login = server.register("alice", "correct horse battery").await;
    let room = {
        let alice = Client::signed_in(&server, &login);
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        alice.text(&room, "written before the index existed").await;
        room
    };
    // Make the database look like one written before search: no postings, no version.
    server.server.take().unwrap().shutdown().await;
    {
        use ourwhats::storage::{Db, DbOptions, Table};
        let db = Db::open(&server.dir.path().join("db"), &DbOptions::default()).unwrap();
        let mut batch = db.batch();
        batch.delete(Table::Meta, b"search_index_version");
        for entry in db.scan_prefix(Table::ShortroomidTermPosPosting, &[]) {
            batch.delete(Table::ShortroomidTermPosPosting, entry.unwrap().0);
        }
        db.commit_blocking(batch).unwrap();
    }
    let config = common::test_config(server.dir.path());
    let started = ourwhats::Server::start(config).await.unwrap();
    server.base = started.client_url();
    server.server = Some(started);
    let alice = Client::signed_in(&server, &login);
    let found = search(&alice, json!({"search_term": "existed"})).await;
    assert_eq!(bodies(&found), vec!["written before the index existed"]);
    assert_eq!(found["results"][0]["result"]["room_id"], room.as_str());
}

#[tokio::test]
async fn the_user_directory_finds_room_mates_and_people_in_public_rooms() {
    let server = TestServer::start().await;
    let alice = Client::new(&server, "alice").await;
    let bob = Client::new(&server, "bob").await;
    let carol = Client::new(&server, "carol").await;
    let dave = Client::new(&server, "dave").await;
    let private = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    bob.join(&private).await;
    carol.create_room(json!({"preset": "public_chat"})).await;
    dave.create_room(json!({"preset": "private_chat"})).await;
    let (status, _) = carol
        .put(
            &format!("/profile/{}/displayname", carol.user_id),
            json!({"displayname": "Émile Zola"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let find = |term: &str, limit: Option<u64>| {
        let mut body = json!({ "search_term": term });
        if let Some(limit) = limit {
            body["limit"] = json!(limit);
        }
        let alice = &alice;
        async move {
            let (status, found) = alice.post("/user_directory/search", body).await;
            assert_eq!(status, StatusCode::OK, "{found}");
            found
        }
    };
    let ids = |found: &Value| -> Vec<String> {
        found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // A room mate by localpart; someone in a public room by display name, accents aside.
    assert_eq!(ids(&find("bo", None).await), vec![bob.user_id.clone()]);
    let emile = find("emile zo", None).await;
    assert_eq!(ids(&emile), vec![carol.user_id.clone()]);
    assert_eq!(emile["results"][0]["display_name"], "Émile Zola");
    assert_eq!(emile["limited"], false);
    // Dave shares no room with alice and is in no public room.
    assert!(ids(&find("dave", None).await).is_empty());
    // The server name matches everyone alice may find: room mates first, then the
    // limit says there were more.
    let server_name = alice.user_id.split(':').nth(1).unwrap().to_owned();
    let everyone = find(&server_name, None).await;
    let mut expected = vec![
        alice.user_id.clone(),
        bob.user_id.clone(),
        carol.user_id.clone(),
    ];
    expected.sort();
    let mut got = ids(&everyone);
    assert_eq!(got.len(), 3, "{everyone}");
    assert_eq!(got[2], carol.user_id, "room mates come first: {everyone}");
    got.sort();
    assert_eq!(got, expected);
    let one = find(&server_name, Some(1)).await;
    assert_eq!(ids(&one).len(), 1);
    assert_eq!(one["limited"], true);

    for body in [json!({}), json!({"search_term": "x", "limit": -1})] {
        let (status, out) = alice.post("/user_directory/search", body).await;
        assert_error(status, &out, 400, "M_BAD_JSON");
    }
}

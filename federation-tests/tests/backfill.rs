//! A room's past that predates our join, fetched from the server that holds it when a
//! client pages back past the oldest event we have (`/backfill`, `/state_ids`), between
//! two real instances over TLS.

use federation_tests::{enc, Cluster, User};
use reqwest::Method;
use serde_json::{json, Value};

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn history_from_before_our_join_is_backfilled_for_messages() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let mut said = Vec::new();
    let mut sent_ids = Vec::new();
    for n in 0..25 {
        if n == 12 {
            let path = format!("/rooms/{}/state/m.room.topic/", enc(&room));
            let (status, body) = alice.put(&path, json!({"topic": "halfway"})).await;
            assert_eq!(status, 200, "{body}");
        }
        let path = format!("/rooms/{}/send/m.room.message/old{n}", enc(&room));
        let body = format!("old {n}");
        let (status, sent) = alice
            .put(&path, json!({"msgtype": "m.text", "body": body}))
            .await;
        assert_eq!(status, 200, "{sent}");
        said.push(body);
        sent_ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    // A reference to an early message, sent last: backfill places it before its parent,
    // which comes with a later page.
    let (status, note) = alice
        .put(
            &format!("/rooms/{}/send/org.example.note/n1", enc(&room)),
            json!({"m.relates_to": {"rel_type": "m.reference", "event_id": sent_ids[1]}}),
        )
        .await;
    assert_eq!(status, 200, "{note}");
    // A redaction of an early message, sent last too: backfill (newest first) brings it
    // before the message it redacts.
    let (status, redaction) = alice
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&sent_ids[8])),
            json!({"reason": "said too soon"}),
        )
        .await;
    assert_eq!(status, 200, "{redaction}");
    said.remove(8);
    bob.join_via(&room, a.name()).await;
    // Once the member list is in: its completion shows the room anew (as after a join)
    // to the next sync, whose token would then be no mark of "after the join".
    let full = b
        .running()
        .services
        .rooms
        .wait_full_state(&room, std::time::Duration::from_secs(30))
        .await;
    assert!(matches!(full, Ok(true)), "the member list came");
    let joined = bob
        .sync_until(|s| s["rooms"]["join"][&room].is_object())
        .await
        .expect("bob's sync shows the room");
    let since = joined["next_batch"].as_str().unwrap().to_owned();

    // A client that filters for messages pages on while other servers have history:
    // a page after a backfill has an `end` even when it came out short.
    let filter = enc(r#"{"types":["m.room.message"]}"#);
    let mut messages = Vec::new();
    let mut from = String::new();
    for _ in 0..20 {
        let path = format!(
            "/rooms/{}/messages?dir=b&limit=10&filter={filter}{from}",
            enc(&room)
        );
        let (status, page) = bob.get(&path).await;
        assert_eq!(status, 200, "{page}");
        messages.extend(bodies(page["chunk"].as_array().unwrap()));
        match page["end"].as_str() {
            Some(end) => from = format!("&from={}", enc(end)),
            None => break,
        }
    }
    let mut expected = said.clone();
    expected.reverse();
    assert_eq!(messages, expected);

    // Paging back from our join reaches the room's creation, every message once, in order.
    let (events, pages) = bob.page_back(&room, 7).await;
    assert!(pages > 4, "{pages} pages");
    assert_eq!(bodies(&events), expected);
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no event twice");
    assert_eq!(events.first().unwrap()["content"]["membership"], "join");
    assert_eq!(events.last().unwrap()["type"], "m.room.create");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "halfway"),
        "the topic change of the past is in the timeline"
    );

    // The reference placed before its parent is bundled with the parent all the same.
    let (status, parent) = bob
        .get(&format!(
            "/rooms/{}/event/{}",
            enc(&room),
            enc(&sent_ids[1])
        ))
        .await;
    assert_eq!(status, 200, "{parent}");
    assert_eq!(
        parent["unsigned"]["m.relations"]["m.reference"]["chunk"][0]["event_id"], note["event_id"],
        "{parent}"
    );

    // The message redacted after it was sent is redacted here too, though its redaction
    // was placed first.
    let (status, redacted) = bob
        .get(&format!(
            "/rooms/{}/event/{}",
            enc(&room),
            enc(&sent_ids[8])
        ))
        .await;
    assert_eq!(status, 200, "{redacted}");
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert_eq!(
        redacted["unsigned"]["redacted_because"]["event_id"], redaction["event_id"],
        "{redacted}"
    );

    // The same history read again comes from our own store, the same.
    let (again, _) = bob.page_back(&room, 50).await;
    assert_eq!(bodies(&again), expected);

    // History is not news: an incremental sync does not bring it.
    let (status, next) = bob
        .get(&format!("/sync?timeout=0&since={}", enc(&since)))
        .await;
    assert_eq!(status, 200, "{next}");
    let timeline = &next["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        bodies(timeline.as_array().map_or(&[][..], |v| v)).is_empty(),
        "{next}"
    );
    // Nor does it count as unread.
    let (status, full) = bob.get("/sync?timeout=0").await;
    assert_eq!(status, 200);
    let counts = &full["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(
        counts["notification_count"].as_u64().unwrap_or(0),
        0,
        "{counts}"
    );

    // An event of the past has its context, and the state at it (the topic not yet set).
    let old3 = events
        .iter()
        .find(|e| e["content"]["body"] == "old 3")
        .unwrap();
    let path = format!(
        "/rooms/{}/context/{}?limit=4",
        enc(&room),
        enc(old3["event_id"].as_str().unwrap())
    );
    let (status, context) = bob.get(&path).await;
    assert_eq!(status, 200, "{context}");
    assert_eq!(
        bodies(context["events_before"].as_array().unwrap()),
        ["old 2", "old 1"]
    );
    assert_eq!(
        bodies(context["events_after"].as_array().unwrap()),
        ["old 4", "old 5"]
    );

    // Live talk goes on after it, and history stays before it.
    let (status, sent) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/new", enc(&room)),
            json!({"msgtype": "m.text", "body": "new"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    bob.sync_until(|s| {
        s["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["content"]["body"] == "new"))
    })
    .await
    .expect("the new message reaches bob");
    let (status, page) = bob
        .get(&format!("/rooms/{}/messages?dir=b&limit=3", enc(&room)))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(bodies(page["chunk"].as_array().unwrap())[0], "new");
    cluster.shutdown().await;
}

#[tokio::test]
async fn history_shared_with_members_only_stays_hidden_after_a_backfill() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"}
            }]
        }))
        .await;
    for n in 0..5 {
        let path = format!("/rooms/{}/send/m.room.message/s{n}", enc(&room));
        let (status, sent) = alice
            .put(
                &path,
                json!({"msgtype": "m.text", "body": format!("secret {n}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
    }
    bob.join_via(&room, a.name()).await;
    let (events, _) = bob.page_back(&room, 10).await;
    assert!(bodies(&events).is_empty(), "{events:?}");
    assert_eq!(events.first().unwrap()["content"]["membership"], "join");
    cluster.shutdown().await;
}

/// What another server reads of a `joined` room's history: its user's own member events
/// (seen when the membership before or after allows, as the spec's history visibility
/// says), the events from while it was in, and the events from while it was not given
/// redacted (by id, and on a walk of the history, so that the walk goes on to older
/// events it may see; as Synapse answers). A `limit` of 0 answers none; a room we do not hold is
/// refused.
#[tokio::test]
async fn a_server_walking_the_history_gets_what_it_may_see_and_the_rest_redacted() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"}
            }]
        }))
        .await;
    let say = |n: &'static str| {
        let alice = &alice;
        let room = &room;
        async move {
            let path = format!("/rooms/{}/send/m.room.message/{n}", enc(room));
            let (status, sent) = alice
                .put(&path, json!({"msgtype": "m.text", "body": n}))
                .await;
            assert_eq!(status, 200, "{sent}");
            sent["event_id"].as_str().unwrap().to_owned()
        }
    };
    let bob_state = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&bob.user_id)
    );
    let before = say("before").await;
    bob.join_via(&room, a.name()).await;
    let (_, member) = alice.get(&bob_state).await;
    let (status, state) = alice.get(&format!("/rooms/{}/state", enc(&room))).await;
    assert_eq!(status, 200, "{state}");
    let first_join = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == bob.user_id.as_str())
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(member["membership"], "join");

    // Bob's own join: nobody of B was in the room before it; the state after it allows.
    let event = |id: &str| format!("/_matrix/federation/v1/event/{}", enc(id));
    let (status, body) = b
        .ask(a.name(), Method::GET, &event(&first_join), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let state_ids = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(&room),
        enc(&first_join)
    );
    let (status, body) = b.ask(a.name(), Method::GET, &state_ids, None).await;
    assert_eq!(status, 200, "{body}");
    // An event from before it comes redacted (B is in the room; it may need its keys
    // for an auth chain).
    let (status, body) = b.ask(a.name(), Method::GET, &event(&before), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][0]["type"], "m.room.message");
    assert_eq!(body["pdus"][0]["content"], json!({}), "{body}");
    // The state there: its ids (as Synapse answers; a gap before an event B cannot see
    // needs them), not its events.
    let at_before = |what: &str| {
        format!(
            "/_matrix/federation/v1/{what}/{}?event_id={}",
            enc(&room),
            enc(&before)
        )
    };
    let (status, body) = b
        .ask(a.name(), Method::GET, &at_before("state_ids"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["pdu_ids"].as_array().unwrap().is_empty(), "{body}");
    let (status, body) = b
        .ask(a.name(), Method::GET, &at_before("state"), None)
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{body}"
    );
    // Its auth chain too (B may need it for the redacted copy it got).
    let auth = format!(
        "/_matrix/federation/v1/event_auth/{}/{}",
        enc(&room),
        enc(&before)
    );
    let (status, body) = b.ask(a.name(), Method::GET, &auth, None).await;
    assert_eq!(status, 200, "{body}");
    let chain = body["auth_chain"].as_array().unwrap();
    assert!(chain.iter().any(|e| e["type"] == "m.room.create"), "{body}");

    let while_in = say("while in").await;
    let (status, body) = bob
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..600 {
        if alice.get(&bob_state).await.1["membership"] == "leave" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(alice.get(&bob_state).await.1["membership"], "leave");
    let while_out = say("while out").await;
    bob.join_via(&room, a.name()).await;
    let latest = say("back in").await;

    let backfill = |limit: u32| {
        format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit={limit}",
            enc(&room),
            enc(&latest)
        )
    };
    let (status, body) = b.ask(a.name(), Method::GET, &backfill(50), None).await;
    assert_eq!(status, 200, "{body}");
    let pdus = body["pdus"].as_array().unwrap();
    let by_id = |id: &str| {
        pdus.iter()
            .find(|p| {
                ourwhats::core::event_hashes::event_id(p, ourwhats::core::RoomVersion::V12)
                    .is_ok_and(|e| e == id)
            })
            .unwrap_or_else(|| panic!("{id} not in the backfill: {body}"))
            .clone()
    };
    assert_eq!(by_id(&while_in)["content"]["body"], "while in");
    assert_eq!(by_id(&latest)["content"]["body"], "back in");
    assert_eq!(by_id(&first_join)["content"]["membership"], "join");
    // Walked past, redacted: what B may not see.
    assert_eq!(by_id(&while_out)["content"], json!({}));
    assert_eq!(by_id(&before)["content"], json!({}));
    assert_eq!(by_id(&before)["type"], "m.room.message");

    let missing = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let ask_missing =
        |limit: u32| json!({"earliest_events": [], "latest_events": [latest], "limit": limit});
    let (status, body) = b
        .ask(a.name(), Method::POST, &missing, Some(ask_missing(50)))
        .await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    let contents: Vec<&Value> = events.iter().map(|e| &e["content"]).collect();
    assert!(
        contents.contains(&&json!({"msgtype": "m.text", "body": "while in"})),
        "{body}"
    );
    assert!(
        !contents
            .iter()
            .any(|c| c["body"] == "while out" || c["body"] == "before"),
        "{body}"
    );
    let redacted = events
        .iter()
        .filter(|e| e["type"] == "m.room.message" && e["content"] == json!({}))
        .count();
    assert_eq!(redacted, 2, "{body}");

    // limit 0: none.
    let (status, body) = b.ask(a.name(), Method::GET, &backfill(0), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"], json!([]));
    let (status, body) = b
        .ask(a.name(), Method::POST, &missing, Some(ask_missing(0)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]));
    // A room A does not hold.
    let unknown = format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=5",
        enc(&format!("!nowhere:{}", a.name())),
        enc(&latest)
    );
    let (status, body) = b.ask(a.name(), Method::GET, &unknown, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    cluster.shutdown().await;
}

/// Spec: `POST /account/deactivate`, `erase`: "any users (or servers) which join the room
/// after the erasure request are served redacted copies". A server joining afterwards
/// gets an erased user's messages redacted by `/event`, `/backfill` and
/// `/get_missing_events`, and the others' messages whole; her state events whole.
#[tokio::test]
async fn a_server_joining_after_an_erasure_is_served_redacted_copies() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let carol = User::register(a, "carol").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let (status, body) = carol
        .post(&format!("/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let say = |user: &User, body: &'static str| {
        let path = format!(
            "/rooms/{}/send/m.room.message/{}",
            enc(&room),
            body.replace(' ', "_")
        );
        let user = user.clone();
        async move {
            let (status, sent) = user
                .put(&path, json!({"msgtype": "m.text", "body": body}))
                .await;
            assert_eq!(status, 200, "{sent}");
            sent["event_id"].as_str().unwrap().to_owned()
        }
    };
    let erased = say(&carol, "carol's words").await;
    let kept = say(&alice, "alice's words").await;
    let (_, challenge) = carol
        .post("/account/deactivate", json!({"erase": true}))
        .await;
    let (status, body) = carol
        .post(
            "/account/deactivate",
            json!({"erase": true, "auth": {"type": "m.login.password",
                   "session": challenge["session"],
                   "identifier": {"type": "m.id.user", "user": "carol"},
                   "password": "correct horse battery"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    bob.join_via(&room, a.name()).await;
    let latest = say(&alice, "after bob came").await;

    let event = |id: &str| format!("/_matrix/federation/v1/event/{}", enc(id));
    let (status, body) = b.ask(a.name(), Method::GET, &event(&erased), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][0]["content"], json!({}), "{body}");
    let (status, body) = b.ask(a.name(), Method::GET, &event(&kept), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pdus"][0]["content"]["body"], "alice's words",
        "{body}"
    );

    let backfill = format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=50",
        enc(&room),
        enc(&latest)
    );
    let (status, body) = b.ask(a.name(), Method::GET, &backfill, None).await;
    assert_eq!(status, 200, "{body}");
    let found = bodies(body["pdus"].as_array().unwrap());
    assert!(found.contains(&"alice's words".to_owned()), "{body}");
    assert!(!found.contains(&"carol's words".to_owned()), "{body}");
    // Her state events come whole: the room's configuration and auth depend on them (a
    // redacted create event or server ACL would stop a server joining or talking).
    let carols_join = body["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sender"] == carol.user_id.as_str() && e["content"]["membership"] == "join")
        .unwrap_or_else(|| panic!("carol's join in the history: {body}"));
    assert_eq!(
        carols_join["content"]["displayname"], "carol",
        "{carols_join}"
    );
    let missing = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let ask = json!({"earliest_events": [], "latest_events": [latest], "limit": 50});
    let (status, body) = b.ask(a.name(), Method::POST, &missing, Some(ask)).await;
    assert_eq!(status, 200, "{body}");
    let found = bodies(body["events"].as_array().unwrap());
    assert!(found.contains(&"alice's words".to_owned()), "{body}");
    assert!(!found.contains(&"carol's words".to_owned()), "{body}");
}

/// Two clients paging back past our join at once: the room's past is fetched by one
/// backfill at a time, so each sees every message once, in order (two at once placed
/// the same events in two position blocks, a parent after its child).
#[tokio::test]
async fn two_clients_paging_back_at_once_see_the_past_in_order() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let mut said = Vec::new();
    for n in 0..40 {
        let path = format!("/rooms/{}/send/m.room.message/old{n}", enc(&room));
        let body = format!("old {n}");
        let (status, sent) = alice
            .put(&path, json!({"msgtype": "m.text", "body": body}))
            .await;
        assert_eq!(status, 200, "{sent}");
        said.push(body);
    }
    said.reverse();
    bob.join_via(&room, a.name()).await;
    let other_device = bob.login_another_device().await.unwrap();
    let (first, second) = tokio::join!(bob.page_back(&room, 5), other_device.page_back(&room, 5));
    for (events, _) in [first, second] {
        assert_eq!(bodies(&events), said);
        assert_eq!(events.last().unwrap()["type"], "m.room.create");
    }
}

/// Spec: client-server API, `/timestamp_to_event`: a server that "does not have all of
/// the room history" asks the others (the federation endpoint). Bob's server joined
/// after alice's 130 early messages: a time among them, either way, answers one of them
/// (backfilled, so that its `/context` can be read), not bob's join.
#[tokio::test]
async fn a_time_before_our_join_is_found_on_another_server() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let mut sent = Vec::new();
    for n in 0..130 {
        let path = format!("/rooms/{}/send/m.room.message/early{n}", enc(&room));
        let (status, body) = alice
            .put(
                &path,
                json!({"msgtype": "m.text", "body": format!("early {n}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let ts_of = |id: String| {
        let path = format!("/rooms/{}/event/{}", enc(&room), enc(&id));
        let alice = &alice;
        async move {
            alice.get(&path).await.1["origin_server_ts"]
                .as_u64()
                .unwrap()
        }
    };
    let (early, earlier) = (ts_of(sent[5].clone()).await, ts_of(sent[3].clone()).await);
    bob.join_via(&room, a.name()).await;

    for (ts, dir) in [(early, "b"), (earlier, "f")] {
        let path = format!("/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}", enc(&room));
        let (status, found) = bob.get(&path).await;
        assert_eq!(status, 200, "{dir}: {found}");
        assert_eq!(found["origin_server_ts"], ts, "{dir}: {found}");
        let id = found["event_id"].as_str().unwrap();
        let (status, context) = bob
            .get(&format!(
                "/rooms/{}/context/{}?limit=2",
                enc(&room),
                enc(id)
            ))
            .await;
        assert_eq!(status, 200, "{context}");
        let body = context["event"]["content"]["body"].as_str().unwrap_or("");
        assert!(body.starts_with("early "), "{context}");
    }
    cluster.shutdown().await;
}

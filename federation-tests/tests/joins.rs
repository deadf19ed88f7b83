//! Joining a room on another ourwhats as the resident server answers it: `make_join` and
//! `send_join` (v2 and v1) between two real instances over TLS, and every refusal the
//! spec names for them. The joining side's requests are made with the second server's
//! own federation client and key, so each one is a real signed request.

use federation_tests::{enc, Cluster, Instance, User};
use ourwhats::core::{event_hashes, RoomVersion};
use reqwest::Method;
use serde_json::{json, Value};

/// `instance` asks `to` (a signed request); answers the status and body.
async fn ask(
    instance: &Instance,
    to: &Instance,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    instance.ask(to.name(), method, path, body).await
}

/// The template filled in and signed by `instance`: answers the event id and PDU.
fn sign_join(instance: &Instance, version: RoomVersion, template: &Value) -> (String, Value) {
    let mut pdu = template.clone();
    pdu["origin_server_ts"] = json!(1_700_000_000_000u64);
    let key = &instance.running().services.signing_key;
    event_hashes::hash_and_sign_event(&mut pdu, instance.name(), key, version).unwrap();
    let id = event_hashes::event_id(&pdu, version).unwrap();
    (id, pdu)
}

#[tokio::test]
async fn make_join_and_send_join_with_every_refusal() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "lobby"}))
        .await;
    let bob = format!("@bob:{}", b.name());
    let make_join = |user: &str, query: &str| {
        format!(
            "/_matrix/federation/v1/make_join/{}/{}?{query}",
            enc(&room),
            enc(user)
        )
    };

    // make_join refusals.
    let (status, body) = ask(b, a, Method::GET, &make_join(&bob, "ver=10&ver=11"), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INCOMPATIBLE_ROOM_VERSION")),
        "{body}"
    );
    assert_eq!(body["room_version"], "12");
    let (status, body) = ask(b, a, Method::GET, &make_join(&bob, ""), None).await;
    assert_eq!(status, 400, "no ver means version 1: {body}");
    let (status, body) = ask(
        b,
        a,
        Method::GET,
        &make_join(&alice.user_id, "ver=12"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "not of the origin: {body}"
    );
    let unknown = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        enc("!nowhere:elsewhere"),
        enc(&bob)
    );
    let (status, body) = ask(b, a, Method::GET, &unknown, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{body}"
    );
    let (status, invite_only) = alice.post("/createRoom", json!({})).await;
    assert_eq!(status, 200);
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        enc(invite_only["room_id"].as_str().unwrap()),
        enc(&bob)
    );
    let (status, body) = ask(b, a, Method::GET, &path, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "invite-only: {body}"
    );

    // The template.
    let (status, answer) = ask(b, a, Method::GET, &make_join(&bob, "ver=11&ver=12"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["room_version"], "12");
    let template = answer["event"].clone();
    assert_eq!(template["type"], "m.room.member");
    assert_eq!(template["state_key"], bob);
    assert_eq!(template["content"]["membership"], "join");
    assert!(!template["prev_events"].as_array().unwrap().is_empty());
    let version = RoomVersion::V12;
    let (event_id, join) = sign_join(b, version, &template);
    let send_join = |id: &str, v: u8| {
        format!(
            "/_matrix/federation/v{v}/send_join/{}/{}",
            enc(&room),
            enc(id)
        )
    };

    // send_join refusals, each signed properly by b.
    let mut wrong_type = template.clone();
    wrong_type["type"] = json!("m.room.message");
    let (id, wrong_type) = sign_join(b, version, &wrong_type);
    let mut not_join = template.clone();
    not_join["content"]["membership"] = json!("leave");
    let (id2, not_join) = sign_join(b, version, &not_join);
    let mut other_sender = template.clone();
    other_sender["sender"] = json!(alice.user_id);
    other_sender["state_key"] = json!(alice.user_id);
    let (id3, other_sender) = sign_join(b, version, &other_sender);
    let mut other_key = template.clone();
    other_key["state_key"] = json!(format!("@carol:{}", b.name()));
    let (id4, other_key) = sign_join(b, version, &other_key);
    for (id, pdu, what) in [
        (&id, &wrong_type, "not a member event"),
        (&id2, &not_join, "not a join"),
        (&id3, &other_sender, "sender of another server"),
        (&id4, &other_key, "state_key is not the sender"),
        (
            &"$wrongid".to_owned(),
            &join,
            "the path names another event",
        ),
    ] {
        let (status, body) = ask(b, a, Method::PUT, &send_join(id, 2), Some(pdu.clone())).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{what}: {body}"
        );
    }
    // A signature that does not verify (the event changed after signing).
    let mut tampered = join.clone();
    tampered["origin_server_ts"] = json!(1_700_000_000_001u64);
    let tampered_id = event_hashes::event_id(&tampered, version).unwrap();
    let (status, body) = ask(
        b,
        a,
        Method::PUT,
        &send_join(&tampered_id, 2),
        Some(tampered),
    )
    .await;
    assert_eq!(status, 400, "bad signature: {body}");
    // Another room's event id in the path's room.
    let mut elsewhere = template.clone();
    elsewhere["room_id"] = json!(invite_only["room_id"]);
    let (id5, elsewhere) = sign_join(b, version, &elsewhere);
    let (status, body) = ask(b, a, Method::PUT, &send_join(&id5, 2), Some(elsewhere)).await;
    assert_eq!(status, 400, "an event of another room: {body}");

    // Not in the room (no member now): /state_ids is 403 (spec: "The requesting host is
    // not in the room"), /event 404 as for an unknown event.
    // The room's newest event, which the template builds on.
    let latest = template["prev_events"][0].as_str().unwrap().to_owned();
    let state_ids = |at: &str| {
        format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            enc(&room),
            enc(at)
        )
    };
    let (status, body) = ask(b, a, Method::GET, &state_ids(&latest), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let event_path = format!("/_matrix/federation/v1/event/{}", enc(&latest));
    let (status, body) = ask(b, a, Method::GET, &event_path, None).await;
    assert_eq!(status, 404, "{body}");

    // The real join: state before it and its auth chain.
    let (status, answer) = ask(
        b,
        a,
        Method::PUT,
        &send_join(&event_id, 2),
        Some(join.clone()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let state = answer["state"].as_array().unwrap();
    let has = |list: &[Value], kind: &str| list.iter().any(|e| e["type"] == kind);
    assert!(
        has(state, "m.room.create") && has(state, "m.room.name"),
        "{answer}"
    );
    assert!(state.iter().any(|e| e["state_key"] == alice.user_id));
    assert!(
        !state.iter().any(|e| e["state_key"] == bob),
        "the state before the join"
    );
    let chain = answer["auth_chain"].as_array().unwrap();
    assert!(
        has(chain, "m.room.create") && has(chain, "m.room.power_levels"),
        "{answer}"
    );
    assert_eq!(answer["members_omitted"], false);
    assert_eq!(answer["servers_in_room"], json!([a.name()]));
    // Sent again (a retry), through v1: the same answer, wrapped.
    let (status, again) = ask(b, a, Method::PUT, &send_join(&event_id, 1), Some(join)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again[0], 200);
    assert_eq!(again[1]["state"].as_array().unwrap().len(), state.len());

    // A join that the room's current state refuses (the room went invite-only after the
    // template was made) is refused, and so is the same join sent again: its state is
    // never handed out.
    let carol = format!("@carol:{}", b.name());
    let (status, answer) = ask(b, a, Method::GET, &make_join(&carol, "ver=12"), None).await;
    assert_eq!(status, 200, "{answer}");
    let (late_id, late_join) = sign_join(b, version, &answer["event"]);
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/state/m.room.join_rules/", enc(&room)),
            json!({"join_rule": "invite"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for attempt in 0..2 {
        let (status, body) = ask(
            b,
            a,
            Method::PUT,
            &send_join(&late_id, 2),
            Some(late_join.clone()),
        )
        .await;
        assert_eq!(status, 403, "attempt {attempt}: {body}");
        assert!(body.get("state").is_none(), "{body}");
    }

    // A restricted room: a join naming one of a's users as its authoriser, sent without
    // make_join by a user who meets none of the conditions, is refused and not signed.
    let (_, space) = alice
        .post("/createRoom", json!({"preset": "public_chat"}))
        .await;
    let (status, restricted) = alice
        .post(
            "/createRoom",
            json!({"initial_state": [{"type": "m.room.join_rules", "content": {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": space["room_id"]}]
            }}]}),
        )
        .await;
    assert_eq!(status, 200, "{restricted}");
    let restricted = restricted["room_id"].as_str().unwrap().to_owned();
    let event_id_of = |kind: &'static str, key: String| {
        let alice = &alice;
        let restricted = restricted.clone();
        async move {
            let (_, e) = alice
                .get(&format!(
                    "/rooms/{}/state/{kind}/{}?format=event",
                    enc(&restricted),
                    enc(&key)
                ))
                .await;
            e["event_id"].as_str().unwrap().to_owned()
        }
    };
    let power = event_id_of("m.room.power_levels", String::new()).await;
    let rules = event_id_of("m.room.join_rules", String::new()).await;
    let authoriser = event_id_of("m.room.member", alice.user_id.clone()).await;
    let (_, page) = alice
        .get(&format!(
            "/rooms/{}/messages?dir=b&limit=1",
            enc(&restricted)
        ))
        .await;
    let restricted_latest = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let forged = json!({
        "room_id": restricted, "type": "m.room.member", "sender": bob, "state_key": bob,
        "content": {"membership": "join", "join_authorised_via_users_server": alice.user_id},
        "prev_events": [restricted_latest], "auth_events": [power, rules, authoriser], "depth": 50,
    });
    let (forged_id, forged) = sign_join(b, version, &forged);
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        enc(&restricted),
        enc(&forged_id)
    );
    let (status, body) = ask(b, a, Method::PUT, &path, Some(forged)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );

    // Now in the room: events, state, history and auth chains.
    let (status, body) = ask(b, a, Method::GET, &event_path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"].as_array().unwrap().len(), 1);
    let (status, body) = ask(b, a, Method::GET, &state_ids(&event_id), None).await;
    assert_eq!(status, 200, "{body}");
    let ids = body["pdu_ids"].as_array().unwrap();
    assert_eq!(ids.len(), state.len(), "the state before the join: {body}");
    assert!(!body["auth_chain_ids"].as_array().unwrap().is_empty());
    let state_path = format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        enc(&room),
        enc(&event_id)
    );
    let (status, body) = ask(b, a, Method::GET, &state_path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"].as_array().unwrap().len(), state.len());
    let backfill = format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=4",
        enc(&room),
        enc(&event_id)
    );
    let (status, body) = ask(b, a, Method::GET, &backfill, None).await;
    assert_eq!(status, 200, "{body}");
    let pdus = body["pdus"].as_array().unwrap();
    assert_eq!(pdus.len(), 4, "{body}");
    assert_eq!(pdus[0]["state_key"], bob, "the given event first");
    let depths: Vec<u64> = pdus.iter().map(|p| p["depth"].as_u64().unwrap()).collect();
    assert!(
        depths.windows(2).all(|w| w[0] > w[1]),
        "newest first: {depths:?}"
    );
    let missing = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let (status, body) = ask(
        b,
        a,
        Method::POST,
        &missing,
        Some(json!({"earliest_events": [latest], "latest_events": [event_id], "limit": 10})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Between the room's latest event when bob asked and his join: nothing was sent.
    assert_eq!(body["events"], json!([]), "{body}");
    let (status, body) = ask(
        b,
        a,
        Method::POST,
        &missing,
        Some(json!({"earliest_events": [], "latest_events": [event_id], "limit": 3})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{body}");
    assert!(
        events[0]["depth"].as_u64() < events[2]["depth"].as_u64(),
        "oldest first"
    );
    let auth = format!(
        "/_matrix/federation/v1/event_auth/{}/{}",
        enc(&room),
        enc(&event_id)
    );
    let (status, body) = ask(b, a, Method::GET, &auth, None).await;
    assert_eq!(status, 200, "{body}");
    let chain = body["auth_chain"].as_array().unwrap();
    assert!(
        has(chain, "m.room.create") && has(chain, "m.room.join_rules"),
        "{body}"
    );

    // Alice sees bob joined.
    let (status, member) = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&bob)
        ))
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["membership"], "join");
    cluster.shutdown().await;
}

/// Polls `user`'s `/messages` until a message with `body` shows (30 s at most).
async fn sees_message(user: &User, room: &str, body: &str) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        let (status, page) = user
            .get(&format!("/rooms/{}/messages?dir=b&limit=30", enc(room)))
            .await;
        if status == 200
            && page["chunk"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["content"]["body"] == body)
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn three_servers_join_one_room_and_talk() {
    let cluster = Cluster::start(3).await.unwrap();
    let (a, b, c) = (
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    );
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(c, "carol").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "three", "room_alias_name": "three"}))
        .await;

    // Bob by alias (resolved on a), carol by id through bob's server.
    let (status, body) = bob
        .post(
            &format!("/join/{}", enc(&format!("#three:{}", a.name()))),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room);
    carol.join_via(&room, b.name()).await;
    let (status, name) = carol
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
        .await;
    assert_eq!((status, &name["name"]), (200, &json!("three")), "{name}");

    // Every message reaches every server.
    for (sender, text) in [(&alice, "from a"), (&bob, "from b"), (&carol, "from c")] {
        let (status, sent) = sender
            .put(
                &format!("/rooms/{}/send/m.room.message/{}", enc(&room), enc(text)),
                json!({"msgtype": "m.text", "body": text}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
    }
    for user in [&alice, &bob, &carol] {
        for text in ["from a", "from b", "from c"] {
            assert!(
                sees_message(user, &room, text).await,
                "{} never saw {text:?}",
                user.user_id
            );
        }
        let (status, members) = user
            .get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await;
        assert_eq!(status, 200, "{members}");
        assert_eq!(
            members["joined"].as_object().unwrap().len(),
            3,
            "{}: {members}",
            user.user_id
        );
    }

    // A redaction by the room's creator of bob's message, seen redacted on every server.
    let (_, page) = bob
        .get(&format!("/rooms/{}/messages?dir=b&limit=30", enc(&room)))
        .await;
    let bobs = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "from b")
        .and_then(|e| e["event_id"].as_str())
        .unwrap()
        .to_owned();
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&bobs)),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for user in [&alice, &bob, &carol] {
        let started = std::time::Instant::now();
        loop {
            let (status, event) = user
                .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&bobs)))
                .await;
            if status == 200 && event["content"] == json!({}) {
                break;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "{} never saw the redaction: {event}",
                user.user_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // A kick of carol by the creator, across servers: bob sees it, and carol's server
    // knows she is out.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            json!({"user_id": carol.user_id, "reason": "test"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for user in [&bob, &carol] {
        let started = std::time::Instant::now();
        loop {
            let (_, rooms) = user.get("/joined_rooms").await;
            let carol_in = if user.user_id == carol.user_id {
                rooms["joined_rooms"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(room))
            } else {
                let (_, member) = user
                    .get(&format!(
                        "/rooms/{}/state/m.room.member/{}",
                        enc(&room),
                        enc(&carol.user_id)
                    ))
                    .await;
                member["membership"] != "leave"
            };
            if !carol_in {
                break;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "{} never saw the kick",
                user.user_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // Bob leaves; alice sees it.
    let (status, body) = bob
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let started = std::time::Instant::now();
    loop {
        let (_, member) = alice
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ))
            .await;
        if member["membership"] == "leave" {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "alice never saw bob leave: {member}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn another_servers_room_directory() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    for name in ["cats", "dogs"] {
        let (status, created) = alice
            .post(
                "/createRoom",
                json!({"preset": "public_chat", "visibility": "public", "name": name}),
            )
            .await;
        assert_eq!(status, 200, "{created}");
    }
    let (status, hidden) = alice
        .post(
            "/createRoom",
            json!({"preset": "public_chat", "name": "hidden"}),
        )
        .await;
    assert_eq!(status, 200, "{hidden}");
    let names = |page: &Value| -> Vec<String> {
        let mut names: Vec<String> = page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    let server = enc(a.name());
    let (status, page) = bob.get(&format!("/publicRooms?server={server}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["cats", "dogs"], "{page}");
    let (status, page) = bob
        .post(
            &format!("/publicRooms?server={server}"),
            json!({"filter": {"generic_search_term": "DOG"}}),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page), ["dogs"], "{page}");
    // Asked directly: a limit of 0 is no limit (spec: "Defaults to 0 (no limit)"), and
    // an empty `room_types` filters nothing.
    let directory = "/_matrix/federation/v1/publicRooms";
    let (status, all) = b
        .ask(a.name(), Method::GET, &format!("{directory}?limit=0"), None)
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(names(&all), ["cats", "dogs"], "{all}");
    let (status, all) = b
        .ask(
            a.name(),
            Method::POST,
            directory,
            Some(json!({"filter": {"room_types": []}})),
        )
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(names(&all), ["cats", "dogs"], "{all}");
    // Paging through another server's directory.
    let (status, first) = bob
        .get(&format!("/publicRooms?server={server}&limit=1"))
        .await;
    assert_eq!(status, 200, "{first}");
    let token = first["next_batch"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (status, second) = bob
        .get(&format!(
            "/publicRooms?server={server}&limit=1&since={}",
            enc(&token)
        ))
        .await;
    assert_eq!(status, 200, "{second}");
    let mut both = names(&first);
    both.extend(names(&second));
    both.sort();
    assert_eq!(both, ["cats", "dogs"]);
    // Without an access token we do not ask another server.
    let anonymous = reqwest::get(format!(
        "{}/_matrix/client/v3/publicRooms?server={server}",
        b.client_url()
    ))
    .await
    .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // A room found there is joined through it.
    let room = page["chunk"][0]["room_id"].as_str().unwrap().to_owned();
    let (status, body) = bob
        .post(&format!("/join/{}?via={server}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn timestamp_to_event_for_another_server() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let ask_ts = |ts: u64, dir: &str| {
        let path = format!(
            "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir={dir}",
            enc(&room)
        );
        async move { b.ask(a.name(), Method::GET, &path, None).await }
    };
    // Not joined, the room's history shared with members only: nothing is found.
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/state/m.room.history_visibility/", enc(&room)),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask_ts(u64::MAX / 2, "b").await;
    assert_eq!(status, 404, "{body}");

    bob.join_via(&room, a.name()).await;
    let (status, sent) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/t1", enc(&room)),
            json!({"msgtype": "m.text", "body": "now"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let (status, body) = ask_ts(u64::MAX / 2, "b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_id"], sent["event_id"], "{body}");
    assert!(body["origin_server_ts"].is_u64(), "{body}");
    let (status, body) = ask_ts(u64::MAX / 2, "f").await;
    assert_eq!(status, 404, "nothing after the last event: {body}");
    let (status, body) = ask_ts(0, "x").await;
    assert_eq!(status, 400, "{body}");
    cluster.shutdown().await;
}

/// `user` says "fork {n}" in `room`; answers the status.
async fn send_text(user: &User, room: &str, n: &str) -> u16 {
    let path = format!("/rooms/{}/send/m.room.message/fork{}", enc(room), enc(n));
    let body = json!({"msgtype": "m.text", "body": format!("fork {n}")});
    user.put(&path, body).await.0
}

/// `user` sets `room`'s topic; answers the status.
async fn set_topic(user: &User, room: &str, text: &str) -> u16 {
    let path = format!("/rooms/{}/state/m.room.topic/", enc(room));
    user.put(&path, json!({"topic": text})).await.0
}

/// The room's topic as `user` sees it now (`None` when they cannot read it).
async fn topic_of(user: &User, room: &str) -> Option<String> {
    let (status, topic) = user
        .get(&format!("/rooms/{}/state/m.room.topic/", enc(room)))
        .await;
    (status == 200).then(|| topic["topic"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn three_servers_converge_after_a_fork_and_catch_up_after_a_restart() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let names: Vec<String> = cluster
        .instances
        .iter()
        .map(|i| i.name().to_owned())
        .collect();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    let carol = User::register(&cluster.instances[2], "carol")
        .await
        .unwrap();
    let room = alice
        .create_room(
            json!({"preset": "public_chat", "room_version": "11", "topic": "start",
                   "power_level_content_override": {"users": {
                       alice.user_id.clone(): 100, bob.user_id.clone(): 50,
                       carol.user_id.clone(): 50}}}),
        )
        .await;
    for user in [&bob, &carol] {
        user.join_via(&room, &names[0]).await;
    }
    for user in [&alice, &bob] {
        let started = std::time::Instant::now();
        loop {
            let (_, members) = user
                .get(&format!("/rooms/{}/joined_members", enc(&room)))
                .await;
            if members["joined"].as_object().map_or(0, |m| m.len()) == 3 {
                break;
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "{}: {members}",
                user.user_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // A fork: the three change the topic and talk at the same moment, each on their own
    // server; every server ends with one topic, the same, and every message.
    let (a1, b1, c1, a2, b2, c2) = tokio::join!(
        set_topic(&alice, &room, "from a"),
        set_topic(&bob, &room, "from b"),
        set_topic(&carol, &room, "from c"),
        send_text(&alice, &room, "a"),
        send_text(&bob, &room, "b"),
        send_text(&carol, &room, "c"),
    );
    assert_eq!([a1, b1, c1, a2, b2, c2], [200; 6]);
    let started = std::time::Instant::now();
    loop {
        let mut topics = Vec::new();
        for user in [&alice, &bob, &carol] {
            topics.push(topic_of(user, &room).await);
        }
        let mut all_seen = true;
        for user in [&alice, &bob, &carol] {
            for n in ["a", "b", "c"] {
                all_seen &= sees_message(user, &room, &format!("fork {n}")).await;
            }
        }
        let same = topics.windows(2).all(|w| w[0] == w[1]);
        let settled = same && topics[0].as_deref().is_some_and(|t| t.starts_with("from "));
        if all_seen && settled {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "no convergence: topics {topics:?}, every message seen: {all_seen}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Carol's server is stopped while the others talk and change the topic; once back
    // (and heard from) it catches up on all of it.
    cluster.instances[2].stop().await;
    for n in 0..5 {
        assert_eq!(
            send_text(&alice, &room, &format!("while down {n}")).await,
            200
        );
    }
    assert_eq!(
        set_topic(&bob, &room, "changed while c was down").await,
        200
    );
    cluster.instances[2].restart().await.unwrap();
    // The client listener comes back on a new port.
    let carol = User {
        base: cluster.instances[2].client_url(),
        user_id: carol.user_id.clone(),
        token: carol.token.clone(),
        device_id: carol.device_id.clone(),
        http: carol.http.clone(),
    };
    let (status, _) = carol
        .put(
            &format!("/rooms/{}/send/m.room.message/back", enc(&room)),
            json!({"msgtype": "m.text", "body": "back"}),
        )
        .await;
    assert_eq!(status, 200);
    for n in 0..5 {
        assert!(
            sees_message(&carol, &room, &format!("fork while down {n}")).await,
            "carol never got message {n}"
        );
    }
    let started = std::time::Instant::now();
    while topic_of(&carol, &room).await.as_deref() != Some("changed while c was down") {
        assert!(
            started.elapsed().as_secs() < 30,
            "carol's topic never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(sees_message(&alice, &room, "back").await);
    assert!(sees_message(&bob, &room, "back").await);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_gap_is_asked_for_with_get_missing_events() {
    use ourwhats::services::federation::source::FromOrigin;
    use ourwhats::services::rooms::receive::MissingSource;
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&room, a.name()).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let (status, sent) = alice
            .put(
                &format!("/rooms/{}/send/m.room.message/g{n}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("gap {n}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    // B asks A for what lies between the first message and the last, as its receive
    // path does for a gap.
    let source = FromOrigin {
        federation: &b.running().services.federation,
        origin: ourwhats::core::ServerName::parse(a.name()).unwrap(),
    };
    let events = source
        .missing_events(&room, (&ids[..1], &ids[5..]), (10, 0))
        .await;
    let bodies: Vec<&str> = events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["gap 1", "gap 2", "gap 3", "gap 4"]);
    // Nothing deeper in the past than `min_depth` (what the asking server holds).
    let min_depth = events[2]["depth"].as_u64().unwrap();
    let recent = source
        .missing_events(&room, (&ids[..1], &ids[5..]), (10, min_depth))
        .await;
    let bodies: Vec<&str> = recent
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["gap 3", "gap 4"]);
    let events = source
        .missing_events(&room, (&ids[..1], &ids[5..]), (2, 0))
        .await;
    assert_eq!(events.len(), 2, "the limit is kept");
    cluster.shutdown().await;
}

#[tokio::test]
async fn send_join_with_omit_members_answers_without_most_member_events() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let mut locals = Vec::new();
    for n in 0..6 {
        locals.push(User::register(a, &format!("local{n}")).await.unwrap());
    }
    // One room with a name, one without (its heroes' member events stay).
    let named = alice
        .create_room(json!({"preset": "public_chat", "name": "lobby"}))
        .await;
    let unnamed = alice.create_room(json!({"preset": "public_chat"})).await;
    for user in &locals {
        for room in [&named, &unnamed] {
            let (status, body) = user.post(&format!("/join/{}", enc(room)), json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let version = RoomVersion::V12;
    for (n, room) in [&named, &unnamed].into_iter().enumerate() {
        let bob = format!("@bob{n}:{}", b.name());
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12",
            enc(room),
            enc(&bob)
        );
        let (status, answer) = ask(b, a, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{answer}");
        let (event_id, join) = sign_join(b, version, &answer["event"]);
        let send_join = |query: &str| {
            format!(
                "/_matrix/federation/v2/send_join/{}/{}{query}",
                enc(room),
                enc(&event_id)
            )
        };
        let (status, body) = ask(
            b,
            a,
            Method::PUT,
            &send_join("?omit_members=maybe"),
            Some(join.clone()),
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{body}"
        );
        let (status, full) = ask(b, a, Method::PUT, &send_join(""), Some(join.clone())).await;
        assert_eq!(status, 200, "{full}");
        assert_eq!(full["members_omitted"], false);
        let (status, reduced) = ask(
            b,
            a,
            Method::PUT,
            &send_join("?omit_members=true"),
            Some(join),
        )
        .await;
        assert_eq!(status, 200, "{reduced}");
        assert_eq!(reduced["members_omitted"], true, "{reduced}");
        let members = |answer: &Value| -> Vec<String> {
            answer["state"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "m.room.member")
                .map(|e| e["state_key"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(members(&full).len(), 7, "{full}");
        let kept = members(&reduced);
        if room == &named {
            assert!(kept.is_empty(), "a named room keeps no member: {kept:?}");
        } else {
            // The first five members: alice, then local0 to local3.
            let mut expected = vec![alice.user_id.clone()];
            expected.extend(locals[..4].iter().map(|u| u.user_id.clone()));
            let mut kept = kept;
            kept.sort();
            expected.sort();
            assert_eq!(kept, expected);
        }
        let others =
            |answer: &Value| answer["state"].as_array().unwrap().len() - members(answer).len();
        assert_eq!(
            others(&full),
            others(&reduced),
            "every other state event stays"
        );
        // Nothing twice: what the state holds is not repeated in the auth chain.
        let state_ids: Vec<String> = reduced["state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| event_hashes::event_id(e, version).unwrap())
            .collect();
        for event in reduced["auth_chain"].as_array().unwrap() {
            let id = event_hashes::event_id(event, version).unwrap();
            assert!(!state_ids.contains(&id), "{id} in both");
        }
        assert_eq!(reduced["servers_in_room"], json!([a.name()]));
    }
    cluster.shutdown().await;
}

/// A room with `join_rules` `content`, created by `creator` with `extra` createRoom fields.
async fn room_with_rules(creator: &User, content: Value, extra: Value) -> String {
    let mut body = json!({"initial_state": [{"type": "m.room.join_rules", "content": content}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    creator.create_room(body).await
}

/// A join of `user` (of `b`) into `room` naming `authoriser` (of `a`, joined) as its
/// authoriser, made and signed by `b` without `make_join`, sent to `a`.
async fn forged_authorised_join(
    (a, b): (&Instance, &Instance),
    authoriser: &User,
    room: &str,
    user: &str,
) -> (u16, Value) {
    let event_id_of = |kind: &'static str, key: String| async move {
        let path = format!(
            "/rooms/{}/state/{kind}/{}?format=event",
            enc(room),
            enc(&key)
        );
        let (_, e) = authoriser.get(&path).await;
        e["event_id"].as_str().unwrap().to_owned()
    };
    let power = event_id_of("m.room.power_levels", String::new()).await;
    let rules = event_id_of("m.room.join_rules", String::new()).await;
    let member = event_id_of("m.room.member", authoriser.user_id.clone()).await;
    let (_, page) = authoriser
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(room)))
        .await;
    let latest = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let join = json!({
        "room_id": room, "type": "m.room.member", "sender": user, "state_key": user,
        "content": {"membership": "join", "join_authorised_via_users_server": authoriser.user_id},
        "prev_events": [latest], "auth_events": [power, rules, member], "depth": 50,
    });
    let (id, join) = sign_join(b, RoomVersion::V12, &join);
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        enc(room),
        enc(&id)
    );
    ask(b, a, Method::PUT, &path, Some(join)).await
}

/// Spec: server-server API, "Restricted rooms". A `knock_restricted` room's user who
/// meets none of its conditions may only knock: `make_join` and a `send_join` naming one
/// of our members as authoriser are refused (403), and the join is not signed. A
/// restricted room whose rules name no room refuses every join through them (403, "no
/// conditions available"); one whose user meets a condition with none of our members
/// able to invite answers 400 `M_UNABLE_TO_GRANT_JOIN` (try another server). Met, the
/// join goes through, and the member's later profile change does not name the join's
/// authoriser again.
#[tokio::test]
async fn restricted_joins_are_refused_unless_a_condition_holds() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let space = alice.create_room(json!({"preset": "public_chat"})).await;
    let allow = json!([{"type": "m.room_membership", "room_id": space}]);
    let make_join = |room: &str| {
        format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=12&ver=11",
            enc(room),
            enc(&bob.user_id)
        )
    };
    let forbidden = |(status, body): (u16, Value)| {
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{body}"
        );
    };

    let knock_restricted = room_with_rules(
        &alice,
        json!({"join_rule": "knock_restricted", "allow": allow}),
        json!({}),
    )
    .await;
    forbidden(ask(b, a, Method::GET, &make_join(&knock_restricted), None).await);
    let answer = forged_authorised_join((a, b), &alice, &knock_restricted, &bob.user_id).await;
    forbidden(answer);

    let no_rooms = room_with_rules(
        &alice,
        json!({"join_rule": "restricted", "allow": [{"type": "m.unknown"}]}),
        json!({}),
    )
    .await;
    forbidden(ask(b, a, Method::GET, &make_join(&no_rooms), None).await);

    // Bob meets the condition from now on.
    bob.join_via(&space, a.name()).await;
    let nobody_invites = room_with_rules(
        &alice,
        json!({"join_rule": "restricted", "allow": allow}),
        // Version 11: its creator's power is the levels' (from 12 it is beyond them).
        json!({"room_version": "11", "power_level_content_override": {"invite": 101}}),
    )
    .await;
    let (status, body) = ask(b, a, Method::GET, &make_join(&nobody_invites), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_UNABLE_TO_GRANT_JOIN")),
        "{body}"
    );
    let open = room_with_rules(
        &alice,
        json!({"join_rule": "knock_restricted", "allow": allow}),
        json!({}),
    )
    .await;
    bob.join_via(&open, a.name()).await;

    // Bob's join names alice as its authoriser; his profile change there must not (it
    // would need a's signature): it reaches the room like any other.
    let (status, body) = bob
        .put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            json!({"displayname": "Bob Restricted"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let path = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(&open),
        enc(&bob.user_id)
    );
    let mut seen = Value::Null;
    for _ in 0..600 {
        seen = alice.get(&path).await.1;
        if seen["displayname"] == "Bob Restricted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen["displayname"], "Bob Restricted", "{seen}");
    assert!(
        seen.get("join_authorised_via_users_server").is_none(),
        "{seen}"
    );
    cluster.shutdown().await;
}

/// Spec: server-server API, "Restricted rooms": a resident server none of whose members
/// may invite cannot authorise a join, and the joining server "should try another
/// resident server". Our own users meet that too: b holds the room (bob is in it, with
/// no power to invite) and carol meets its condition, so her join is authorised by a
/// (alice, through `make_join`/`send_join` there), countersigned, and reaches both
/// servers. A user who meets no condition is still refused.
#[tokio::test]
async fn a_restricted_join_none_of_ours_may_authorise_goes_through_another_server() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(b, "carol").await.unwrap();
    let dave = User::register(b, "dave").await.unwrap();
    let space = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&space, a.name()).await;
    carol.join_via(&space, a.name()).await;
    let room = room_with_rules(
        &alice,
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}),
        json!({"power_level_content_override": {"invite": 50}}),
    )
    .await;
    bob.join_via(&room, a.name()).await;

    let (status, body) = carol
        .post(&format!("/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let path = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&carol.user_id)
    );
    let (status, own) = carol.get(&path).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["membership"], "join", "{own}");
    assert_eq!(
        own["join_authorised_via_users_server"],
        alice.user_id.as_str()
    );
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = alice.get(&path).await.1;
        if seen["membership"] == "join" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen["membership"], "join", "{seen}");
    assert_eq!(send_text(&carol, &room, "carol").await, 200);
    assert!(sees_message(&alice, &room, "fork carol").await);

    let (status, body) = dave.post(&format!("/join/{}", enc(&room)), json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    cluster.shutdown().await;
}

/// Joins through other servers are rate-limited per user (`rate_limits.remote_join_*`):
/// each is several federation requests and a room's state to check. Past the burst, 429
/// `M_LIMIT_EXCEEDED` with the wait; joins of rooms we are in are not counted.
#[tokio::test]
async fn joins_through_other_servers_are_rate_limited() {
    let cluster = Cluster::start_with(2, |i, config| {
        if i == 1 {
            config.rate_limits.enabled = true;
            config.rate_limits.remote_join_per_minute = 1;
            config.rate_limits.remote_join_burst = 1;
        }
    })
    .await
    .unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(b, "carol").await.unwrap();
    let first = alice.create_room(json!({"preset": "public_chat"})).await;
    let second = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&first, a.name()).await;
    let join = |room: &str| format!("/join/{}?via={}", enc(room), a.name());
    let (status, body) = bob.post(&join(&second), json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED")),
        "{body}"
    );
    assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    // Carol joins the room bob brought us into: no other server is needed.
    let (status, body) = carol.post(&join(&first), json!({})).await;
    assert_eq!(status, 200, "{body}");
    cluster.shutdown().await;
}

//! What the client API does with members of other servers: the user directory, search,
//! unread counts, profile changes fanned out, power given to a remote user and used, and
//! a room upgrade the remote member follows. Two real instances over TLS.

use std::time::{Duration, Instant};

use federation_tests::{enc, Cluster, User};
use serde_json::{json, Value};

/// Polls `check` on `path` as `user` until it holds, or 30 s pass; answers the last body.
async fn wait_for(user: &User, path: &str, check: impl Fn(u16, &Value) -> bool) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(30) {
        let (status, body) = user.get(path).await;
        if check(status, &body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}: {path} never satisfied the check: {last}", user.user_id);
}

#[tokio::test]
async fn remote_members_in_directory_search_counts_profiles_power_and_upgrades() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "mixed"}))
        .await;
    bob.join_via(&room, a.name()).await;

    // Bob's message: alice finds it with search, and it counts as unread for her.
    let (status, sent) = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/m1", enc(&room)),
            json!({"msgtype": "m.text", "body": "a remote pineapple"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let search = json!({"search_categories": {"room_events": {"search_term": "pineapple"}}});
    let started = Instant::now();
    let found = loop {
        let (status, body) = alice.post("/search", search.clone()).await;
        assert_eq!(status, 200, "{body}");
        let results = &body["search_categories"]["room_events"]["results"];
        if results.as_array().is_some_and(|r| !r.is_empty()) || started.elapsed().as_secs() > 30 {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let results = &found["search_categories"]["room_events"];
    assert_eq!(results["count"], 1, "{found}");
    assert_eq!(
        results["results"][0]["result"]["event_id"],
        sent["event_id"]
    );
    let synced = alice
        .sync_until(|s| {
            s["rooms"]["join"][&room]["unread_notifications"]["notification_count"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        })
        .await;
    assert!(
        synced.is_some(),
        "bob's message never counted as unread for alice"
    );

    // The user directory finds the remote room mate.
    let (status, directory) = alice
        .post("/user_directory/search", json!({"search_term": "bob"}))
        .await;
    assert_eq!(status, 200, "{directory}");
    assert!(
        directory["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == bob.user_id),
        "{directory}"
    );

    // Bob's new display name reaches alice's member list.
    let (status, body) = bob
        .put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            json!({"displayname": "Bob Remote"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let member_path = format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&bob.user_id)
    );
    wait_for(&alice, &member_path, |status, c| {
        status == 200 && c["displayname"] == "Bob Remote"
    })
    .await;
    let (status, directory) = alice
        .post("/user_directory/search", json!({"search_term": "remote"}))
        .await;
    assert_eq!(status, 200, "{directory}");
    assert_eq!(
        directory["results"][0]["user_id"], bob.user_id,
        "{directory}"
    );

    // Power given to bob on a, used from b: his name change is seen on a.
    let levels_path = format!("/rooms/{}/state/m.room.power_levels/", enc(&room));
    let (status, mut levels) = alice.get(&levels_path).await;
    assert_eq!(status, 200, "{levels}");
    levels["users"][&bob.user_id] = json!(100);
    let (status, body) = alice.put(&levels_path, levels).await;
    assert_eq!(status, 200, "{body}");
    wait_for(&bob, &levels_path, |status, l| {
        status == 200 && l["users"][&bob.user_id] == 100
    })
    .await;
    let name_path = format!("/rooms/{}/state/m.room.name/", enc(&room));
    let (status, body) = bob.put(&name_path, json!({"name": "renamed by bob"})).await;
    assert_eq!(status, 200, "{body}");
    wait_for(&alice, &name_path, |status, n| {
        status == 200 && n["name"] == "renamed by bob"
    })
    .await;

    // Bob gives the room an alias of b's and lists it in b's directory.
    let alias = format!("#mixed:{}", b.name());
    let (status, body) = bob
        .put(
            &format!("/directory/room/{}", enc(&alias)),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob
        .put(
            &format!("/directory/list/room/{}", enc(&room)),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Alice upgrades the room: bob sees the tombstone and follows it into the new room
    // (through a), keeping his power there.
    let (status, upgraded) = alice
        .post(
            &format!("/rooms/{}/upgrade", enc(&room)),
            json!({"new_version": "11"}),
        )
        .await;
    assert_eq!(status, 200, "{upgraded}");
    let new_room = upgraded["replacement_room"].as_str().unwrap().to_owned();
    let tombstone_path = format!("/rooms/{}/state/m.room.tombstone/", enc(&room));
    let tombstone = wait_for(&bob, &tombstone_path, |status, _| status == 200).await;
    assert_eq!(tombstone["replacement_room"], new_room);
    bob.join_via(&new_room, a.name()).await;
    let (status, create) = bob
        .get(&format!("/rooms/{}/state/m.room.create/", enc(&new_room)))
        .await;
    assert_eq!(status, 200, "{create}");
    assert_eq!(create["predecessor"]["room_id"], room, "{create}");
    let (status, levels) = bob
        .get(&format!(
            "/rooms/{}/state/m.room.power_levels/",
            enc(&new_room)
        ))
        .await;
    assert_eq!(status, 200, "{levels}");
    assert_eq!(levels["users"][&bob.user_id], 100, "{levels}");
    let (status, name) = bob
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&new_room)))
        .await;
    assert_eq!((status, &name["name"]), (200, &json!("renamed by bob")));
    // b's alias and directory listing moved with b's first member to join the new room
    // (a moved its own when alice upgraded).
    let (status, target) = bob.get(&format!("/directory/room/{}", enc(&alias))).await;
    assert_eq!(
        (status, &target["room_id"]),
        (200, &json!(new_room)),
        "{target}"
    );
    for (listed, visibility) in [(&new_room, "public"), (&room, "private")] {
        let (_, body) = bob
            .get(&format!("/directory/list/room/{}", enc(listed)))
            .await;
        assert_eq!(body["visibility"], visibility, "{listed}: {body}");
    }
    cluster.shutdown().await;
}

/// A room joined through another server, unnamed: its summary's heroes are its members
/// (the member events came in the join's answer, held without a place of ours), up to
/// five, not one of them.
#[tokio::test]
async fn heroes_of_a_room_joined_through_another_server() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    let mut expected = vec![bob.user_id.clone()];
    for name in ["carol", "dave"] {
        let member = User::register(b, name).await.unwrap();
        let (status, body) = member
            .post(&format!("/join/{}", enc(&room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        expected.push(member.user_id);
    }
    alice.join_via(&room, b.name()).await;
    let (status, sync) = alice.get("/sync?timeout=0").await;
    assert_eq!(status, 200, "{sync}");
    let summary = &sync["rooms"]["join"][&room]["summary"];
    let mut heroes: Vec<String> = summary["m.heroes"]
        .as_array()
        .unwrap_or_else(|| panic!("{summary}"))
        .iter()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    heroes.sort();
    expected.sort();
    assert_eq!(heroes, expected, "{summary}");
    assert_eq!(summary["m.joined_member_count"], 4, "{summary}");
    cluster.shutdown().await;
}

/// A redaction made and signed by `b` as `sender` (of `b`) in `room` on `a`, redacting
/// `target`, built on the room's latest event there.
fn remote_redaction(
    (a, b): (&federation_tests::Instance, &federation_tests::Instance),
    room: &str,
    sender: &str,
    target: &str,
) -> (String, Value) {
    use ourwhats::core::pdu::{self, PduTemplate};
    let store = a.running().services.rooms.store();
    let record = store.room(room).unwrap().unwrap().record;
    let state_id = |kind: &str, key: &str| {
        store
            .state_event(record.state, kind, key)
            .unwrap()
            .unwrap()
            .event_id
    };
    let template = PduTemplate {
        room_id: Some(room.to_owned()),
        sender: sender.to_owned(),
        kind: "m.room.redaction".into(),
        state_key: None,
        content: json!({"redacts": target}),
        prev_events: record.extremities.clone(),
        auth_events: vec![
            state_id("m.room.power_levels", ""),
            state_id("m.room.member", sender),
        ],
        depth: record.depth + 1,
        origin_server_ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        redacts: Some(target.to_owned()),
    };
    let key = &b.running().services.signing_key;
    let built = pdu::build(ourwhats::core::RoomVersion::V12, template, b.name(), key).unwrap();
    (built.event_id, built.pdu)
}

/// Spec: room versions 3 and later, "Handling redactions": a redaction is not sent to
/// clients until the event it redacts has been received and the redaction validated. A
/// remote member without the power to redact another server's message, and a
/// redaction of an event the server does not hold, are accepted into the room but never
/// shown (the message keeps its content); a member redacting their own message is
/// shown the redaction like any other.
#[tokio::test]
async fn a_remote_redaction_reaches_clients_only_once_it_applies() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&room, a.name()).await;
    let (status, sent) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/keep", enc(&room)),
            json!({"msgtype": "m.text", "body": "keep me"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let kept = sent["event_id"].as_str().unwrap().to_owned();

    let unpowered = remote_redaction((a, b), &room, &bob.user_id, &kept);
    let path = "/_matrix/federation/v1/send/unpowered";
    let body = json!({"origin": b.name(), "origin_server_ts": 1, "pdus": [unpowered.1]});
    let (status, answer) = b
        .ask(a.name(), reqwest::Method::PUT, path, Some(body))
        .await;
    assert_eq!(
        (status, &answer["pdus"][&unpowered.0]),
        (200, &json!({})),
        "{answer}"
    );
    let unknown = remote_redaction((a, b), &room, &bob.user_id, "$not-here");
    let path = "/_matrix/federation/v1/send/unknown-target";
    let body = json!({"origin": b.name(), "origin_server_ts": 2, "pdus": [unknown.1]});
    let (status, answer) = b
        .ask(a.name(), reqwest::Method::PUT, path, Some(body))
        .await;
    assert_eq!(
        (status, &answer["pdus"][&unknown.0]),
        (200, &json!({})),
        "{answer}"
    );

    let event = |id: &str| format!("/rooms/{}/event/{}", enc(&room), enc(id));
    let (status, body) = alice.get(&event(&kept)).await;
    assert_eq!(
        (status, &body["content"]["body"]),
        (200, &json!("keep me")),
        "{body}"
    );
    for withheld in [&unpowered.0, &unknown.0] {
        let (status, body) = alice.get(&event(withheld)).await;
        assert_eq!(status, 404, "{body}");
    }
    let redactions_in = |page: &Value| {
        page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.redaction")
            .count()
    };
    let messages = format!("/rooms/{}/messages?dir=b&limit=50", enc(&room));
    let (status, page) = alice.get(&messages).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(redactions_in(&page), 0, "{page}");
    let (status, sync) = alice.get("/sync?timeout=0").await;
    assert_eq!(status, 200, "{sync}");
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        !timeline
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.room.redaction"),
        "{timeline}"
    );

    // Bob's own message, redacted by him: shown.
    let (status, sent) = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/mine", enc(&room)),
            json!({"msgtype": "m.text", "body": "oops"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let mine = sent["event_id"].as_str().unwrap().to_owned();
    wait_for(&alice, &event(&mine), |status, _| status == 200).await;
    let (status, body) = bob
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&mine)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for(&alice, &messages, |_, page| redactions_in(page) == 1).await;
    let (_, body) = alice.get(&event(&mine)).await;
    assert_eq!(body["content"], json!({}), "{body}");
    cluster.shutdown().await;
}

/// The user directory finds the members of public rooms our server is in, and forgets
/// those of a room our last member left (their membership there is no longer followed).
#[tokio::test]
async fn the_directory_forgets_a_public_room_we_left() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let carol = User::register(a, "carol").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    alice.join_via(&room, b.name()).await;
    let finds_bob = || async {
        let (status, directory) = carol
            .post("/user_directory/search", json!({"search_term": "bob"}))
            .await;
        assert_eq!(status, 200, "{directory}");
        directory["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == bob.user_id)
    };
    assert!(finds_bob().await, "a member of a public room we are in");
    let (status, body) = alice
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!finds_bob().await, "a member of a room we left");
    cluster.shutdown().await;
}

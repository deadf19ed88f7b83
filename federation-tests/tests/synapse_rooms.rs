//! Rooms shared with a real Synapse (1.163.2 from PyPI): a Synapse user joins a room on
//! ourwhats (`make_join`/`send_join` answered here), and messages and state go both ways
//! (our events through our federation sender, Synapse's through `/send` and the receipt
//! checks), and history before a join backfilled both ways. Rooms of version 10, 11 and
//! 12.

use std::time::{Duration, Instant};

use federation_tests::synapse::Synapse;
use federation_tests::{enc, Cluster, User};
use serde_json::{json, Value};

/// Polls `user`'s `/messages` (newest first) until an `m.room.message` with `body` shows,
/// or 30 s pass; answers the event.
async fn wait_for_message(user: &User, room: &str, body: &str) -> Option<Value> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let (status, page) = user
            .get(&format!("/rooms/{}/messages?dir=b&limit=20", enc(room)))
            .await;
        if status == 200 {
            let found = page["chunk"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["type"] == "m.room.message" && e["content"]["body"] == body);
            if let Some(event) = found {
                return Some(event.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Polls a state event until `check` holds on its content, or 30 s pass.
async fn wait_for_state(
    user: &User,
    room: &str,
    (kind, key): (&str, &str),
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < Duration::from_secs(30) {
        let (status, content) = user
            .get(&format!("/rooms/{}/state/{kind}/{}", enc(room), enc(key)))
            .await;
        if status == 200 && check(&content) {
            return content;
        }
        last = content;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// `user`'s current `/sync` token.
async fn sync_token(user: &User) -> String {
    let filter = enc(r#"{"room":{"timeline":{"limit":1}}}"#);
    let (status, body) = user.get(&format!("/sync?timeout=0&filter={filter}")).await;
    assert_eq!(status, 200, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}

/// Follows `user`'s `/sync` from `since` until an ephemeral event of `room` satisfies
/// `check`, or 30 s pass.
async fn wait_for_ephemeral(
    user: &User,
    room: &str,
    since: String,
    check: impl Fn(&Value) -> bool,
) -> bool {
    let mut since = since;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let (status, body) = user
            .get(&format!("/sync?timeout=1000&since={}", enc(&since)))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["rooms"]["join"][room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(&check)
        {
            return true;
        }
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
    }
    false
}

/// Typing and read receipts both ways between `ours` and `theirs` in `room`, on the
/// messages `our_event` and `their_event`.
async fn typing_and_receipts_both_ways(
    (ours, theirs): (&User, &User),
    room: &str,
    (our_event, their_event): (&str, &str),
    synapse: &Synapse,
) {
    for (typist, watcher) in [(ours, theirs), (theirs, ours)] {
        let since = sync_token(watcher).await;
        let (status, body) = typist
            .put(
                &format!("/rooms/{}/typing/{}", enc(room), enc(&typist.user_id)),
                json!({"typing": true, "timeout": 20000}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let typing = wait_for_ephemeral(watcher, room, since, |e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.contains(&json!(typist.user_id)))
        })
        .await;
        assert!(
            typing,
            "{} never saw {} typing\n{}",
            watcher.user_id,
            typist.user_id,
            synapse.log_tail()
        );
    }
    for (reader, watcher, event) in [(ours, theirs, their_event), (theirs, ours, our_event)] {
        let since = sync_token(watcher).await;
        let (status, body) = reader
            .post(
                &format!("/rooms/{}/receipt/m.read/{}", enc(room), enc(event)),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let read = wait_for_ephemeral(watcher, room, since, |e| {
            e["type"] == "m.receipt" && e["content"][event]["m.read"].get(&reader.user_id).is_some()
        })
        .await;
        assert!(
            read,
            "{} never saw {}'s receipt\n{}",
            watcher.user_id,
            reader.user_id,
            synapse.log_tail()
        );
    }
}

#[tokio::test]
async fn a_synapse_user_joins_our_room_and_both_talk() {
    let cluster = Cluster::start(1).await.unwrap();
    let ours = &cluster.instances[0];
    let synapse = Synapse::start(&cluster.ca).await.unwrap();
    let alice = User::register(ours, "alice").await.unwrap();
    let sam = User::register_at(&synapse.client_url, "sam").await.unwrap();

    for version in ["1", "2", "3", "5", "10", "11", "12"] {
        let room = alice
            .create_room(json!({"preset": "public_chat", "room_version": version, "name": "ours"}))
            .await;
        let (status, sent) = alice
            .put(
                &format!("/rooms/{}/send/m.room.message/h{version}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("history v{version}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");

        // Synapse joins through us: make_join, then send_join.
        let (status, joined) = sam
            .post(
                &format!("/join/{}?server_name={}", enc(&room), enc(ours.name())),
                json!({}),
            )
            .await;
        assert_eq!(
            status,
            200,
            "v{version}: Synapse joining our room: {joined}\n{}",
            synapse.log_tail()
        );
        let member = wait_for_state(&alice, &room, ("m.room.member", &sam.user_id), |c| {
            c["membership"] == "join"
        })
        .await;
        assert_eq!(member["membership"], "join", "v{version}: {member}");
        let (_, name) = sam
            .get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
            .await;
        assert_eq!(name["name"], "ours", "v{version}: Synapse has the state");
        // Synapse joins with `omit_members` (a partial-state join: our answer leaves the
        // member events out) and then resyncs the room's full state from us.
        let started = Instant::now();
        let resynced = format!("State resync complete for {room}");
        while !synapse.log_contains(&resynced) && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            synapse.log_contains(&resynced),
            "v{version}: Synapse's state resync never ended\n{}",
            synapse.log_tail()
        );
        let (status, members) = sam
            .get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await;
        assert_eq!(status, 200, "{members}");
        assert!(members["joined"].get(&alice.user_id).is_some(), "{members}");
        // History from before the join (shared with members) reaches Synapse's client:
        // Synapse backfills it from us (our /backfill, under the visibility rules).
        let seen = wait_for_message(&sam, &room, &format!("history v{version}")).await;
        assert!(
            seen.is_some(),
            "v{version}: Synapse never showed the history before its join\n{}",
            synapse.log_tail()
        );

        // Ours to Synapse, through our sender.
        let (status, sent) = alice
            .put(
                &format!("/rooms/{}/send/m.room.message/o{version}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("hello from ourwhats v{version}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let seen = wait_for_message(&sam, &room, &format!("hello from ourwhats v{version}")).await;
        assert!(
            seen.is_some(),
            "v{version}: Synapse never showed our message\n{}",
            synapse.log_tail()
        );
        assert_eq!(seen.unwrap()["event_id"], sent["event_id"]);
        let our_event = sent["event_id"].as_str().unwrap().to_owned();

        // Synapse's to ours, through /send.
        let (status, sent) = sam
            .put(
                &format!("/rooms/{}/send/m.room.message/s{version}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("hello from Synapse v{version}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let seen = wait_for_message(&alice, &room, &format!("hello from Synapse v{version}")).await;
        assert!(
            seen.is_some(),
            "v{version}: we never showed Synapse's message\n{}",
            synapse.log_tail()
        );
        assert_eq!(seen.unwrap()["event_id"], sent["event_id"]);
        if version == "12" {
            let their_event = sent["event_id"].as_str().unwrap();
            typing_and_receipts_both_ways(
                (&alice, &sam),
                &room,
                (&our_event, their_event),
                &synapse,
            )
            .await;
        }

        // State: our creator renames the room, and Synapse shows the new name.
        let (status, body) = alice
            .put(
                &format!("/rooms/{}/state/m.room.name/", enc(&room)),
                json!({"name": format!("renamed v{version}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let renamed = wait_for_state(&sam, &room, ("m.room.name", ""), |c| {
            c["name"] == format!("renamed v{version}")
        })
        .await;
        assert_eq!(
            renamed["name"],
            format!("renamed v{version}"),
            "v{version}\n{}",
            synapse.log_tail()
        );

        if version == "12" {
            // A profile change on Synapse reaches our member list; Synapse's user redacts
            // their own message and we show it redacted.
            let (status, body) = sam
                .put(
                    &format!("/profile/{}/displayname", enc(&sam.user_id)),
                    json!({"displayname": "Sam of Synapse"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let member = wait_for_state(&alice, &room, ("m.room.member", &sam.user_id), |c| {
                c["displayname"] == "Sam of Synapse"
            })
            .await;
            assert_eq!(
                member["displayname"],
                "Sam of Synapse",
                "{member}\n{}",
                synapse.log_tail()
            );
            let their_event = sent["event_id"].as_str().unwrap();
            let (status, body) = sam
                .put(
                    &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(their_event)),
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let started = Instant::now();
            loop {
                let (status, event) = alice
                    .get(&format!("/rooms/{}/event/{}", enc(&room), enc(their_event)))
                    .await;
                if status == 200 && event["content"] == json!({}) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the redaction never came: {event}\n{}",
                    synapse.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        // Synapse's user leaves: the leave comes through /send.
        let (status, body) = sam
            .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let member = wait_for_state(&alice, &room, ("m.room.member", &sam.user_id), |c| {
            c["membership"] == "leave"
        })
        .await;
        assert_eq!(member["membership"], "leave", "v{version}: {member}");

        if version == "12" {
            // Our creator bans Synapse's user (no longer joined: the ban is sent to the
            // banned user's server as the member event's target); joining again is refused.
            let (status, body) = alice
                .post(
                    &format!("/rooms/{}/ban", enc(&room)),
                    json!({"user_id": sam.user_id, "reason": "test"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let (status, body) = sam
                .post(
                    &format!("/join/{}?server_name={}", enc(&room), enc(ours.name())),
                    json!({}),
                )
                .await;
            assert_eq!(status, 403, "a banned user joining again: {body}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn we_join_a_synapse_room_and_both_talk() {
    let cluster = Cluster::start(1).await.unwrap();
    let ours = &cluster.instances[0];
    let synapse = Synapse::start(&cluster.ca).await.unwrap();
    let alice = User::register(ours, "alice").await.unwrap();
    let sam = User::register_at(&synapse.client_url, "sam").await.unwrap();

    for version in ["1", "2", "3", "5", "10", "11", "12"] {
        let alias_name = format!("lobby{version}");
        let room = sam
            .create_room(
                json!({"preset": "public_chat", "room_version": version, "name": "theirs",
                       "room_alias_name": alias_name}),
            )
            .await;
        let (status, _) = sam
            .put(
                &format!("/rooms/{}/send/m.room.message/before", enc(&room)),
                json!({"msgtype": "m.text", "body": "before the join"}),
            )
            .await;
        assert_eq!(status, 200);
        if version == "12" {
            // History longer than one backfill: the later backfills start from events
            // whose prev events we lack, and ask Synapse for the state there.
            for n in 0..15 {
                let (status, _) = sam
                    .put(
                        &format!("/rooms/{}/send/m.room.message/more{n}", enc(&room)),
                        json!({"msgtype": "m.text", "body": format!("more {n}")}),
                    )
                    .await;
                assert_eq!(status, 200);
            }
        }

        // Through the alias (v10) or by id with `via` (v11, v12).
        let target = if version == "10" {
            format!(
                "/join/{}",
                enc(&format!("#{alias_name}:{}", synapse.server_name))
            )
        } else {
            format!("/join/{}?via={}", enc(&room), enc(&synapse.server_name))
        };
        let (status, joined) = alice.post(&target, json!({})).await;
        assert_eq!(
            status,
            200,
            "v{version}: joining Synapse's room: {joined}\n{}",
            synapse.log_tail()
        );
        assert_eq!(joined["room_id"], room);
        let (status, name) = alice
            .get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
            .await;
        assert_eq!(
            (status, &name["name"]),
            (200, &json!("theirs")),
            "v{version}: {name}"
        );
        let member = wait_for_state(&sam, &room, ("m.room.member", &alice.user_id), |c| {
            c["membership"] == "join"
        })
        .await;
        assert_eq!(member["membership"], "join", "v{version}: {member}");
        let (status, members) = alice
            .get(&format!("/rooms/{}/joined_members", enc(&room)))
            .await;
        assert_eq!(status, 200, "{members}");
        assert!(members["joined"].get(&sam.user_id).is_some(), "{members}");

        // What Synapse's room held before our join is backfilled from Synapse as our user
        // pages back, down to the room's creation.
        let (history, _) = alice.page_back(&room, 3).await;
        let before = history
            .iter()
            .position(|e| e["content"]["body"] == "before the join");
        let create = history.iter().position(|e| e["type"] == "m.room.create");
        assert!(
            matches!((before, create), (Some(b), Some(c)) if b < c && c == history.len() - 1),
            "v{version}: {history:?}\n{}",
            synapse.log_tail()
        );
        let more: Vec<&str> = history
            .iter()
            .filter_map(|e| e["content"]["body"].as_str())
            .filter(|b| b.starts_with("more "))
            .collect();
        let expected: Vec<String> = (0..15).rev().map(|n| format!("more {n}")).collect();
        if version == "12" {
            assert_eq!(more, expected, "v{version}");
        }

        // Synapse's message to us, then ours to Synapse.
        let (status, sent) = sam
            .put(
                &format!("/rooms/{}/send/m.room.message/s{version}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("welcome v{version}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let seen = wait_for_message(&alice, &room, &format!("welcome v{version}")).await;
        assert!(
            seen.is_some(),
            "v{version}: Synapse's message never came\n{}",
            synapse.log_tail()
        );
        // Rooms before v6 do not enforce canonical JSON: Synapse takes floats there and
        // hashes them as Python writes them; we must take the event as it is.
        if ["3", "5"].contains(&version) {
            let floats = json!({"msgtype": "m.text", "body": format!("floats v{version}"),
                                "x": 1.5, "y": 1e16, "z": 100.0, "w": 0.00001});
            let (status, sent) = sam
                .put(
                    &format!("/rooms/{}/send/m.room.message/f{version}", enc(&room)),
                    floats,
                )
                .await;
            assert_eq!(status, 200, "{sent}");
            let seen = wait_for_message(&alice, &room, &format!("floats v{version}")).await;
            let seen = seen.unwrap_or_else(|| {
                panic!(
                    "v{version}: Synapse's floats never came\n{}",
                    synapse.log_tail()
                )
            });
            assert_eq!(seen["event_id"], sent["event_id"]);
            assert_eq!(seen["content"]["x"], 1.5, "v{version}: {seen}");
            assert_eq!(seen["content"]["y"], 1e16, "v{version}: {seen}");
        }
        let (status, sent) = alice
            .put(
                &format!("/rooms/{}/send/m.room.message/o{version}", enc(&room)),
                json!({"msgtype": "m.text", "body": format!("thanks v{version}")}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let seen = wait_for_message(&sam, &room, &format!("thanks v{version}")).await;
        assert!(
            seen.is_some(),
            "v{version}: our message never reached Synapse\n{}",
            synapse.log_tail()
        );

        // Our user leaves.
        let (status, body) = alice
            .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let member = wait_for_state(&sam, &room, ("m.room.member", &alice.user_id), |c| {
            c["membership"] == "leave"
        })
        .await;
        assert_eq!(member["membership"], "leave", "v{version}: {member}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn we_invite_a_synapse_user_who_joins() {
    let cluster = Cluster::start(1).await.unwrap();
    let ours = &cluster.instances[0];
    let synapse = Synapse::start(&cluster.ca).await.unwrap();
    let alice = User::register(ours, "alice").await.unwrap();
    let sam = User::register_at(&synapse.client_url, "sam").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "just us", "is_direct": true}))
        .await;
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": sam.user_id}),
        )
        .await;
    assert_eq!(
        status,
        200,
        "inviting Synapse's user: {body}\n{}",
        synapse.log_tail()
    );

    // Synapse shows the invite with the room's name.
    let started = Instant::now();
    loop {
        let (status, body) = sam.get("/sync?timeout=1000").await;
        assert_eq!(status, 200, "{body}");
        let invite = &body["rooms"]["invite"][&room]["invite_state"]["events"];
        if let Some(events) = invite.as_array() {
            assert!(
                events
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "just us"),
                "{invite}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no invite on Synapse\n{}",
            synapse.log_tail()
        );
    }

    // Accepting it: Synapse joins through us; then a message reaches Synapse's user.
    let (status, body) = sam
        .post(
            &format!("/join/{}?server_name={}", enc(&room), enc(ours.name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail());
    let member = wait_for_state(&alice, &room, ("m.room.member", &sam.user_id), |c| {
        c["membership"] == "join"
    })
    .await;
    assert_eq!(member["membership"], "join", "{member}");
    let (status, _) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/dm1", enc(&room)),
            json!({"msgtype": "m.text", "body": "hi sam"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        wait_for_message(&sam, &room, "hi sam").await.is_some(),
        "{}",
        synapse.log_tail()
    );
    cluster.shutdown().await;
}

/// Waits until `user`'s `/sync` shows `room` in `rooms.{section}`; answers that part.
async fn sync_shows(user: &User, section: &str, room: &str, synapse: &Synapse) -> Value {
    let body = user
        .sync_until(|b| b["rooms"][section].get(room).is_some())
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} never saw {room} in rooms.{section}\n{}",
                user.user_id,
                synapse.log_tail()
            )
        });
    body["rooms"][section][room].clone()
}

#[tokio::test]
async fn invites_knocks_and_directories_with_synapse_both_ways() {
    let cluster = Cluster::start(1).await.unwrap();
    let ours = &cluster.instances[0];
    let synapse = Synapse::start(&cluster.ca).await.unwrap();
    let alice = User::register(ours, "alice").await.unwrap();
    let sam = User::register_at(&synapse.client_url, "sam").await.unwrap();
    let has_name = |part: &Value, key: &str, name: &str| {
        part[key]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name)
    };

    // Synapse invites our user (createRoom's invite list, v12); she rejects it through
    // Synapse (our make_leave/send_leave).
    let (status, created) = sam
        .post(
            "/createRoom",
            json!({"preset": "private_chat", "room_version": "12", "name": "sam's",
                   "invite": [alice.user_id]}),
        )
        .await;
    assert_eq!(status, 200, "{created}\n{}", synapse.log_tail());
    let room = created["room_id"].as_str().unwrap().to_owned();
    let invite = sync_shows(&alice, "invite", &room, &synapse).await;
    assert!(has_name(&invite, "invite_state", "sam's"), "{invite}");
    let (status, body) = alice
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail());
    let member = wait_for_state(&sam, &room, ("m.room.member", &alice.user_id), |c| {
        c["membership"] == "leave"
    })
    .await;
    assert_eq!(member["membership"], "leave", "{member}");

    // Invited by /invite to a v11 room, she accepts with a join that names no server.
    let room = sam
        .create_room(json!({"preset": "private_chat", "room_version": "11", "name": "second"}))
        .await;
    let (status, body) = sam
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail());
    sync_shows(&alice, "invite", &room, &synapse).await;
    let (status, body) = alice
        .post(&format!("/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail());
    let member = wait_for_state(&sam, &room, ("m.room.member", &alice.user_id), |c| {
        c["membership"] == "join"
    })
    .await;
    assert_eq!(member["membership"], "join", "{member}");

    // A new device of hers, with its keys, is told to Synapse (m.device_list_update),
    // whose user then finds it in a key query.
    let since = sync_token(&sam).await;
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/_matrix/client/v3/login", alice.base))
        .json(
            &json!({"type": "m.login.password", "password": "correct horse battery",
                      "identifier": {"type": "m.id.user", "user": alice.user_id},
                      "initial_device_display_name": "second phone"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = login["device_id"].as_str().expect("a device").to_owned();
    let token = login["access_token"].as_str().expect("a token").to_owned();
    let key = ourwhats::core::SigningKeyPair::from_seed(&[9; 32], &device);
    let mut device_keys = json!({
        "user_id": alice.user_id,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
            format!("ed25519:{device}"): key.public_key_base64()
        }
    });
    ourwhats::core::signatures::sign_json(&mut device_keys, &alice.user_id, &key).unwrap();
    let uploaded = http
        .post(format!("{}/_matrix/client/v3/keys/upload", alice.base))
        .bearer_auth(&token)
        .json(&json!({"device_keys": device_keys}))
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 200);
    let mut since = since;
    let started = Instant::now();
    let mut changed = false;
    loop {
        let (status, body) = sam
            .get(&format!("/sync?timeout=1000&since={}", enc(&since)))
            .await;
        assert_eq!(status, 200, "{body}");
        changed |= body["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &alice.user_id));
        let (_, keys) = sam
            .post(
                "/keys/query",
                json!({"device_keys": {alice.user_id.clone(): []}}),
            )
            .await;
        if changed && keys["device_keys"][&alice.user_id][&device].is_object() {
            assert_eq!(
                keys["device_keys"][&alice.user_id][&device]["unsigned"]["device_display_name"],
                "second phone",
                "{keys}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Synapse never learnt alice's new device: {keys}\n{}",
            synapse.log_tail()
        );
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
    }

    // And the other way: Synapse's user's device list, fetched once by our server (`GET
    // /user/devices`) and kept; his new device then reaches the kept list through
    // Synapse's m.device_list_update (or, after a gap, a fetch again).
    let sams_devices = |want: Vec<String>| {
        let alice = alice.clone();
        let sam_id = sam.user_id.clone();
        async move {
            let started = Instant::now();
            loop {
                let (status, keys) = alice
                    .post("/keys/query", json!({"device_keys": {sam_id.clone(): []}}))
                    .await;
                assert_eq!(status, 200, "{keys}");
                let mut have: Vec<String> = keys["device_keys"][&sam_id]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                have.sort();
                if have == want || started.elapsed() > Duration::from_secs(30) {
                    return have;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    sam.upload_device_keys(11).await;
    // Synapse's updates for sam's login and key upload may reach us during or after our
    // first fetch: the list is then kept stale (a gap it cannot follow) and the next
    // query fetches it again. Once they have all come, a query leaves a fresh list kept.
    let started = Instant::now();
    loop {
        assert_eq!(
            sams_devices(vec![sam.device_id.clone()]).await,
            vec![sam.device_id.clone()]
        );
        let kept = ours
            .running()
            .services
            .remote_device_lists
            .get(&sam.user_id)
            .unwrap();
        if kept.is_some_and(|l| !l.stale) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "our server keeps sam's list"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sams_phone = sam.login_another_device().await.unwrap();
    sams_phone.upload_device_keys(12).await;
    let mut both = vec![sam.device_id.clone(), sams_phone.device_id.clone()];
    both.sort();
    assert_eq!(
        sams_devices(both.clone()).await,
        both,
        "our server never learnt sam's new device\n{}",
        synapse.log_tail()
    );

    // Our createRoom invites Synapse's user, who rejects it through us.
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "alice's", "invite": [sam.user_id]}))
        .await;
    let invite = sync_shows(&sam, "invite", &room, &synapse).await;
    assert!(has_name(&invite, "invite_state", "alice's"), "{invite}");
    let (status, body) = sam
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.log_tail());
    let member = wait_for_state(&alice, &room, ("m.room.member", &sam.user_id), |c| {
        c["membership"] == "leave"
    })
    .await;
    assert_eq!(member["membership"], "leave", "{member}");

    // Knocks both ways, each let in with an invite.
    let knock_rule = json!([{"type": "m.room.join_rules", "state_key": "",
                             "content": {"join_rule": "knock"}}]);
    let our_room = alice
        .create_room(
            json!({"preset": "private_chat", "name": "our door", "initial_state": knock_rule}),
        )
        .await;
    let their_room = sam
        .create_room(
            json!({"preset": "private_chat", "room_version": "12", "name": "their door",
                   "initial_state": knock_rule}),
        )
        .await;
    for (knocker, host, room, door, via) in [
        (&sam, &alice, &our_room, "our door", ours.name().to_owned()),
        (
            &alice,
            &sam,
            &their_room,
            "their door",
            synapse.server_name.clone(),
        ),
    ] {
        let (status, body) = knocker
            .post(
                &format!("/knock/{}?via={}", enc(room), enc(&via)),
                json!({"reason": "hello?"}),
            )
            .await;
        assert_eq!(status, 200, "{door}: {body}\n{}", synapse.log_tail());
        let knock = sync_shows(knocker, "knock", room, &synapse).await;
        assert!(has_name(&knock, "knock_state", door), "{door}: {knock}");
        let member = wait_for_state(host, room, ("m.room.member", &knocker.user_id), |c| {
            c["membership"] == "knock"
        })
        .await;
        assert_eq!(member["membership"], "knock", "{door}: {member}");
        let (status, body) = host
            .post(
                &format!("/rooms/{}/invite", enc(room)),
                json!({"user_id": knocker.user_id}),
            )
            .await;
        assert_eq!(status, 200, "{door}: {body}\n{}", synapse.log_tail());
        sync_shows(knocker, "invite", room, &synapse).await;
        let (status, body) = knocker
            .post(
                &format!("/join/{}?server_name={}", enc(room), enc(&via)),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{door}: {body}\n{}", synapse.log_tail());
        let member = wait_for_state(host, room, ("m.room.member", &knocker.user_id), |c| {
            c["membership"] == "join"
        })
        .await;
        assert_eq!(member["membership"], "join", "{door}: {member}");
    }
    // Each lists the other's room directory.
    let (status, created) = sam
        .post(
            "/createRoom",
            json!({"preset": "public_chat", "visibility": "public", "name": "listed on synapse"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let (status, created) = alice
        .post(
            "/createRoom",
            json!({"preset": "public_chat", "visibility": "public", "name": "listed here"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let names = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (status, page) = alice
        .get(&format!(
            "/publicRooms?server={}",
            enc(&synapse.server_name)
        ))
        .await;
    assert_eq!(status, 200, "{page}\n{}", synapse.log_tail());
    assert!(
        names(&page).contains(&"listed on synapse".to_owned()),
        "{page}"
    );
    let (status, page) = sam
        .post(
            &format!("/publicRooms?server={}", enc(ours.name())),
            json!({"filter": {"generic_search_term": "listed"}}),
        )
        .await;
    assert_eq!(status, 200, "{page}\n{}", synapse.log_tail());
    assert_eq!(names(&page), vec!["listed here".to_owned()], "{page}");

    // Our invites' room state is as v1.16 asks (full PDUs with the create event): Synapse
    // checks it and would warn.
    assert!(
        !synapse.log_contains("failed to validate `invite_room_state`"),
        "{}",
        synapse.log_tail()
    );
    cluster.shutdown().await;
}

/// A room of several Synapse users joined with a partial state: Synapse answers
/// `send_join?omit_members=true` without the members, the room is usable at once (our
/// message reaches Synapse, a Synapse member our server does not know yet is heard), and
/// the member list comes from Synapse's `/state` at our join.
#[tokio::test]
async fn we_join_a_synapse_room_of_many_with_a_partial_state() {
    const MEMBERS: usize = 5;
    let cluster = Cluster::start_with(1, |_, config| {
        config.federation.partial_state_resync_delay = Duration::from_secs(5);
    })
    .await
    .unwrap();
    let ours = &cluster.instances[0];
    let synapse = Synapse::start(&cluster.ca).await.unwrap();
    let alice = User::register(ours, "alice").await.unwrap();
    let sam = User::register_at(&synapse.client_url, "sam").await.unwrap();
    let room = sam
        .create_room(json!({"preset": "public_chat", "name": "their hall"}))
        .await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let member = User::register_at(&synapse.client_url, &format!("member{i}"))
            .await
            .unwrap();
        let (status, body) = member
            .post(&format!("/join/{}", enc(&room)), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        members.push(member);
    }

    let started = Instant::now();
    alice.join_via(&room, &synapse.server_name).await;
    let rooms = &ours.running().services.rooms;
    assert!(
        rooms.is_partial(&room).unwrap(),
        "Synapse left the members in: no partial state\n{}",
        synapse.log_tail()
    );
    let (status, _) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/p1", enc(&room)),
            json!({"msgtype": "m.text", "body": "hello while partial"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        wait_for_message(&sam, &room, "hello while partial")
            .await
            .is_some(),
        "Synapse never got our message\n{}",
        synapse.log_tail()
    );
    let (status, _) = members[2]
        .put(
            &format!("/rooms/{}/send/m.room.message/m1", enc(&room)),
            json!({"msgtype": "m.text", "body": "a member you do not know yet"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        wait_for_message(&alice, &room, "a member you do not know yet")
            .await
            .is_some(),
        "a Synapse member unknown to our partial state was not heard"
    );
    if started.elapsed() < Duration::from_secs(5) {
        assert!(
            rooms.is_partial(&room).unwrap(),
            "resynced before its delay"
        );
    }

    let (status, list) = alice
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await;
    assert_eq!(status, 200, "{list}");
    let joined = list["joined"].as_object().map_or(0, |m| m.len());
    assert_eq!(joined, MEMBERS + 2, "{list}\n{}", synapse.log_tail());
    assert!(!rooms.is_partial(&room).unwrap());
    cluster.shutdown().await;
}

//! Invites, rejections, leaves and knocks between real ourwhats instances over TLS
//! (`PUT /v2/invite` both ways, `make_leave`/`send_leave`, `make_knock`/`send_knock`), the
//! invitee's `/sync` showing them, and every refusal the spec names for an invite.

use federation_tests::{enc, Cluster, Instance, User};
use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::RoomVersion;
use reqwest::Method;
use serde_json::{json, Value};

/// Waits until `user`'s `/sync` shows `room` in `section` (`invite`, `knock`, `leave`,
/// `join`); answers that room's part.
async fn sync_shows(user: &User, section: &str, room: &str) -> Value {
    let body = user
        .sync_until(|b| b["rooms"][section].get(room).is_some())
        .await
        .unwrap_or_else(|| panic!("{} never saw {room} in rooms.{section}", user.user_id));
    body["rooms"][section][room].clone()
}

/// Waits until `user` sees `target`'s membership in `room` become `membership`.
async fn membership_becomes(user: &User, room: &str, target: &str, membership: &str) {
    let started = std::time::Instant::now();
    loop {
        let (status, member) = user
            .get(&format!(
                "/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(target)
            ))
            .await;
        if status == 200 && member["membership"] == membership {
            return;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "{} never saw {target} {membership}: {member}",
            user.user_id
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn state_has(events: &Value, kind: &str, check: impl Fn(&Value) -> bool) -> bool {
    events
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == kind && check(e))
}

#[tokio::test]
async fn invites_rejected_and_accepted_across_three_servers() {
    let cluster = Cluster::start(3).await.unwrap();
    let (a, b, c) = (
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    );
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(c, "carol").await.unwrap();

    // createRoom with an invitee of another server.
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "party", "invite": [carol.user_id]}))
        .await;
    let invite = sync_shows(&carol, "invite", &room).await;
    let events = &invite["invite_state"]["events"];
    assert!(
        state_has(events, "m.room.name", |e| e["content"]["name"] == "party"),
        "{invite}"
    );
    assert!(state_has(events, "m.room.create", |_| true), "{invite}");
    assert!(
        state_has(events, "m.room.member", |e| e["state_key"] == carol.user_id
            && e["content"]["membership"] == "invite"
            && e["sender"] == alice.user_id),
        "the invite itself is shown: {invite}"
    );

    // /invite of another server's user; the invitee rejects it through our server.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id, "reason": "come"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &bob.user_id, "invite").await;
    sync_shows(&bob, "invite", &room).await;
    let (status, body) = bob
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &bob.user_id, "leave").await;
    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    let (status, synced) = bob.get(&format!("/sync?timeout=0&filter={filter}")).await;
    assert_eq!(status, 200, "{synced}");
    let left = synced["rooms"]["leave"][&room].clone();
    assert!(
        state_has(&left["timeline"]["events"], "m.room.member", |e| e
            ["content"]["membership"]
            == "leave"),
        "{left}"
    );
    let (_, synced) = bob.get("/sync?timeout=0").await;
    assert!(synced["rooms"]["invite"].get(&room).is_none(), "{synced}");

    // The other invitee accepts: a join with no `via`, through the inviter's server.
    let (status, body) = carol
        .post(&format!("/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &carol.user_id, "join").await;

    // Bob, invited again, joins this time and talks.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_shows(&bob, "invite", &room).await;
    let (status, body) = bob.post(&format!("/join/{}", enc(&room)), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/t1", enc(&room)),
            json!({"msgtype": "m.text", "body": "made it"}),
        )
        .await;
    assert_eq!(status, 200);
    // Bob's server counts the room's members from its state (his invites, kept out of
    // band, were never counted), once the member list of his partial-state join is in
    // (the member list waits for it).
    let (status, body) = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .await;
    assert_eq!(status, 200, "{body}");
    let joined = sync_shows(&bob, "join", &room).await;
    assert_eq!(
        (
            &joined["summary"]["m.joined_member_count"],
            &joined["summary"]["m.invited_member_count"]
        ),
        (&json!(3), &json!(0)),
        "{joined}"
    );
    for user in [&alice, &carol] {
        let seen = user
            .sync_until(|b| {
                state_has(
                    &b["rooms"]["join"][&room]["timeline"]["events"],
                    "m.room.message",
                    |e| e["content"]["body"] == "made it",
                )
            })
            .await;
        assert!(seen.is_some(), "{} never saw bob's message", user.user_id);
    }

    // An invite of a user already joined is refused on our side, of a user who does not
    // exist on theirs.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": format!("@nobody:{}", b.name())}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, member) = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&room),
            enc(&format!("@nobody:{}", b.name()))
        ))
        .await;
    assert_eq!(status, 404, "a refused invite leaves no trace: {member}");
    cluster.shutdown().await;
}

/// An invite the inviter's server takes back (a kick of the invitee): the invitee's
/// server is not in the room, and takes the leave out of band, so their `/sync` shows the
/// room left instead of an invite that can no longer be taken. A leave for them from
/// another server of the room, which did not invite them, is not taken.
#[tokio::test]
async fn an_invite_taken_back_reaches_the_invitee() {
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
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    sync_shows(&bob, "invite", &room).await;
    // carol's server is in the room too (she names it, so her server is among the
    // invite's room state senders), and tries to end bob's invite itself.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_shows(&carol, "invite", &room).await;
    let (status, body) = carol
        .post(&format!("/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = alice
        .put(
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&room)),
            json!({"users": {&carol.user_id: 100}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&carol, &room, &carol.user_id, "join").await;
    let started = std::time::Instant::now();
    loop {
        let (status, _) = carol
            .put(
                &format!("/rooms/{}/state/m.room.name/", enc(&room)),
                json!({"name": "carol's name"}),
            )
            .await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 15,
            "carol never got the power"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let (status, body) = alice
        .post(
            &format!("/rooms/{}/kick", enc(&room)),
            json!({"user_id": bob.user_id, "reason": "sent by mistake"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A full sync leaves out left rooms unless asked (`include_leave`).
    let filter = enc(r#"{"room":{"include_leave":true}}"#);
    let started = std::time::Instant::now();
    let synced = loop {
        let (status, synced) = bob.get(&format!("/sync?timeout=0&filter={filter}")).await;
        assert_eq!(status, 200, "{synced}");
        if synced["rooms"]["leave"].get(&room).is_some() {
            break synced;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "the invite never ended: {synced}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(synced["rooms"]["invite"].get(&room).is_none(), "{synced}");
    let events = &synced["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(
        state_has(events, "m.room.member", |e| e["content"]["membership"]
            == "leave"
            && e["sender"] == alice.user_id
            && e["content"]["reason"] == "sent by mistake"),
        "{synced}"
    );
    // bob can no longer join through it.
    let (status, _) = bob.post(&format!("/join/{}", enc(&room)), json!({})).await;
    assert_eq!(status, 403);

    // Invited again. A leave for him from carol's server, which did not invite him, is
    // not taken by his server (it is not in the room): the invite stays.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let invite = sync_shows(&bob, "invite", &room).await;
    let invite_id = invite["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .and_then(|e| e["event_id"].as_str())
        .unwrap_or_else(|| panic!("{invite}"))
        .to_owned();
    let (_, create) = alice
        .get(&format!("/rooms/{}/state/m.room.create/", enc(&room)))
        .await;
    let version = RoomVersion::from_id(create["room_version"].as_str().unwrap()).unwrap();
    let (_, forged) = hand_made_invite(c, version, (&room, &bob.user_id), |t| {
        t.sender = carol.user_id.clone();
        t.content = json!({"membership": "leave"});
        t.auth_events = vec![invite_id.clone()];
    });
    let txn = json!({"origin": c.name(), "origin_server_ts": 1_700_000_000_000u64,
                     "pdus": [forged]});
    let (status, body) = c
        .ask(
            b.name(),
            Method::PUT,
            "/_matrix/federation/v1/send/forged1",
            Some(txn),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, synced) = bob.get("/sync?timeout=0").await;
    assert!(synced["rooms"]["invite"].get(&room).is_some(), "{synced}");
    cluster.shutdown().await;
}

/// An invite sent inside a room we hold, rejected once our last member has left: the
/// rejection goes through the room's other servers (it has no stripped state to name
/// them), so they see the invitee leave.
#[tokio::test]
async fn an_invite_rejected_after_our_last_member_left_reaches_the_room() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(a, "bob").await.unwrap();
    let carol = User::register(b, "carol").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [carol.user_id, bob.user_id]}))
        .await;
    sync_shows(&carol, "invite", &room).await;
    let (status, body) = carol
        .post(&format!("/join/{}", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &carol.user_id, "join").await;
    let (status, body) = alice
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&carol, &room, &alice.user_id, "leave").await;
    let (status, body) = bob
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&carol, &room, &bob.user_id, "leave").await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn knocks_accepted_and_retracted_across_servers() {
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
        .create_room(
            json!({"preset": "private_chat", "name": "knock knock", "initial_state": [
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ]}),
        )
        .await;

    // Bob knocks through alice's server and sees the room's name while he waits.
    let (status, body) = bob
        .post(
            &format!("/knock/{}?via={}", enc(&room), enc(a.name())),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let knock = sync_shows(&bob, "knock", &room).await;
    assert!(
        state_has(&knock["knock_state"]["events"], "m.room.name", |e| e
            ["content"]["name"]
            == "knock knock"),
        "{knock}"
    );
    membership_becomes(&alice, &room, &bob.user_id, "knock").await;

    // Alice lets him in with an invite; he joins.
    let (status, body) = alice
        .post(
            &format!("/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_shows(&bob, "invite", &room).await;
    let (status, body) = bob.post(&format!("/join/{}", enc(&room)), json!({})).await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &bob.user_id, "join").await;

    // Carol knocks through bob's server, then thinks better of it.
    let (status, body) = carol
        .post(
            &format!("/knock/{}?via={}", enc(&room), enc(b.name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &carol.user_id, "knock").await;
    let (status, body) = carol
        .post(&format!("/rooms/{}/leave", enc(&room)), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    membership_becomes(&alice, &room, &carol.user_id, "leave").await;
    membership_becomes(&bob, &room, &carol.user_id, "leave").await;

    // A knock on a room whose rule does not allow it is refused by the resident server.
    let closed = alice.create_room(json!({"preset": "private_chat"})).await;
    let (status, body) = carol
        .post(
            &format!("/knock/{}?via={}", enc(&closed), enc(a.name())),
            json!({}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, synced) = carol.get("/sync?timeout=0").await;
    assert!(synced["rooms"]["knock"].get(&closed).is_none(), "{synced}");
    cluster.shutdown().await;
}

/// An invite `from` makes by hand, for `invitee` in `room_id` of `version`, signed with
/// `from`'s key after `change` shaped it.
fn hand_made_invite(
    from: &Instance,
    version: RoomVersion,
    (room_id, invitee): (&str, &str),
    change: impl FnOnce(&mut PduTemplate),
) -> (String, Value) {
    let mut template = PduTemplate {
        room_id: Some(room_id.to_owned()),
        sender: format!("@mallory:{}", from.name()),
        kind: "m.room.member".into(),
        state_key: Some(invitee.to_owned()),
        content: json!({"membership": "invite"}),
        prev_events: vec!["$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()],
        auth_events: vec!["$BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into()],
        depth: 5,
        origin_server_ts: 1_700_000_000_000,
        redacts: None,
    };
    change(&mut template);
    let key = &from.running().services.signing_key;
    let built = pdu::build(version, template, from.name(), key).unwrap();
    (built.event_id, built.pdu)
}

#[tokio::test]
async fn invite_refusals() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let room = format!("!hand:{}", b.name());
    let v11 = RoomVersion::from_id("11").unwrap();
    let v12 = RoomVersion::from_id("12").unwrap();
    let put = |room: &str, id: &str, version: &str, event: &Value, state: Value| {
        let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(room), enc(id));
        let body = json!({"room_version": version, "event": event, "invite_room_state": state});
        async move { b.ask(a.name(), Method::PUT, &path, Some(body)).await }
    };
    let invalid = |(status, body): (u16, Value), what: &str| {
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{what}: {body}"
        );
    };

    let (id, event) = hand_made_invite(b, v11, (&room, &alice.user_id), |_| {});
    invalid(
        put(
            &format!("!other:{}", b.name()),
            &id,
            "11",
            &event,
            json!([]),
        )
        .await,
        "another room in the path",
    );
    invalid(
        put(&room, "$notthisone", "11", &event, json!([])).await,
        "another event id in the path",
    );
    let (id2, join) = hand_made_invite(b, v11, (&room, &alice.user_id), |t| {
        t.content = json!({"membership": "join"});
    });
    invalid(put(&room, &id2, "11", &join, json!([])).await, "a join");
    let (id2, other_type) = hand_made_invite(b, v11, (&room, &alice.user_id), |t| {
        t.kind = "m.room.topic".into();
    });
    invalid(
        put(&room, &id2, "11", &other_type, json!([])).await,
        "another event type",
    );
    let (id2, theirs) = hand_made_invite(b, v11, (&room, &format!("@x:{}", b.name())), |_| {});
    invalid(
        put(&room, &id2, "11", &theirs, json!([])).await,
        "an invitee of another server",
    );
    let (id2, spoofed) = hand_made_invite(b, v11, (&room, &alice.user_id), |t| {
        t.sender = format!("@mallory:{}", a.name());
    });
    invalid(
        put(&room, &id2, "11", &spoofed, json!([])).await,
        "a sender of another server",
    );
    // Signed by the wrong key: a's key under b's name.
    let mut forged = event.clone();
    forged["signatures"] = json!({});
    let key = &a.running().services.signing_key;
    ourwhats::core::event_hashes::sign_event(&mut forged, b.name(), key, v11).unwrap();
    invalid(
        put(&room, &id, "11", &forged, json!([])).await,
        "a bad signature",
    );
    // Content changed after signing (the content hash no longer matches).
    let mut tampered = event.clone();
    tampered["content"]["displayname"] = json!("changed");
    let tampered_id = ourwhats::core::event_hashes::event_id(&tampered, v11).unwrap();
    invalid(
        put(&room, &tampered_id, "11", &tampered, json!([])).await,
        "a content hash mismatch",
    );
    let (status, body) = put(&room, &id, "org.example.v0", &event, json!([])).await;
    assert_eq!(
        (
            status,
            body["errcode"].as_str(),
            body["room_version"].as_str()
        ),
        (
            400,
            Some("M_INCOMPATIBLE_ROOM_VERSION"),
            Some("org.example.v0")
        ),
        "{body}"
    );
    // An event of the v3 format said to be of a room v1, which has its own.
    let (status, body) = put(&room, &id, "1", &event, json!([])).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("event_id"),
        "{body}"
    );
    let (id2, nobody) = hand_made_invite(b, v11, (&room, &format!("@nobody:{}", a.name())), |_| {});
    let (status, body) = put(&room, &id2, "11", &nobody, json!([])).await;
    assert_eq!(status, 403, "an unknown invitee: {body}");
    // v12: the room state must hold the create event.
    let room12 = format!("!{}", "C".repeat(43));
    let (id12, v12_invite) = hand_made_invite(b, v12, (&room12, &alice.user_id), |_| {});
    invalid(
        put(
            &room12,
            &id12,
            "12",
            &v12_invite,
            json!([{"type": "m.room.name", "state_key": "",
            "sender": "@mallory:x", "content": {"name": "no create"}}]),
        )
        .await,
        "v12 room state without the create event",
    );

    // An event over 65,536 bytes, and a v12 room state of more entries than we keep.
    let mut huge = event.clone();
    huge["content"]["reason"] = json!("x".repeat(70_000));
    let huge_id = ourwhats::core::event_hashes::event_id(&huge, v11).unwrap();
    invalid(
        put(&room, &huge_id, "11", &huge, json!([])).await,
        "an event over 65,536 bytes",
    );
    let many: Vec<serde_json::Value> = (0..100)
        .map(|n| {
            json!({"type": "m.room.name", "state_key": format!("{n}"), "sender": "@m:x",
                        "content": {"name": "many"}})
        })
        .collect();
    invalid(
        put(&room12, &id12, "12", &v12_invite, json!(many)).await,
        "v12 room state of 100 entries",
    );

    // None of that reached alice, whose /sync works as before.
    let (status, synced) = alice.get("/sync?timeout=0").await;
    assert_eq!(status, 200, "{synced}");
    assert!(synced["rooms"]["invite"].get(&room).is_none(), "{synced}");

    // Before v12, room state in the older stripped form is taken (with a warning): the
    // invite is signed and shown.
    let (status, body) = put(
        &room,
        &id,
        "11",
        &event,
        json!([{"type": "m.room.name", "state_key": "", "sender": "@mallory:x",
                "content": {"name": "old style"}}, "not an event"]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["event"]["signatures"].get(a.name()).is_some(),
        "our signature added: {body}"
    );
    let invite = sync_shows(&alice, "invite", &room).await;
    assert!(
        state_has(&invite["invite_state"]["events"], "m.room.name", |e| e
            ["content"]["name"]
            == "old style"),
        "{invite}"
    );

    // An invite that lies about a room's version does not keep our users out of it: the
    // real invite and the join take the version the room has.
    let bob = User::register(b, "bob").await.unwrap();
    let real = bob
        .create_room(json!({"preset": "private_chat", "name": "real"}))
        .await;
    let (lie_id, lie) = hand_made_invite(b, v11, (&real, &alice.user_id), |_| {});
    let (status, body) = put(&real, &lie_id, "11", &lie, json!([])).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob
        .post(
            &format!("/rooms/{}/invite", enc(&real)),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_eq!(status, 200, "the real invite after the lie: {body}");
    let (status, body) = alice
        .post(&format!("/join/{}", enc(&real)), json!({}))
        .await;
    assert_eq!(status, 200, "the join after the lie: {body}");
    let (status, name) = alice
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&real)))
        .await;
    assert_eq!((status, &name["name"]), (200, &json!("real")), "{name}");

    // send_leave and make_leave refusals on a room of a.
    let ours = alice.create_room(json!({"preset": "public_chat"})).await;
    let (status, body) = b
        .ask(
            a.name(),
            Method::GET,
            &format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                enc(&ours),
                enc(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, 403, "a leave for another server's user: {body}");
    let (id2, join) = hand_made_invite(b, v12, (&ours, &format!("@m:{}", b.name())), |t| {
        t.sender = format!("@m:{}", b.name());
        t.content = json!({"membership": "join"});
    });
    let (status, body) = b
        .ask(
            a.name(),
            Method::PUT,
            &format!(
                "/_matrix/federation/v2/send_leave/{}/{}",
                enc(&ours),
                enc(&id2)
            ),
            Some(join),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "a join sent as a leave: {body}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn invites_from_another_server_are_rate_limited_per_invitee() {
    // Server 0 takes 2 invites for one of its users in a burst, then 1 a minute.
    let cluster = Cluster::start_with(2, |i, config| {
        if i == 0 {
            let limits = &mut config.rate_limits;
            limits.enabled = true;
            limits.register_burst = 100;
            limits.federation_burst = 10_000;
            limits.invites_received_per_minute = 1;
            limits.invites_received_burst = 2;
        }
    })
    .await
    .unwrap();
    let alice = User::register(&cluster.instances[0], "alice")
        .await
        .unwrap();
    let bob = User::register(&cluster.instances[1], "bob").await.unwrap();
    for n in 0..3 {
        let room = bob.create_room(json!({"preset": "private_chat"})).await;
        let (status, body) = bob
            .post(
                &format!("/rooms/{}/invite", enc(&room)),
                json!({"user_id": alice.user_id}),
            )
            .await;
        if n < 2 {
            assert_eq!(status, 200, "invite {n}: {body}");
        } else {
            assert_eq!(status, 429, "invite {n}: {body}");
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
        }
    }
    cluster.shutdown().await;
}

/// What a push gateway on loopback received (the test's stand-in for a phone vendor's).
type Received = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

async fn notify(
    axum::extract::State(received): axum::extract::State<Received>,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    received.lock().unwrap().push(body);
    axum::Json(json!({"rejected": []}))
}

/// A push gateway over HTTPS with a certificate of the cluster's CA (which every server
/// trusts); answers its notify URL.
async fn push_gateway(cluster: &Cluster, dir: &std::path::Path) -> (Received, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = cluster.ca.issue(dir, "gateway").unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .unwrap();
    let received = Received::default();
    let app = axum::Router::new()
        .route("/_matrix/push/v1/notify", axum::routing::post(notify))
        .with_state(received.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
    tokio::spawn(async move { server.serve(app.into_make_service()).await });
    (
        received,
        format!("https://{address}/_matrix/push/v1/notify"),
    )
}

/// An invite from another server to a room ours is not in (kept out of band) notifies
/// the invitee as one in a room we are in does (`.m.rule.invite_for_me`): their phone
/// is pushed, with the invite's sender and `user_is_target`.
#[tokio::test]
async fn an_invite_from_another_server_reaches_the_invitees_phone() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (received, url) = push_gateway(&cluster, dir.path()).await;
    let (status, body) = bob
        .post(
            "/pushers/set",
            json!({
                "pushkey": "bob-phone", "kind": "http", "app_id": "org.example.chat",
                "app_display_name": "Chat", "device_display_name": "Phone", "lang": "en",
                "data": {"url": url},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id], "is_direct": true}))
        .await;
    sync_shows(&bob, "invite", &room).await;
    let started = std::time::Instant::now();
    while received.lock().unwrap().is_empty() && started.elapsed().as_secs() < 30 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Pushed once: nothing more comes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0]["notification"];
    assert_eq!(n["room_id"], room.as_str(), "{n}");
    assert_eq!(n["type"], "m.room.member", "{n}");
    assert_eq!(n["content"]["membership"], "invite", "{n}");
    assert_eq!(n["sender"], alice.user_id.as_str(), "{n}");
    assert_eq!(n["user_is_target"], true, "{n}");
    assert_eq!(n["devices"][0]["pushkey"], "bob-phone", "{n}");
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    cluster.shutdown().await;
}

/// A knock's room state with a badly signed entry: that entry alone is left out (spec:
/// `send_knock`, entries "improperly signed or formatted SHOULD be removed"); the create
/// event, which a v12 knock's state must show, stays; an entry whose content no longer
/// matches its hash is shown redacted.
#[tokio::test]
async fn a_knocks_room_state_loses_only_its_bad_entries() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let room = alice
        .create_room(json!({"room_version": "12", "name": "knock here",
            "initial_state": [
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}))
        .await;
    let (status, state) = alice.get(&format!("/rooms/{}/state", enc(&room))).await;
    assert_eq!(status, 200, "{state}");
    let id_of = |kind: &str| {
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    // The PDUs as the resident server holds them (what its send_knock answer holds).
    let store = a.running().services.rooms.store();
    let mut raw = Vec::new();
    for kind in ["m.room.create", "m.room.join_rules", "m.room.name"] {
        let event = store.event_by_id(&id_of(kind)).unwrap().unwrap();
        raw.push(event.pdu().clone());
    }
    // Content altered after signing: shown redacted (check 3), the event kept.
    raw[2]["content"]["name"] = json!("not what was signed");
    // Signed by no one: left out.
    let mut unsigned = raw[1].clone();
    unsigned["signatures"] = json!({});
    raw.push(unsigned);
    let services = &b.running().services;
    let source = ourwhats::services::federation::source::FromOrigin {
        federation: &services.federation,
        origin: ourwhats::core::ServerName::parse(a.name()).unwrap(),
    };
    let v12 = RoomVersion::from_id("12").unwrap();
    let shown = services
        .rooms
        .knock_room_state(&room, v12, Some(&json!(raw)), &source)
        .await;
    let kinds: Vec<&str> = shown.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["m.room.create", "m.room.join_rules", "m.room.name"],
        "{shown:?}"
    );
    assert_eq!(shown[2]["content"], json!({}), "{shown:?}");
    cluster.shutdown().await;
}

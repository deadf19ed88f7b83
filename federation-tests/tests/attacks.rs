//! Regression tests named after known attack classes on federation (the hostile-federation
//! issue), each between real ourwhats over TLS. Others live beside the feature they guard:
//! `joins.rs` and `invites.rs` (membership endpoints naming another room or type, unsigned
//! or badly signed membership events), `server_acl.rs` (ACLs on every endpoint).

use federation_tests::split::{ProxyPort, SplitProxy};
use federation_tests::{enc, free_port, Cluster, User};
use ourwhats::core::ServerName;
use reqwest::Method;
use serde_json::{json, Value};

/// The `n` of each `m.test` to-device message `user` gets after `since`, waiting up to
/// `seconds` for the first.
async fn test_numbers_arriving(user: &User, since: Option<String>, seconds: u64) -> Vec<Value> {
    let (events, _) = user
        .to_device_events(since, 1, std::time::Duration::from_secs(seconds))
        .await;
    events.iter().map(|e| e["content"]["n"].clone()).collect()
}

/// `from` sends a transaction of `edus` to `to`; the transaction must be taken.
async fn send_edus(
    from: &federation_tests::Instance,
    to: &federation_tests::Instance,
    txn: &str,
    edus: Value,
) {
    let body = json!({
        "origin": from.name(),
        "origin_server_ts": 1_700_000_000_000u64,
        "pdus": [],
        "edus": edus,
    });
    let (status, answer) = from
        .ask(
            to.name(),
            Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn}"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn edus_about_another_servers_users_are_ignored() {
    let cluster = Cluster::start(3).await.unwrap();
    let (a, b, c) = (
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    );
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(c, "carol").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        user.join_via(&room, a.name()).await;
    }
    let (status, sent) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/m1", enc(&room)),
            json!({"msgtype": "m.text", "body": "hello"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let (_, first) = alice.get("/sync?timeout=0").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // C speaks for B's user: typing, a read receipt, presence, a device-list change.
    send_edus(
        c,
        a,
        "forged",
        json!([
            {"edu_type": "m.typing", "content": {"room_id": room, "user_id": bob.user_id, "typing": true}},
            {"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {bob.user_id.clone(): {
                "event_ids": [event], "data": {"ts": 1_700_000_000_000u64}}}}}},
            {"edu_type": "m.presence", "content": {"push": [{"user_id": bob.user_id,
                "presence": "online", "last_active_ago": 5, "status_msg": "forged"}]}},
            {"edu_type": "m.device_list_update", "content": {"user_id": bob.user_id,
                "device_id": "FORGED", "stream_id": 1, "prev_id": []}}
        ]),
    )
    .await;
    // And for its own user, as a control: that typing and receipt show (the receipt
    // with the time C says carol read the event).
    send_edus(
        c,
        a,
        "own",
        json!([
            {"edu_type": "m.typing", "content": {"room_id": room, "user_id": carol.user_id, "typing": true}},
            {"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {carol.user_id.clone(): {
                "event_ids": [event], "data": {"ts": 1_600_000_000_000u64}}}}}}
        ]),
    )
    .await;

    let seen = alice
        .sync_until(|body| {
            body["rooms"]["join"][&room]["ephemeral"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["type"] == "m.typing")
        })
        .await
        .expect("carol's typing shows");
    let (status, body) = alice
        .get(&format!("/sync?timeout=0&since={}", enc(&since)))
        .await;
    assert_eq!(status, 200, "{body}");
    for answer in [&seen, &body] {
        let ephemeral = &answer["rooms"]["join"][&room]["ephemeral"]["events"];
        for e in ephemeral.as_array().into_iter().flatten() {
            if e["type"] == "m.typing" {
                let typing = e["content"]["user_ids"].as_array().unwrap();
                assert!(!typing.contains(&json!(bob.user_id)), "{e}");
            }
            if e["type"] == "m.receipt" {
                assert!(
                    e["content"][&event]["m.read"].get(&bob.user_id).is_none(),
                    "{e}"
                );
            }
        }
        let presence = &answer["presence"]["events"];
        assert!(
            !presence
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["sender"] == bob.user_id.as_str()
                    && e["content"]["status_msg"] == "forged"),
            "{presence}"
        );
    }
    let carols = body["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|e| e["content"][&event]["m.read"].get(&carol.user_id))
        .unwrap_or_else(|| panic!("carol's receipt shows: {body}"));
    assert_eq!(carols["ts"], 1_600_000_000_000u64, "{carols}");
    let changed = &body["device_lists"]["changed"];
    assert!(
        !changed
            .as_array()
            .into_iter()
            .flatten()
            .any(|u| u == &json!(bob.user_id)),
        "{changed}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn reads_by_a_server_not_in_the_room_are_refused() {
    let cluster = Cluster::start(3).await.unwrap();
    let (a, b, c) = (
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    );
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice
        .create_room(
            json!({"preset": "private_chat", "initial_state": [{"type": "m.room.join_rules",
                   "state_key": "", "content": {"join_rule": "public"}}]}),
        )
        .await;
    bob.join_via(&room, a.name()).await;
    let (status, sent) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/s1", enc(&room)),
            json!({"msgtype": "m.text", "body": "for members"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let (r, e) = (enc(&room), enc(&event));
    let reads = [
        (
            Method::GET,
            format!("/_matrix/federation/v1/state_ids/{r}?event_id={e}"),
            None,
        ),
        (
            Method::GET,
            format!("/_matrix/federation/v1/state/{r}?event_id={e}"),
            None,
        ),
        (
            Method::GET,
            format!("/_matrix/federation/v1/event_auth/{r}/{e}"),
            None,
        ),
        (
            Method::GET,
            format!("/_matrix/federation/v1/backfill/{r}?v={e}&limit=10"),
            None,
        ),
        (
            Method::POST,
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({"earliest_events": [], "latest_events": [event], "limit": 10})),
        ),
    ];
    for (method, path, body) in reads {
        // C has no member in the room: refused, nothing of it in the answer.
        let (status, answer) = c.ask(a.name(), method.clone(), &path, body.clone()).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{path}: {answer}"
        );
        assert!(!answer.to_string().contains("for members"), "{answer}");
        // B has one: answered.
        let (status, answer) = b.ask(a.name(), method, &path, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    // A single event by id: unknown to C (404, as for an event that does not exist).
    let (status, answer) = c
        .ask(
            a.name(),
            Method::GET,
            &format!("/_matrix/federation/v1/event/{e}"),
            None,
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_item_the_destination_keeps_refusing_never_stops_the_rest_of_the_queue() {
    // B takes federation bodies of 20,000 bytes at most: a to-device message of 40,000
    // bytes from A is refused (413) every time; the message after it still arrives.
    let cluster = Cluster::start_with(2, |i, config| {
        if i == 1 {
            config.federation.max_body_size = 20_000;
        }
    })
    .await
    .unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let (_, since) = bob
        .to_device_events(None, 0, std::time::Duration::ZERO)
        .await;
    for (n, filler) in [(1, "x".repeat(40_000)), (2, String::new())] {
        let (status, body) = alice
            .put(
                &format!("/sendToDevice/m.test/big{n}"),
                json!({"messages": {bob.user_id.clone(): {bob.device_id.clone():
                    {"n": n, "filler": filler}}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let numbers = test_numbers_arriving(&bob, since, 30).await;
    assert_eq!(
        numbers,
        [json!(2)],
        "the refused message is dropped, the next one arrives"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_destination_that_cannot_check_our_signature_yet_loses_nothing_of_the_queue() {
    // B cannot reach A's key for a while (A's listener is cut off from B's address), so
    // it answers A's transactions 401. That is about the request, not its items: after
    // more than three such answers nothing is given up, and once B gets the key the
    // message arrives. (Before, three refusals of any 4xx dropped the first item.)
    let b_source = std::net::IpAddr::from([127, 0, 0, 3]);
    // Fixed ports: a port found free may be taken by another test before the server binds
    // it, so a start that finds it taken tries other ports.
    let mut attempt = 0;
    let (cluster, proxy_port, real_port) = loop {
        attempt += 1;
        let proxy_port = ProxyPort::bind().await.unwrap();
        let real_port = free_port().unwrap();
        let name = proxy_port.port();
        let started = Cluster::start_with(2, |i, config| {
            if i == 0 {
                config.server_name =
                    ServerName::parse(&format!("127.0.0.1:{name}")).expect("a server name");
                config.federation.listen = format!("127.0.0.1:{real_port}")
                    .parse()
                    .expect("an address");
            } else {
                config.federation.outbound_address = Some(b_source);
            }
        })
        .await;
        match started {
            Err(e) if e.contains("Address already in use") && attempt < 5 => continue,
            started => break (started.unwrap(), proxy_port, real_port),
        }
    };
    let proxy = SplitProxy::start(proxy_port, real_port).await.unwrap();
    proxy.block_sources([b_source]);
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let (_, since) = bob
        .to_device_events(None, 0, std::time::Duration::ZERO)
        .await;
    let (status, body) = alice
        .put(
            "/sendToDevice/m.test/k1",
            json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": 1}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A tries at once, after 1 s and after 2 s more: three 401s by about 3 s, a fourth
    // at about 7 s.
    tokio::time::sleep(std::time::Duration::from_millis(7_500)).await;
    let (events, _) = bob
        .to_device_events(since.clone(), 0, std::time::Duration::ZERO)
        .await;
    assert!(
        events.is_empty(),
        "nothing can arrive while B lacks A's key"
    );
    proxy.block_sources([]);
    let numbers = test_numbers_arriving(&bob, since, 40).await;
    assert_eq!(
        numbers,
        [json!(1)],
        "the message arrives once B has the key"
    );
    drop(proxy);
    cluster.shutdown().await;
}

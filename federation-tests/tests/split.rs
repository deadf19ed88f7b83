//! A network split between two real ourwhats (a TCP proxy in front of each federation
//! listener, the servers named by the proxies' ports): while split, each side changes the
//! room's state and talks; once healed, both show the same state and every message.

use std::time::{Duration, Instant};

use federation_tests::split::{ProxyPort, SplitProxy};
use federation_tests::{enc, free_port, Cluster, User};
use ourwhats::core::ServerName;
use serde_json::json;

async fn state_of(user: &User, room: &str, kind: &str, field: &str) -> Option<String> {
    let (status, content) = user
        .get(&format!("/rooms/{}/state/{kind}/", enc(room)))
        .await;
    (status == 200)
        .then(|| content[field].as_str().map(str::to_owned))
        .flatten()
}

async fn sees(user: &User, room: &str, body: &str) -> bool {
    let (status, page) = user
        .get(&format!("/rooms/{}/messages?dir=b&limit=50", enc(room)))
        .await;
    status == 200
        && page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == body)
}

async fn say(user: &User, room: &str, body: &str) {
    let (status, sent) = user
        .put(
            &format!("/rooms/{}/send/m.room.message/{}", enc(room), enc(body)),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
}

/// Waits until `user` sees a message with `body`; fails with `what` after 30 s.
async fn wait_to_see(user: &User, room: &str, body: &str, what: &str) {
    let started = Instant::now();
    while !sees(user, room, body).await {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_servers_split_change_state_on_both_sides_and_converge_after_healing() {
    let [first, second] = [ProxyPort::bind().await, ProxyPort::bind().await];
    let (first, second) = (first.unwrap(), second.unwrap());
    let proxy_ports = [first.port(), second.port()];
    let real_ports = [free_port().unwrap(), free_port().unwrap()];
    let cluster = Cluster::start_with(2, |i, config| {
        config.server_name = ServerName::parse(&format!("127.0.0.1:{}", proxy_ports[i])).unwrap();
        config.federation.listen = format!("127.0.0.1:{}", real_ports[i]).parse().unwrap();
    })
    .await
    .unwrap();
    let proxies = [
        SplitProxy::start(first, real_ports[0]).await.unwrap(),
        SplitProxy::start(second, real_ports[1]).await.unwrap(),
    ];
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice
        .create_room(
            json!({"preset": "public_chat", "room_version": "11", "name": "before",
                   "topic": "before",
                   "power_level_content_override": {"users": {
                       alice.user_id.clone(): 100, bob.user_id.clone(): 100}}}),
        )
        .await;
    bob.join_via(&room, a.name()).await;
    say(&bob, &room, "joined").await;
    wait_to_see(&alice, &room, "joined", "bob's message never came").await;

    // Split: each side changes something and talks.
    for proxy in &proxies {
        proxy.set_split(true);
    }
    let (status, _) = alice
        .put(
            &format!("/rooms/{}/state/m.room.topic/", enc(&room)),
            json!({"topic": "set on a during the split"}),
        )
        .await;
    assert_eq!(status, 200);
    say(&alice, &room, "a during the split").await;
    let (status, _) = bob
        .put(
            &format!("/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "set on b during the split"}),
        )
        .await;
    assert_eq!(status, 200);
    say(&bob, &room, "b during the split").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !sees(&alice, &room, "b during the split").await,
        "the split let an event through"
    );

    // Healed: both sides end with both changes and every message.
    for proxy in &proxies {
        proxy.set_split(false);
    }
    say(&alice, &room, "a after healing").await;
    say(&bob, &room, "b after healing").await;
    let started = Instant::now();
    loop {
        let mut done = true;
        for user in [&alice, &bob] {
            done &= state_of(user, &room, "m.room.topic", "topic")
                .await
                .as_deref()
                == Some("set on a during the split");
            done &= state_of(user, &room, "m.room.name", "name")
                .await
                .as_deref()
                == Some("set on b during the split");
            for body in [
                "a during the split",
                "b during the split",
                "a after healing",
                "b after healing",
            ] {
                done &= sees(user, &room, body).await;
            }
        }
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no convergence after healing: alice sees topic {:?} name {:?}, bob sees topic {:?} name {:?}",
            state_of(&alice, &room, "m.room.topic", "topic").await,
            state_of(&alice, &room, "m.room.name", "name").await,
            state_of(&bob, &room, "m.room.topic", "topic").await,
            state_of(&bob, &room, "m.room.name", "name").await,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(proxies);
    cluster.shutdown().await;
}

/// The loopback address server `i` connects out from (its own, so a proxy can refuse it
/// and not the others).
fn source(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::from([127, 0, 0, 2 + i as u8])
}

/// Three servers, each behind a split proxy (named by its port) and connecting out from
/// its own address, each trusting the other two as notaries (a server cut off from
/// another still gets its key through the third).
async fn three_behind_proxies() -> (Cluster, Vec<SplitProxy>) {
    let mut bound = Vec::new();
    for _ in 0..3 {
        bound.push(ProxyPort::bind().await.unwrap());
    }
    let proxy_ports: Vec<u16> = bound.iter().map(ProxyPort::port).collect();
    let real_ports = [
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    ];
    let cluster = Cluster::start_with(3, |i, config| {
        config.server_name = ServerName::parse(&format!("127.0.0.1:{}", proxy_ports[i])).unwrap();
        config.federation.listen = format!("127.0.0.1:{}", real_ports[i]).parse().unwrap();
        config.federation.outbound_address = Some(source(i));
        config.federation.trusted_key_servers = (0..3)
            .filter(|&j| j != i)
            .map(|j| ServerName::parse(&format!("127.0.0.1:{}", proxy_ports[j])).unwrap())
            .collect();
    })
    .await
    .unwrap();
    let mut proxies = Vec::new();
    for (port, real) in bound.into_iter().zip(real_ports) {
        proxies.push(SplitProxy::start(port, real).await.unwrap());
    }
    (cluster, proxies)
}

/// A server that learns late of another server's join (it joined through a third,
/// resident server while we could not hear from that one) sends it our latest event: our
/// events meanwhile went only to the servers we knew, and the resident server does not
/// pass on events it did not make, so nothing else would tell the new server of them
/// until our next event.
#[tokio::test]
async fn a_server_that_joined_through_another_gets_our_events_from_before_we_knew_of_it() {
    let (cluster, proxies) = three_behind_proxies().await;
    let [a, b, c] = [0, 1, 2].map(|i| &cluster.instances[i]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(c, "carol").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_version": "12"}))
        .await;
    bob.join_via(&room, a.name()).await;
    say(&bob, &room, "joined").await;
    wait_to_see(&alice, &room, "joined", "bob's message never came").await;

    // The resident server cannot reach bob's: carol's join, made through it, waits there.
    proxies[1].block_sources([source(0)]);
    carol.join_via(&room, a.name()).await;
    say(&bob, &room, "before bob's server knew of carol's").await;
    wait_to_see(
        &alice,
        &room,
        "before bob's server knew of carol's",
        "bob's message never reached alice",
    )
    .await;

    // Healed: carol's join reaches bob's server, which then sends carol's its latest event.
    proxies[1].block_sources([]);
    wait_to_see(
        &carol,
        &room,
        "before bob's server knew of carol's",
        "carol's server never got bob's message from before bob's server knew of her",
    )
    .await;
}

/// The event of `(kind, "")` and carol's membership in `instance`'s current state of
/// `room`.
fn held(
    instance: &federation_tests::Instance,
    room: &str,
    kind: &str,
    carol: &str,
) -> (String, String) {
    let store = instance.running().services.rooms.store();
    let Ok(Some(record)) = store.room(room) else {
        return ("no room".into(), String::new());
    };
    let snapshot = record.record.state;
    let event = store
        .state_event(snapshot, kind, "")
        .ok()
        .flatten()
        .map(|e| e.event_id.clone())
        .unwrap_or_default();
    let membership = store
        .state_event(snapshot, "m.room.member", carol)
        .ok()
        .flatten()
        .and_then(|e| e.content()["membership"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "none".into());
    (event, membership)
}

/// `instance`'s forward extremities of `room` and every event it holds of it, as
/// `id type sender prev=[..]` (for a failure's report).
fn graph_of(instance: &federation_tests::Instance, room: &str) -> Vec<String> {
    let store = instance.running().services.rooms.store();
    let Ok(Some(record)) = store.room(room) else {
        return vec!["no room".into()];
    };
    let mut out = vec![format!("extremities {:?}", record.record.extremities)];
    for (_, short) in store
        .timeline(record.short, 0, u64::MAX, true, 1000)
        .unwrap_or_default()
    {
        if let Ok(event) = store.event(short) {
            out.push(format!(
                "{} {} {} prev={}",
                event.event_id,
                event.kind(),
                event.sender(),
                event.pdu()["prev_events"]
            ));
        }
    }
    out
}

/// A state reset: carol joins through alice's server while bob's server, cut off, makes
/// the room invite-only. Once healed, bob's server and alice's resolve carol out (v2 state
/// resolution re-checks her join against the resolved join rule) and count carol's
/// server out of the room, so neither would send it anything again, nor let it read the
/// branch that put it out (403: not in the room). Alice's server, which had carol's
/// server in the room until then, sends it the room's latest events and lets it read what
/// it held then, so carol's server computes the same state from the same graph.
#[tokio::test]
async fn a_server_a_state_reset_put_out_of_the_room_computes_the_same_state() {
    let (cluster, proxies) = three_behind_proxies().await;
    let [a, b, c] = [0, 1, 2].map(|i| &cluster.instances[i]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let carol = User::register(c, "carol").await.unwrap();
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_version": "12",
            "power_level_content_override": {"users": {bob.user_id.clone(): 100}}}))
        .await;
    bob.join_via(&room, a.name()).await;
    say(&bob, &room, "joined").await;
    wait_to_see(&alice, &room, "joined", "bob's message never came").await;

    // Bob's server cut off from both others: it makes the room invite-only while carol
    // joins through alice's server.
    proxies[0].block_sources([source(1)]);
    proxies[1].block_sources([source(0), source(2)]);
    proxies[2].block_sources([source(1)]);
    let (status, body) = bob
        .put(
            &format!("/rooms/{}/state/m.room.join_rules/", enc(&room)),
            json!({"join_rule": "invite"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let invite_only = body["event_id"].as_str().unwrap().to_owned();
    carol.join_via(&room, a.name()).await;
    say(&carol, &room, "carol joined").await;
    wait_to_see(
        &alice,
        &room,
        "carol joined",
        "carol's message never reached alice",
    )
    .await;
    assert_eq!(
        held(c, &room, "m.room.join_rules", &carol.user_id).1,
        "join"
    );

    // Healed: every server ends with bob's join rule and carol out.
    for proxy in &proxies {
        proxy.block_sources([]);
    }
    say(&bob, &room, "bob after healing").await;
    say(&alice, &room, "alice after healing").await;
    let started = Instant::now();
    loop {
        let now: Vec<_> = [a, b, c]
            .iter()
            .map(|i| held(i, &room, "m.room.join_rules", &carol.user_id))
            .collect();
        if now
            .iter()
            .all(|(rule, membership)| rule == &invite_only && membership != "join")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no convergence: (join rule, carol's membership) on each server {now:?}, bob's rule {invite_only}; graphs: {:#?}",
            [a, b, c].map(|i| graph_of(i, &room))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What carol's server may read of alice's: what alice's held at the reset, not what
    // came after; bob's server, which never counted it in the room, answers 403.
    let event = |id: &str| format!("/_matrix/federation/v1/event/{}", enc(id));
    let (status, body) = c
        .ask(a.name(), reqwest::Method::GET, &event(&invite_only), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, sent) = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/later", enc(&room)),
            json!({"msgtype": "m.text", "body": "after the reset"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let later = sent["event_id"].as_str().unwrap();
    let (status, body) = c
        .ask(a.name(), reqwest::Method::GET, &event(later), None)
        .await;
    assert_eq!(status, 404, "an event after the reset was served: {body}");
    let state_ids = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(&room),
        enc(&invite_only)
    );
    let (status, body) = c
        .ask(b.name(), reqwest::Method::GET, &state_ids, None)
        .await;
    assert_eq!(status, 403, "{body}");
    drop(proxies);
    cluster.shutdown().await;
}

//! A room's server ACL between two real ourwhats: once the room on `a` denies IP-literal
//! server names (every test server is one), `b` is refused on every endpoint the spec
//! protects, and the events its users send no longer enter the room on `a`.

use std::time::Duration;

use federation_tests::{enc, Cluster, User};
use reqwest::Method;
use serde_json::json;

async fn seen_by(user: &User, room: &str, body: &str) -> bool {
    let (status, page) = user
        .get(&format!("/rooms/{}/messages?dir=b&limit=30", enc(room)))
        .await;
    status == 200
        && page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["content"]["body"] == body)
}

#[tokio::test]
async fn a_server_the_acl_denies_is_refused_everywhere() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join_via(&room, a.name()).await;
    let (status, _) = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/m1", enc(&room)),
            json!({"msgtype": "m.text", "body": "before the acl"}),
        )
        .await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    while !seen_by(&alice, &room, "before the acl").await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bob's message never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, page) = alice
        .get(&format!("/rooms/{}/messages?dir=b&limit=1", enc(&room)))
        .await;
    let latest = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();

    let (status, body) = alice
        .put(
            &format!("/rooms/{}/state/m.room.server_acl/", enc(&room)),
            json!({"allow": ["*"], "deny": [], "allow_ip_literals": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let forbidden = |(status, body): (u16, serde_json::Value), what: &str| {
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{what}: {body}"
        );
    };
    let carl = format!("@carl:{}", b.name());
    let r = enc(&room);
    for (what, method, path, body) in [
        (
            "make_join",
            Method::GET,
            format!("/_matrix/federation/v1/make_join/{r}/{}?ver=12", enc(&carl)),
            None,
        ),
        (
            "make_leave",
            Method::GET,
            format!(
                "/_matrix/federation/v1/make_leave/{r}/{}",
                enc(&bob.user_id)
            ),
            None,
        ),
        (
            "make_knock",
            Method::GET,
            format!(
                "/_matrix/federation/v1/make_knock/{r}/{}?ver=12",
                enc(&carl)
            ),
            None,
        ),
        (
            "state_ids",
            Method::GET,
            format!(
                "/_matrix/federation/v1/state_ids/{r}?event_id={}",
                enc(&latest)
            ),
            None,
        ),
        (
            "state",
            Method::GET,
            format!("/_matrix/federation/v1/state/{r}?event_id={}", enc(&latest)),
            None,
        ),
        (
            "backfill",
            Method::GET,
            format!(
                "/_matrix/federation/v1/backfill/{r}?v={}&limit=5",
                enc(&latest)
            ),
            None,
        ),
        (
            "event_auth",
            Method::GET,
            format!("/_matrix/federation/v1/event_auth/{r}/{}", enc(&latest)),
            None,
        ),
        (
            "get_missing_events",
            Method::POST,
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({"earliest_events": [], "latest_events": [latest], "limit": 5})),
        ),
        (
            "event",
            Method::GET,
            format!("/_matrix/federation/v1/event/{}", enc(&latest)),
            None,
        ),
    ] {
        forbidden(b.ask(a.name(), method, &path, body).await, what);
    }

    // Bob's events no longer enter the room on a.
    let (status, _) = bob
        .put(
            &format!("/rooms/{}/send/m.room.message/m2", enc(&room)),
            json!({"msgtype": "m.text", "body": "after the acl"}),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!seen_by(&alice, &room, "after the acl").await);
    cluster.shutdown().await;
}

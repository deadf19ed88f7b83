//! Push notifications (client-server API "Push Notifications", push gateway API): pushers
//! set and listed over HTTP, and notifications delivered to a small push gateway the test
//! runs on loopback, which answers as it is told (500, 200, a rejected pushkey).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common;
use common::client::{enc, Client};
use common::{assert_error, TestServer};
use ourwhats::config::IpNet;

/// A push gateway: what it was sent, and the answers it gives in turn (then 200 `{}`).
#[derive(Default)]
struct Gateway {
    received: Mutex<Vec<Value>>,
    answers: Mutex<VecDeque<(u16, Value)>>,
}

async fn notify(
    State(gateway): State<Arc<Gateway>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    gateway.received.lock().unwrap().push(body);
    let (status, answer) = gateway
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, json!({"rejected": []})));
    (StatusCode::from_u16(status).unwrap(), Json(answer))
}

/// The test's certificate authority: its certificate (PEM, in a file the server is told
/// to trust as `federation.trusted_ca`) and a gateway certificate for 127.0.0.1 it signed.
struct TestCa {
    _dir: tempfile::TempDir,
    cert_path: std::path::PathBuf,
    gateway_cert: String,
    gateway_key: String,
}

fn test_ca() -> &'static TestCa {
    static CA: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ourwhats push test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("ca.crt");
        std::fs::write(&cert_path, issuer.pem()).unwrap();
        TestCa {
            _dir: dir,
            cert_path,
            gateway_cert: cert.pem(),
            gateway_key: key.serialize_pem(),
        }
    })
}

impl Gateway {
    /// A gateway on loopback over HTTPS (gateway URLs must be https), with a certificate
    /// from the test's CA.
    async fn start() -> (Arc<Self>, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let gateway = Arc::new(Self::default());
        let app = Router::new()
            .route("/_matrix/push/v1/notify", post(notify))
            .with_state(Arc::clone(&gateway));
        let ca = test_ca();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            ca.gateway_cert.as_bytes().to_vec(),
            ca.gateway_key.as_bytes().to_vec(),
        )
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        (gateway, format!("https://{addr}/_matrix/push/v1/notify"))
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests came (or 30 s pass: pushes run at the lowest CPU
    /// priority, and the other tests keep the machine busy); answers them all.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let started = Instant::now();
        while self.received().len() < n && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.received()
    }
}

/// Lets pushes reach loopback (where the test's gateway is), trusting the test's CA.
fn allow_loopback(config: &mut ourwhats::config::Config) {
    config.federation.ip_range_allowlist = vec![IpNet::parse("127.0.0.0/8").unwrap()];
    config.federation.trusted_ca = Some(test_ca().cert_path.clone());
}

/// A server whose pushes may reach loopback.
async fn server() -> TestServer {
    TestServer::start_with(allow_loopback).await
}

fn pusher(url: &str, pushkey: &str) -> Value {
    json!({
        "pushkey": pushkey, "kind": "http", "app_id": "org.example.chat",
        "app_display_name": "Chat", "device_display_name": "Phone", "lang": "en",
        "data": {"url": url, "extra": "kept"},
    })
}

async fn set(client: &Client<'_>, body: Value) -> (StatusCode, Value) {
    client.post("/pushers/set", body).await
}

async fn pushers_of(client: &Client<'_>) -> Vec<Value> {
    let (status, body) = client.get("/pushers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pushers"].as_array().unwrap().clone()
}

/// The pushkeys of the client's user's pushers.
async fn pushkeys_of(client: &Client<'_>) -> Vec<String> {
    pushers_of(client)
        .await
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect()
}

/// Makes `client`'s user ignore exactly `users` (`m.ignored_user_list`).
async fn ignore(client: &Client<'_>, users: &[&str]) {
    let list: serde_json::Map<String, Value> =
        users.iter().map(|u| ((*u).to_owned(), json!({}))).collect();
    let path = format!(
        "/user/{}/account_data/m.ignored_user_list",
        enc(&client.user_id)
    );
    let (status, body) = client.put(&path, json!({ "ignored_users": list })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A private room alice made, bob and carol joined.
async fn room_of_three(alice: &Client<'_>, bob: &Client<'_>, carol: &Client<'_>) -> String {
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id, carol.user_id]}))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);
    room
}

/// Alice's DM with bob, both joined.
async fn dm(alice: &Client<'_>, bob: &Client<'_>) -> String {
    let room = alice
        .create_room(
            json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
        )
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    room
}

#[tokio::test]
async fn messages_reach_the_gateway_with_the_unread_count() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    // Made before the pushers: its invites would be pushed too, and are not what
    // this test counts.
    let (gateway, url) = Gateway::start().await;
    let (status, body) = set(&bob, pusher(&url, "bob-phone")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = pushers_of(&bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["pushkey"], "bob-phone");
    assert_eq!(listed[0]["data"]["url"], url.as_str());
    assert!(pushers_of(&alice).await.is_empty());

    let first = alice.text(&room, "hello bob").await;
    let got = gateway.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0]["notification"];
    assert_eq!(n["event_id"], first.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["prio"], "high", "a one-to-one message sounds");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.chat");
    assert_eq!(device["pushkey"], "bob-phone");
    assert_eq!(device["data"], json!({"extra": "kept"}), "url left out");
    assert_eq!(device["tweaks"]["sound"], "default");

    let second = alice.text(&room, "are you there").await;
    let got = gateway.wait_for(2).await;
    assert_eq!(got[1]["notification"]["event_id"], second.as_str());
    assert_eq!(got[1]["notification"]["counts"]["unread"], 2);
    // Bob reads; the next one counts alone.
    let (status, body) = bob
        .post(&format!("/rooms/{room}/receipt/m.read/{second}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The read clears the phone's badge: a push of the count alone, zero included.
    let got = gateway.wait_for(3).await;
    let cleared = &got[2]["notification"];
    assert_eq!(cleared["counts"], json!({"unread": 0}), "{cleared}");
    assert!(cleared.get("event_id").is_none(), "{cleared}");
    assert_eq!(cleared["devices"][0]["pushkey"], "bob-phone");
    // The same receipt again changes no count: nothing is pushed.
    let (status, _) = bob
        .post(&format!("/rooms/{room}/receipt/m.read/{second}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    alice.text(&room, "third").await;
    let got = gateway.wait_for(4).await;
    assert_eq!(
        got[3]["notification"]["counts"]["unread"], 1,
        "{:?}",
        got[3]
    );
    // Alice's own messages never push to her, and bob's to alice: she has no pusher.
    bob.text(&room, "yes").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.received().len(), 4);

    // `event_id_only`: ids, counts and devices, no content.
    let mut slim = pusher(&url, "bob-tablet");
    slim["data"]["format"] = json!("event_id_only");
    assert_eq!(set(&bob, slim).await.0, StatusCode::OK);
    alice.text(&room, "fourth").await;
    let got = gateway.wait_for(6).await;
    assert_eq!(got.len(), 6, "one request per device");
    let slim = got
        .iter()
        .find(|b| b["notification"]["devices"][0]["pushkey"] == "bob-tablet")
        .unwrap();
    assert!(slim["notification"].get("content").is_none(), "{slim}");
    assert!(slim["notification"].get("sender").is_none(), "{slim}");
    // Bob's "yes" read what came before it: "fourth" is his one unread.
    assert_eq!(slim["notification"]["counts"]["unread"], 1);
    s.stop().await;
}

/// The badge (`counts.unread`) sums the user's unread notifications across their rooms:
/// those from before the pusher existed, a room read through leaves it and comes back
/// with its next notification, a room left stops counting.
#[tokio::test]
async fn the_badge_counts_every_room_with_unread_notifications() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let carol = Client::new(&s, "carol").await;
    let bob = Client::new(&s, "bob").await;
    let with_alice = dm(&alice, &bob).await;
    let with_carol = dm(&carol, &bob).await;
    // Two unread before bob has a pusher.
    alice.text(&with_alice, "one").await;
    let last_from_alice = alice.text(&with_alice, "two").await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let badge = |got: &[Value], n: usize| got[n]["notification"]["counts"]["unread"].clone();

    carol.text(&with_carol, "three").await;
    let got = gateway.wait_for(1).await;
    assert_eq!(badge(&got, 0), 3, "{:?}", got[0]);

    // Bob reads alice's room through: it no longer counts.
    let (status, body) = bob
        .post(
            &format!("/rooms/{with_alice}/receipt/m.read/{last_from_alice}"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The phone hears of it at once: carol's "three" is left.
    let got = gateway.wait_for(2).await;
    assert_eq!(badge(&got, 1), 1, "{:?}", got[1]);
    assert!(got[1]["notification"].get("event_id").is_none());
    carol.text(&with_carol, "four").await;
    let got = gateway.wait_for(3).await;
    assert_eq!(badge(&got, 2), 2, "{:?}", got[2]);

    // Its next message brings it back.
    alice.text(&with_alice, "five").await;
    let got = gateway.wait_for(4).await;
    assert_eq!(badge(&got, 3), 3, "{:?}", got[3]);

    // A room bob left counts no more.
    assert_eq!(
        bob.post(&format!("/rooms/{with_carol}/leave"), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    alice.text(&with_alice, "six").await;
    let got = gateway.wait_for(5).await;
    assert_eq!(badge(&got, 4), 2, "{:?}", got[4]);
    assert_eq!(got.len(), 5, "{got:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_failing_gateway_is_retried_and_a_rejected_pushkey_loses_its_pusher() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    // Made before the pushers: its invites would be pushed too, and are not what
    // this test counts.
    let (gateway, url) = Gateway::start().await;
    gateway
        .answers
        .lock()
        .unwrap()
        .extend([(500, json!({})), (200, json!({"rejected": []}))]);
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let first = alice.text(&room, "one").await;
    // Refused once, sent again after the back-off: the same notification twice.
    let got = gateway.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["notification"]["event_id"], first.as_str());
    assert_eq!(got[1]["notification"]["event_id"], first.as_str());

    // The gateway rejects the pushkey: the pusher is removed, nothing more is sent.
    gateway
        .answers
        .lock()
        .unwrap()
        .push_back((200, json!({"rejected": ["bob-phone"]})));
    alice.text(&room, "two").await;
    assert_eq!(gateway.wait_for(3).await.len(), 3);
    let started = Instant::now();
    while !pushers_of(&bob).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pusher stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.text(&room, "three").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gateway.received().len(), 3);

    // Set again with the same pushkey, it starts afresh: "three", sent while there was
    // no pusher, is not pushed late; what comes after is.
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let four = alice.text(&room, "four").await;
    let got = gateway.wait_for(4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3]["notification"]["event_id"], four.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.received().len(), 4);
    s.stop().await;
}

/// A pusher whose user is never notified (here: a room muted) neither holds the queue back
/// for others nor gets anything; the other user's pushes flow, also across a restart.
#[tokio::test]
async fn a_pusher_never_notified_holds_nothing_back() {
    let mut s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let room = room_of_three(&alice, &bob, &carol).await;
    // Made before the pushers: its invites would be pushed too, and are not what
    // this test counts.
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    assert_eq!(
        set(&carol, pusher(&url, "carol-phone")).await.0,
        StatusCode::OK
    );
    let (status, _) = carol
        .put(
            &format!("/pushrules/global/room/{}", enc(&room)),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for n in 0..5 {
        alice.text(&room, &format!("before {n}")).await;
    }
    assert_eq!(gateway.wait_for(5).await.len(), 5);
    let login = (
        alice.user_id.clone(),
        alice.token.clone(),
        alice.device_id.clone(),
    );
    drop((alice, bob, carol));
    s.restart_with(allow_loopback).await;
    let alice = Client::signed_in(&s, &login);
    let after = alice.text(&room, "after the restart").await;
    let got = gateway.wait_for(6).await;
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[5]["notification"]["event_id"], after.as_str());
    assert!(got
        .iter()
        .all(|g| g["notification"]["devices"][0]["pushkey"] == "bob-phone"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gateway.received().len(),
        6,
        "nothing pushed twice after the restart"
    );
    s.stop().await;
}

#[tokio::test]
async fn pushers_are_checked_replaced_and_go_with_their_device() {
    let s = server().await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";

    // Refusals, each named.
    let mut email = pusher(url, "k");
    email["kind"] = json!("email");
    let (status, body) = set(&bob, email).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    assert!(body["error"].as_str().unwrap().contains("email"), "{body}");
    let (status, body) = set(&bob, pusher("https://push.example.org/elsewhere", "k")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    // Spec: "MUST be an HTTPS URL".
    let plain = set(
        &bob,
        pusher("http://push.example.org/_matrix/push/v1/notify", "k"),
    )
    .await;
    assert_error(plain.0, &plain.1, 400, "M_INVALID_PARAM");
    assert!(
        plain.1["error"].as_str().unwrap().contains("https"),
        "{}",
        plain.1
    );
    let mut no_url = pusher(url, "k");
    no_url["data"] = json!({});
    let (status, body) = set(&bob, no_url).await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    let (status, body) = set(&bob, json!({"kind": "http"})).await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");

    // The same app id and pushkey replaces; `append: false` takes it from carol.
    assert_eq!(set(&carol, pusher(url, "shared")).await.0, StatusCode::OK);
    assert_eq!(set(&bob, pusher(url, "shared")).await.0, StatusCode::OK);
    assert!(
        pushers_of(&carol).await.is_empty(),
        "append false removes others'"
    );
    let mut renamed = pusher(url, "shared");
    renamed["device_display_name"] = json!("New phone");
    assert_eq!(set(&bob, renamed).await.0, StatusCode::OK);
    let listed = pushers_of(&bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["device_display_name"], "New phone");
    let mut appended = pusher(url, "shared");
    appended["append"] = json!(true);
    assert_eq!(set(&carol, appended).await.0, StatusCode::OK);
    assert_eq!(pushers_of(&bob).await.len(), 1, "append true keeps bob's");

    // `kind: null` deletes (a second time is no error).
    let mut delete = pusher(url, "shared");
    delete["kind"] = Value::Null;
    assert_eq!(set(&bob, delete.clone()).await.0, StatusCode::OK);
    assert_eq!(set(&bob, delete).await.0, StatusCode::OK);
    assert!(pushers_of(&bob).await.is_empty());

    // A pusher belongs to the device that set it: logging that device out removes it,
    // the other device's stays.
    let phone = bob.another_device().await;
    assert_eq!(set(&phone, pusher(url, "phone")).await.0, StatusCode::OK);
    assert_eq!(set(&bob, pusher(url, "laptop")).await.0, StatusCode::OK);
    assert_eq!(pushers_of(&bob).await.len(), 2);
    let (status, _) = phone.post("/logout", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let left = pushers_of(&bob).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["pushkey"], "laptop");

    // A password change that logs the other devices out takes their pushers.
    let tablet = bob.another_device().await;
    assert_eq!(set(&tablet, pusher(url, "tablet")).await.0, StatusCode::OK);
    let (status, body) = bob
        .post(
            "/account/password",
            json!({"new_password": "another horse battery",
                   "auth": {"type": "m.login.password", "password": "correct horse battery",
                            "identifier": {"type": "m.id.user", "user": bob.user_id}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pushkeys_of(&bob).await, ["laptop"]);

    // Deleting a device (`DELETE /devices/{deviceId}`, with the password) takes its pusher.
    let (status, login) = s.login(&bob.user_id, "another horse battery").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let signed_in = (
        bob.user_id.clone(),
        login["access_token"].as_str().unwrap().to_owned(),
        login["device_id"].as_str().unwrap().to_owned(),
    );
    let watch = Client::signed_in(&s, &signed_in);
    assert_eq!(set(&watch, pusher(url, "watch")).await.0, StatusCode::OK);
    assert_eq!(pushers_of(&bob).await.len(), 2);
    let path = format!("/devices/{}", watch.device_id);
    let (status, challenge) = bob
        .call(reqwest::Method::DELETE, &path, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let (status, body) = bob
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(
                json!({"auth": {"type": "m.login.password", "password": "another horse battery",
                                 "session": challenge["session"],
                                 "identifier": {"type": "m.id.user", "user": bob.user_id}}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pushkeys_of(&bob).await, ["laptop"]);
    s.stop().await;
}

/// The user's push rules decide what is pushed and how: a group message without sound is
/// low priority, a mention high with its highlight tweak, and a room muted by a room rule
/// pushes nothing but what an override rule (the mention) still asks for.
#[tokio::test]
async fn push_rules_decide_what_reaches_the_gateway() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let room = room_of_three(&alice, &bob, &carol).await;
    // Made before the pushers: its invites would be pushed too, and are not what
    // this test counts.
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);

    let plain = alice.text(&room, "hello all").await;
    let got = gateway.wait_for(1).await;
    assert_eq!(got[0]["notification"]["event_id"], plain.as_str());
    assert_eq!(got[0]["notification"]["prio"], "low", "{got:?}");
    assert!(got[0]["notification"]["devices"][0]["tweaks"]
        .get("sound")
        .is_none());

    let mention = alice.mention(&room, &bob.user_id, "bob, look").await;
    let got = gateway.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let n = &got[1]["notification"];
    assert_eq!(n["event_id"], mention.as_str());
    assert_eq!(n["prio"], "high");
    assert_eq!(n["devices"][0]["tweaks"]["highlight"], true, "{n}");

    // bob mutes the room: a plain message is not pushed, a mention still is.
    let (status, body) = bob
        .put(
            &format!("/pushrules/global/room/{}", enc(&room)),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let muted = alice.text(&room, "nobody needs to hear this").await;
    let again = alice.mention(&room, &bob.user_id, "bob, again").await;
    let got = gateway.wait_for(3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2]["notification"]["event_id"], again.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gateway
            .received()
            .iter()
            .all(|g| g["notification"]["event_id"] != muted.as_str()),
        "a muted room's message was pushed"
    );
    // bob's own messages are not pushed to him.
    bob.text(&room, "my own words").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.received().len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn pushes_never_reach_loopback_unless_allowed() {
    // The default configuration: loopback is not an address pushes may reach (the
    // gateway's certificate is trusted, so only the address guard stands in the way).
    let s = TestServer::start_with(|config| {
        config.federation.trusted_ca = Some(test_ca().cert_path.clone());
    })
    .await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let mapped = url.replace("127.0.0.1", "[::ffff:127.0.0.1]");
    assert_eq!(
        set(&bob, pusher(&mapped, "bob-mapped")).await.0,
        StatusCode::OK
    );
    let localhost = url.replace("127.0.0.1", "localhost");
    assert_eq!(
        set(&bob, pusher(&localhost, "bob-named")).await.0,
        StatusCode::OK
    );
    let room = dm(&alice, &bob).await;
    alice.text(&room, "hello").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(gateway.received().is_empty(), "{:?}", gateway.received());
    s.stop().await;
}

#[tokio::test]
async fn queued_pushes_survive_a_restart() {
    let mut s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let (gateway, url) = Gateway::start().await;
    // The gateway fails everything for now: the notification stays queued.
    gateway
        .answers
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n((500, json!({})), 1_000));
    // Made before the pusher: its invite would be queued too, and retried first.
    let room = dm(&alice, &bob).await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let event = alice.text(&room, "while the gateway is down").await;
    assert!(!gateway.wait_for(1).await.is_empty(), "tried at least once");
    drop((alice, bob));

    // Restarted; from now on the gateway takes what it is sent.
    s.restart_with(allow_loopback).await;
    let tried_before = gateway.received().len();
    gateway.answers.lock().unwrap().clear();
    let got = gateway.wait_for(tried_before + 1).await;
    let after: Vec<&Value> = got[tried_before..].iter().collect();
    assert!(
        after
            .iter()
            .any(|b| b["notification"]["event_id"] == event.as_str()),
        "the queued notification was sent again after the restart: {after:?}"
    );
    s.stop().await;
}

/// Entries held back by a failing gateway go out in their order once it answers again,
/// each with the badge as it is when they leave.
#[tokio::test]
async fn pushes_held_back_by_a_failing_gateway_leave_in_order_with_the_current_badge() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    // Made before the pushers: its invites would be pushed too, and are not what
    // this test counts.
    let (gateway, url) = Gateway::start().await;
    // Refused at once and again after the first back-off (1 s): the next try comes 2 s
    // later, long after the two messages below are stored.
    gateway
        .answers
        .lock()
        .unwrap()
        .extend([(500, json!({})), (500, json!({}))]);
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let first = alice.text(&room, "one").await;
    assert_eq!(gateway.wait_for(1).await.len(), 1, "refused once");
    let second = alice.text(&room, "two").await;
    let third = alice.text(&room, "three").await;
    let got = gateway.wait_for(5).await;
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[1]["notification"]["event_id"], first.as_str());
    let ids: Vec<&Value> = got[2..]
        .iter()
        .map(|b| &b["notification"]["event_id"])
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str(), third.as_str()]);
    for body in &got[2..] {
        assert_eq!(body["notification"]["counts"]["unread"], 3, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.received().len(), 5);
    s.stop().await;
}

/// Passed entries are deleted while a pusher whose gateway fails is still behind them:
/// the pushers that move on must not take its entries with theirs. A restart makes the
/// pusher behind read its entries from the queue again.
#[tokio::test]
async fn a_pusher_kept_behind_by_its_gateway_still_gets_what_others_have_passed() {
    let mut s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let room = room_of_three(&alice, &bob, &carol).await;
    // Made before the pushers: its invites would be pushed too, and are not what
    // this test counts.
    let (bobs_gateway, bobs_url) = Gateway::start().await;
    let (carols_gateway, carols_url) = Gateway::start().await;
    // Bob's gateway refuses everything for now; carol's pushes go through, and the queue
    // behind them is cleared (at most once a second) while bob's pusher backs off.
    bobs_gateway
        .answers
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n((500, json!({})), 1_000));
    assert_eq!(
        set(&bob, pusher(&bobs_url, "bob-phone")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        set(&carol, pusher(&carols_url, "carol-phone")).await.0,
        StatusCode::OK
    );
    let mut sent = Vec::new();
    for n in 0..4 {
        sent.push(alice.text(&room, &format!("message {n}")).await);
        assert_eq!(carols_gateway.wait_for(n + 1).await.len(), n + 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Past bob's second try (1 s after the first), each try a pass that may delete.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let ids = |bodies: &[Value]| -> Vec<Value> {
        bodies
            .iter()
            .map(|b| b["notification"]["event_id"].clone())
            .collect()
    };
    let expected: Vec<Value> = sent.iter().map(|id| json!(id)).collect();
    assert_eq!(ids(&carols_gateway.received()), expected);
    drop((alice, bob, carol));

    // After the restart bob's gateway takes everything: all four, in order.
    s.restart_with(allow_loopback).await;
    let tried = bobs_gateway.received().len();
    assert!(tried >= 2, "tried and refused before the restart: {tried}");
    bobs_gateway.answers.lock().unwrap().clear();
    bobs_gateway.wait_for(tried + 4).await;
    // A try refused between the restart and the line above is retried after 1 s.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let got = bobs_gateway.received();
    assert_eq!(ids(&got[got.len() - 4..]), expected, "{got:?}");
    assert_eq!(carols_gateway.received().len(), 4, "nothing pushed twice");
    s.stop().await;
}

/// Two localparts whose user ids on `server_name` share a push queue tag (the 32-bit
/// FNV-1a hash of the id: queue entries list tags, not ids).
fn colliding_localparts(server_name: &str) -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for n in 0u64.. {
        let local = format!("u{n}");
        let tag = ourwhats::core::fnv::fnv1a_32(format!("@{local}:{server_name}").bytes());
        if let Some(first) = seen.insert(tag, local.clone()) {
            return (first, local);
        }
    }
    unreachable!("the tags are 32 bits")
}

/// A queue entry names its users by a 32-bit tag, so a user whose tag only collides with a
/// notified one's is offered the entry: what they are sent is decided by their own
/// notification entry, and they get nothing (queue.rs). Their pusher is not held back
/// either: what does notify them later reaches them.
#[tokio::test]
async fn a_user_whose_queue_tag_collides_with_a_notified_one_gets_nothing() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let server_name = alice.user_id.split_once(':').unwrap().1.to_owned();
    let (first, second) = colliding_localparts(&server_name);
    let carol = Client::new(&s, &first).await;
    let dave = Client::new(&s, &second).await;
    assert_eq!(
        ourwhats::core::fnv::fnv1a_32(carol.user_id.bytes()),
        ourwhats::core::fnv::fnv1a_32(dave.user_id.bytes())
    );
    // Dave is in the room, but its messages do not notify him.
    let room = room_of_three(&alice, &carol, &dave).await;
    let (status, _) = dave
        .put(
            &format!("/pushrules/global/room/{}", enc(&room)),
            json!({"actions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (gateway, url) = Gateway::start().await;
    assert_eq!(
        set(&carol, pusher(&url, "carol-phone")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        set(&dave, pusher(&url, "dave-phone")).await.0,
        StatusCode::OK
    );
    let said = alice.text(&room, "for carol's phone").await;
    let got = gateway.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["notification"]["event_id"], said.as_str());
    assert_eq!(
        got[0]["notification"]["devices"][0]["pushkey"],
        "carol-phone"
    );
    // A DM does notify dave (its invite, then a message): his pusher went past the
    // entry that was not his.
    let direct = dm(&alice, &dave).await;
    let for_dave = alice.text(&direct, "for dave's phone").await;
    gateway.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = gateway.received();
    assert_eq!(got.len(), 3, "{got:?}");
    let to_dave: Vec<&Value> = got[1..].iter().map(|g| &g["notification"]).collect();
    assert!(
        to_dave
            .iter()
            .all(|n| n["devices"][0]["pushkey"] == "dave-phone" && n["room_id"] == direct.as_str()),
        "{got:?}"
    );
    assert_eq!(to_dave[0]["content"]["membership"], "invite");
    assert_eq!(to_dave[1]["event_id"], for_dave.as_str());
    s.stop().await;
}

/// An invite notifies the invited user (spec: push rules, `.m.rule.invite_for_me`),
/// who is not a member yet: their phone hears of it, with `user_is_target`. Nobody
/// else's rules are asked about it (carol, joined, is not notified).
#[tokio::test]
async fn an_invite_reaches_the_invited_users_phone() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    assert_eq!(
        set(&carol, pusher(&url, "carol-phone")).await.0,
        StatusCode::OK
    );
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Plans", "invite": [carol.user_id]}))
        .await;
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);
    let (status, body) = alice.invite(&room, &bob.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = gateway.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = gateway.received();
    let to = |pushkey: &str| -> Vec<&Value> {
        got_all
            .iter()
            .filter(|g| g["notification"]["devices"][0]["pushkey"] == pushkey)
            .map(|g| &g["notification"])
            .collect()
    };
    // Both invites are pushed, each to its invitee only: carol's when the room was made,
    // bob's now (carol, joined by then, is not told of it).
    let (bobs, carols) = (to("bob-phone"), to("carol-phone"));
    assert_eq!(bobs.len(), 1, "{got:?}");
    let n = bobs[0];
    assert_eq!(n["type"], "m.room.member", "{n}");
    assert_eq!(n["content"]["membership"], "invite", "{n}");
    assert_eq!(n["user_is_target"], true, "{n}");
    assert_eq!(n["room_id"], room.as_str(), "{n}");
    assert_eq!(n["room_name"], "Plans", "{n}");
    assert_eq!(n["sender"], alice.user_id.as_str(), "{n}");
    // The badge counts a pending invite once.
    assert_eq!(n["counts"]["unread"], 1, "{n}");
    assert_eq!(carols.len(), 1, "{got_all:?}");
    assert_eq!(carols[0]["content"]["membership"], "invite");
    assert_eq!(carols[0]["user_is_target"], true);
    // Once bob has joined, his invite is not an unread notification of the room: the
    // next message makes one, for the badge and for `/sync`.
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let said = alice.text(&room, "welcome bob").await;
    gateway.wait_for(4).await;
    let got = gateway.received();
    let to_bob = got
        .iter()
        .map(|g| &g["notification"])
        .find(|n| n["event_id"] == said.as_str() && n["devices"][0]["pushkey"] == "bob-phone")
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(to_bob["counts"]["unread"], 1, "{to_bob}");
    let synced = bob.sync("").await;
    assert_eq!(
        synced["rooms"]["join"][room.as_str()]["unread_notifications"]["notification_count"],
        1,
        "{synced}"
    );
    s.stop().await;
}

/// A message redacted while its push waits (its gateway failing) is not pushed late: the
/// redaction takes its notification away, and the retry sends only what is still there.
#[tokio::test]
async fn a_message_redacted_before_its_push_leaves_is_not_pushed() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    let (gateway, url) = Gateway::start().await;
    // Refused at once: the next try comes after the first back-off (1 s).
    gateway.answers.lock().unwrap().push_back((500, json!({})));
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let first = alice.text(&room, "one").await;
    assert_eq!(gateway.wait_for(1).await.len(), 1, "refused once");
    let regretted = alice.text(&room, "sent by mistake").await;
    let (status, body) = alice
        .put(&format!("/rooms/{room}/redact/{regretted}/r1"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let last = alice.text(&room, "three").await;
    let got = gateway.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = gateway.received();
    assert_eq!(got_all.len(), 3, "{got_all:?}");
    let ids: Vec<&Value> = got[1..]
        .iter()
        .map(|b| &b["notification"]["event_id"])
        .collect();
    assert_eq!(ids, [first.as_str(), last.as_str()], "{got_all:?}");
    // The badge no longer counts it either.
    assert_eq!(got_all[2]["notification"]["counts"]["unread"], 2);
    s.stop().await;
}

/// An invite from a user the invitee ignores is not pushed (spec: "Servers must not send
/// room invites from ignored users to clients"); one from someone else is.
#[tokio::test]
async fn an_invite_from_an_ignored_user_is_not_pushed() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    ignore(&bob, &[&alice.user_id]).await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let ignored = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    let welcome = carol
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    gateway.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = gateway.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["notification"]["room_id"], welcome.as_str());
    assert_ne!(got[0]["notification"]["room_id"], ignored.as_str());
    s.stop().await;
}

/// A rejected invite leaves the badge: the next invite counts alone.
#[tokio::test]
async fn a_rejected_invite_leaves_the_badge() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let first = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    let got = gateway.wait_for(1).await;
    assert_eq!(got[0]["notification"]["counts"]["unread"], 1, "{got:?}");
    let (status, body) = bob.post(&format!("/rooms/{first}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    let got = gateway.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["notification"]["room_id"], second.as_str());
    assert_eq!(got[1]["notification"]["counts"]["unread"], 1, "{got:?}");
    s.stop().await;
}

/// Messages from a user bob ignores neither push nor count for him (spec, "Ignoring
/// Users"; as Synapse), also after a restart; once he stops ignoring them, they do again.
/// Carol, who ignores nobody, is pushed everything.
#[tokio::test]
async fn messages_from_an_ignored_user_neither_push_nor_count() {
    let mut s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let room = room_of_three(&alice, &bob, &carol).await;
    ignore(&bob, &[&alice.user_id]).await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    assert_eq!(
        set(&carol, pusher(&url, "carol-phone")).await.0,
        StatusCode::OK
    );
    let pushed_to = |pushkey: &str| -> Vec<String> {
        gateway
            .received()
            .iter()
            .map(|g| &g["notification"])
            .filter(|n| n["devices"][0]["pushkey"] == pushkey)
            .map(|n| n["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let ignored = alice.text(&room, "bob does not see this").await;
    let heard = carol.text(&room, "bob sees this").await;
    // carol: alice's; bob: carol's.
    gateway.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pushed_to("bob-phone"), vec![heard.clone()]);
    assert_eq!(pushed_to("carol-phone"), vec![ignored.clone()]);
    let bobs = gateway
        .received()
        .into_iter()
        .find(|g| g["notification"]["devices"][0]["pushkey"] == "bob-phone")
        .unwrap();
    assert_eq!(bobs["notification"]["counts"]["unread"], 1, "{bobs}");
    let synced = bob.sync("").await;
    let unread = &synced["rooms"]["join"][room.as_str()]["unread_notifications"];
    assert_eq!(unread["notification_count"], 1, "{synced}");

    // The list is read again at start-up.
    let logins = [&alice, &bob].map(|c| (c.user_id.clone(), c.token.clone(), c.device_id.clone()));
    drop((alice, bob, carol));
    s.restart_with(allow_loopback).await;
    let [alice, bob] = logins.map(|l| Client::signed_in(&s, &l));
    let still_ignored = alice.text(&room, "nor this").await;
    gateway.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pushed_to("bob-phone"), vec![heard.clone()]);
    assert_eq!(pushed_to("carol-phone"), vec![ignored, still_ignored]);

    ignore(&bob, &[]).await;
    let heard_again = alice.text(&room, "bob sees this again").await;
    gateway.wait_for(5).await;
    assert_eq!(pushed_to("bob-phone"), vec![heard, heard_again]);
    let synced = bob.sync("").await;
    let unread = &synced["rooms"]["join"][room.as_str()]["unread_notifications"];
    assert_eq!(unread["notification_count"], 2, "{synced}");
    s.stop().await;
}

/// While every CPU is kept busy by work at the worker's own priority (the worker then
/// holds itself to a small share of one CPU), pushes still go out: the share is never
/// zero.
#[tokio::test]
async fn pushes_still_go_out_while_the_machine_is_busy() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    /// Busy loops on every CPU, stopped when dropped (also if the test fails).
    struct Hogs(
        Arc<std::sync::atomic::AtomicBool>,
        Vec<std::thread::JoinHandle<()>>,
    );
    impl Drop for Hogs {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            for hog in self.1.drain(..) {
                let _ = hog.join();
            }
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs = Hogs(
        Arc::clone(&stop),
        (0..cpus)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    // At the worker's niceness, so that the share, not the priority, is
                    // what holds it back.
                    ourwhats::services::background::lower_this_thread();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::black_box(0u64);
                    }
                })
            })
            .collect(),
    );
    // The worker looks at the machine when it is about to take more work (at most every
    // 250 ms): after this, its looks see the busy loops.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // More than the worker may do at once while the machine is busy (a burst of 50 ms
    // of CPU).
    let mut sent = Vec::new();
    for n in 0..150 {
        sent.push(alice.text(&room, &format!("busy {n}")).await);
    }
    let started = Instant::now();
    while gateway.received().len() < sent.len() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = gateway.received();
    drop(hogs);
    let pushed: Vec<&str> = got
        .iter()
        .map(|g| g["notification"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(pushed, sent, "every push, in order");
    s.stop().await;
}

/// `GET /notifications` lists a pending invite (as Synapse), though the invitee may read
/// nothing else of the room yet; once the invite is rejected, the room is not theirs to
/// read and it is listed no more.
#[tokio::test]
async fn a_pending_invite_is_listed_in_notifications() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    alice.text(&room, "before bob joins").await;
    let (status, body) = bob.get("/notifications").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body["notifications"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    let n = &listed[0];
    assert_eq!(n["room_id"], room.as_str(), "{n}");
    assert_eq!(n["read"], false, "{n}");
    assert_eq!(n["actions"][0], "notify", "{n}");
    let invite = &n["event"];
    assert_eq!(invite["type"], "m.room.member", "{n}");
    assert_eq!(invite["state_key"], bob.user_id.as_str(), "{n}");
    assert_eq!(invite["sender"], alice.user_id.as_str(), "{n}");
    assert_eq!(invite["content"]["membership"], "invite", "{n}");
    assert!(invite["event_id"].is_string(), "{n}");
    // Nothing else of the room is bob's to read yet.
    let (status, _) = bob.get(&format!("/rooms/{room}/messages?dir=b")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let event_id = invite["event_id"].as_str().unwrap();
    let (status, _) = bob
        .get(&format!("/rooms/{room}/event/{}", enc(event_id)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Not while bob ignores alice (spec: invites from ignored users are not sent).
    ignore(&bob, &[&alice.user_id]).await;
    let (_, body) = bob.get("/notifications").await;
    assert_eq!(body["notifications"], json!([]), "{body}");
    ignore(&bob, &[]).await;
    let (_, body) = bob.get("/notifications").await;
    assert_eq!(body["notifications"].as_array().unwrap().len(), 1, "{body}");

    let (status, body) = bob.post(&format!("/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob.get("/notifications").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["notifications"], json!([]), "{body}");
    s.stop().await;
}

/// The room's state from a user bob ignores still notifies him (spec, "Ignoring Users":
/// state events are still sent; as Synapse): a tombstone is a highlight.
#[tokio::test]
async fn state_from_an_ignored_user_still_notifies() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    ignore(&bob, &[&alice.user_id]).await;
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    alice.text(&room, "ignored").await;
    let (status, body) = alice
        .put(
            &format!("/rooms/{room}/state/m.room.tombstone"),
            json!({"body": "moved", "replacement_room": "!elsewhere:example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tombstone = body["event_id"].as_str().unwrap().to_owned();
    let got = gateway.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = gateway.received();
    assert_eq!(got_all.len(), 1, "{got_all:?}");
    let n = &got[0]["notification"];
    assert_eq!(n["event_id"], tombstone.as_str(), "{n}");
    assert_eq!(n["devices"][0]["tweaks"]["highlight"], true, "{n}");
    s.stop().await;
}

/// A member whose stored push rules cannot be decoded (a damaged record) fails nobody's
/// sends: the server's default rules stand in for theirs (bob had muted the room; the
/// defaults push him), everyone else is pushed as before, bob's own syncs and rules work,
/// and his next change of rules replaces the record.
#[tokio::test]
async fn a_members_unreadable_push_rules_fail_no_send() {
    let mut s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let carol = Client::new(&s, "carol").await;
    let room = room_of_three(&alice, &bob, &carol).await;
    let rule_path = format!("/pushrules/global/room/{}", enc(&room));
    let (status, _) = bob.put(&rule_path, json!({"actions": []})).await;
    assert_eq!(status, StatusCode::OK);
    let (gateway, url) = Gateway::start().await;
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    assert_eq!(
        set(&carol, pusher(&url, "carol-phone")).await.0,
        StatusCode::OK
    );
    alice.text(&room, "muted for bob").await;
    assert_eq!(gateway.wait_for(1).await.len(), 1);
    let logins = [&alice, &bob].map(|c| (c.user_id.clone(), c.token.clone(), c.device_id.clone()));
    let bob_id = bob.user_id.clone();
    drop((alice, bob, carol));
    // The record damaged while the server is stopped.
    s.restart_after(
        |db| {
            let mut batch = db.batch();
            batch.put(
                ourwhats::storage::Table::UseridPushrules,
                bob_id.as_bytes(),
                b"not a record",
            );
            db.commit_blocking(batch).unwrap();
        },
        allow_loopback,
    )
    .await;
    let [alice, bob] = logins.map(|l| Client::signed_in(&s, &l));
    let said = alice.text(&room, "still sent").await;
    let got = gateway.wait_for(3).await;
    let mut pushed: Vec<(&str, &str)> = got[1..]
        .iter()
        .map(|g| {
            let n = &g["notification"];
            (
                n["devices"][0]["pushkey"].as_str().unwrap(),
                n["event_id"].as_str().unwrap(),
            )
        })
        .collect();
    pushed.sort();
    assert_eq!(
        pushed,
        vec![("bob-phone", said.as_str()), ("carol-phone", said.as_str())]
    );
    let (status, body) = bob.get("/sync").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = bob.get("/pushrules/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bob.get(&rule_path).await.0, StatusCode::NOT_FOUND);
    // His next change replaces the record: the room is muted again.
    assert_eq!(
        bob.put(&rule_path, json!({"actions": []})).await.0,
        StatusCode::OK
    );
    alice.text(&room, "muted again").await;
    gateway.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = gateway.received();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[3]["notification"]["devices"][0]["pushkey"],
        "carol-phone"
    );
    s.stop().await;
}

/// In a world-readable room, where an invited user may read the invite like any event,
/// an invite from a user they ignore is still not listed by `GET /notifications`.
#[tokio::test]
async fn an_invite_from_an_ignored_user_is_not_listed_in_a_world_readable_room() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "invite": [bob.user_id],
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "world_readable"},
            }],
        }))
        .await;
    let (_, body) = bob.get("/notifications").await;
    let listed = body["notifications"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["room_id"], room.as_str(), "{body}");
    ignore(&bob, &[&alice.user_id]).await;
    let (status, body) = bob.get("/notifications").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["notifications"], json!([]), "{body}");
    s.stop().await;
}

/// A gateway refusing a notification for good (400) is not asked again with it: the next
/// one goes at once instead of waiting behind it. A notification sent again after the
/// user read everything leaves its zero count out (push gateway API: "counts whose
/// value is zero should be omitted"), and a badge-only push then clears the count the
/// device last had.
#[tokio::test]
async fn a_refused_push_is_dropped_and_a_zero_count_left_out() {
    let s = server().await;
    let alice = Client::new(&s, "alice").await;
    let bob = Client::new(&s, "bob").await;
    let room = dm(&alice, &bob).await;
    let (gateway, url) = Gateway::start().await;
    gateway
        .answers
        .lock()
        .unwrap()
        .extend([(400, json!({"error": "no"})), (500, json!({}))]);
    assert_eq!(set(&bob, pusher(&url, "bob-phone")).await.0, StatusCode::OK);
    let one = alice.text(&room, "one").await;
    let got = gateway.wait_for(1).await;
    assert_eq!(got[0]["notification"]["event_id"], one.as_str());
    let two = alice.text(&room, "two").await;
    // Refused once (500), then read by bob before it is sent again.
    let got = gateway.wait_for(2).await;
    assert_eq!(got[1]["notification"]["event_id"], two.as_str(), "{got:?}");
    let (status, body) = bob
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&two)),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = gateway.wait_for(3).await;
    assert_eq!(got[2]["notification"]["event_id"], two.as_str(), "{got:?}");
    assert_eq!(got[2]["notification"]["counts"], json!({}), "{got:?}");
    // The phone showed 1 ("one"'s push) and was told no count since: a badge-only push
    // brings it to zero.
    let got = gateway.wait_for(4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[3]["notification"]["counts"],
        json!({"unread": 0}),
        "{got:?}"
    );
    assert!(got[3]["notification"].get("event_id").is_none(), "{got:?}");
    // "one" was never sent again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ones = gateway
        .received()
        .iter()
        .filter(|b| b["notification"]["event_id"] == one.as_str())
        .count();
    assert_eq!(ones, 1);
    s.stop().await;
}

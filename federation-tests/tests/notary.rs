//! Attack classes (hostile-federation issue): "a notary answer not signed by the origin
//! server", "an expired key" and "keys valid too long": refused. A server we cannot reach
//! directly has its keys vouched for by a notary (`federation.trusted_key_servers`); a
//! notary that signs a key document the server itself did not sign must not make us
//! accept requests (or events) signed with that key, a key past its `valid_until_ts`
//! signs nothing new, and a key said to be valid for a year counts for 7 days after it was
//! fetched (rooms v5+). The notary here is a real HTTPS server of the test's own, lying or
//! not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use federation_tests::{enc, free_port, Cluster, TestCa, User};
use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::{signatures, x_matrix, RoomVersion, ServerName, SigningKeyPair};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A notary: its own key, and what it says about `origin` and `expired`.
struct Notary {
    name: String,
    key: SigningKeyPair,
    origin: String,
    origin_key: SigningKeyPair,
    /// Whether the document it answers about `origin` carries `origin`'s own signature.
    honest: AtomicBool,
    /// A server whose key expired an hour ago (its document signed by it).
    expired: String,
    expired_key: SigningKeyPair,
    /// A server whose document says its key is valid for a year (signed by it).
    long_lived: String,
    long_lived_key: SigningKeyPair,
    /// How many times its own key document was fetched.
    own_fetches: AtomicUsize,
    /// The key it has rotated to, if it has (its first key then an old key).
    rotated_to: std::sync::Mutex<Option<SigningKeyPair>>,
    /// A key it dropped: its answers as a notary then include an older copy of its own
    /// document listing that key (and not its current one).
    dropped: std::sync::Mutex<Option<SigningKeyPair>>,
}

const DAY_MS: u64 = 24 * 3_600_000;

impl Notary {
    fn document(server: &str, key: &SigningKeyPair, valid_until_ts: u64) -> Value {
        json!({
            "server_name": server,
            "valid_until_ts": valid_until_ts,
            "verify_keys": {key.key_id(): {"key": key.public_key_base64()}},
            "old_verify_keys": {},
        })
    }

    fn own_document(&self) -> Value {
        if let Some(new_key) = &*self.rotated_to.lock().unwrap() {
            let mut doc = Self::document(&self.name, new_key, now_ms() + 3_600_000);
            doc["old_verify_keys"] = json!({self.key.key_id(): {
                "key": self.key.public_key_base64(),
                "expired_ts": now_ms(),
            }});
            signatures::sign_json(&mut doc, &self.name, new_key).unwrap();
            return doc;
        }
        let mut doc = Self::document(&self.name, &self.key, now_ms() + 3_600_000);
        signatures::sign_json(&mut doc, &self.name, &self.key).unwrap();
        doc
    }

    fn origin_document(&self) -> Value {
        let mut doc = Self::document(&self.origin, &self.origin_key, now_ms() + 3_600_000);
        if self.honest.load(Ordering::SeqCst) {
            signatures::sign_json(&mut doc, &self.origin, &self.origin_key).unwrap();
        }
        signatures::sign_json(&mut doc, &self.name, &self.key).unwrap();
        doc
    }

    fn expired_document(&self) -> Value {
        let mut doc = Self::document(&self.expired, &self.expired_key, now_ms() - 3_600_000);
        signatures::sign_json(&mut doc, &self.expired, &self.expired_key).unwrap();
        signatures::sign_json(&mut doc, &self.name, &self.key).unwrap();
        doc
    }

    fn long_lived_document(&self) -> Value {
        let mut doc = Self::document(
            &self.long_lived,
            &self.long_lived_key,
            now_ms() + 365 * DAY_MS,
        );
        signatures::sign_json(&mut doc, &self.long_lived, &self.long_lived_key).unwrap();
        signatures::sign_json(&mut doc, &self.name, &self.key).unwrap();
        doc
    }

    /// A notary on a free port with server names nobody listens on (their keys can only
    /// come through it), honest or not about `origin`.
    fn new(honest: bool) -> Self {
        let unreachable = || format!("127.0.0.1:{}", free_port().unwrap());
        Self {
            name: unreachable(),
            key: SigningKeyPair::generate(),
            origin: unreachable(),
            origin_key: SigningKeyPair::generate(),
            honest: AtomicBool::new(honest),
            expired: unreachable(),
            expired_key: SigningKeyPair::generate(),
            long_lived: unreachable(),
            long_lived_key: SigningKeyPair::generate(),
            own_fetches: AtomicUsize::new(0),
            rotated_to: std::sync::Mutex::new(None),
            dropped: std::sync::Mutex::new(None),
        }
    }

    /// Serves the notary over HTTPS with a certificate of `ca` until the handle shuts it.
    async fn serve(
        self: &Arc<Self>,
        ca: &TestCa,
    ) -> (
        axum_server::Handle<SocketAddr>,
        tokio::task::JoinHandle<std::io::Result<()>>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(dir.path(), "notary").unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
            .await
            .unwrap();
        let app = Router::new()
            .route("/_matrix/key/v2/server", get(own_keys))
            .route("/_matrix/key/v2/query", post(query))
            .route("/_matrix/key/v2/query/{server}", get(query))
            .with_state(Arc::clone(self));
        let address: SocketAddr = self.name.parse().unwrap();
        let handle = axum_server::Handle::new();
        let serving = tokio::spawn(
            axum_server::bind_rustls(address, tls)
                .handle(handle.clone())
                .serve(app.into_make_service()),
        );
        (handle, serving, dir)
    }
}

async fn own_keys(State(notary): State<Arc<Notary>>) -> Json<Value> {
    notary.own_fetches.fetch_add(1, Ordering::SeqCst);
    Json(notary.own_document())
}

async fn query(State(notary): State<Arc<Notary>>) -> Json<Value> {
    let mut documents = vec![
        notary.origin_document(),
        notary.expired_document(),
        notary.long_lived_document(),
    ];
    if let Some(dropped) = &*notary.dropped.lock().unwrap() {
        // Valid for half an hour: older than the document it serves itself (an hour).
        let mut older = Notary::document(&notary.name, dropped, now_ms() + 1_800_000);
        signatures::sign_json(&mut older, &notary.name, dropped).unwrap();
        signatures::sign_json(&mut older, &notary.name, &notary.key).unwrap();
        documents.push(older);
    }
    Json(json!({ "server_keys": documents }))
}

/// One server that trusts `notary` (and no other) for keys.
async fn cluster_trusting(notary: &Notary) -> Cluster {
    let notary_name = ServerName::parse(&notary.name).unwrap();
    Cluster::start_with(1, |_, config| {
        config.federation.trusted_key_servers = vec![notary_name.clone()];
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_notary_answer_the_origin_did_not_sign_is_refused() {
    let notary = Arc::new(Notary::new(false));
    let origin = notary.origin.clone();
    let cluster = cluster_trusting(&notary).await;
    let a = &cluster.instances[0];
    let alice = User::register(a, "alice").await.unwrap();

    // The notary, with a certificate of the cluster's CA.
    let (handle, serving, _dir) = notary.serve(&cluster.ca).await;

    // A request signed with the key the notary vouches for, alone.
    let http = cluster.tls_client().unwrap();
    let target = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id)
    );
    let ask_as = |(server, key): (&str, &SigningKeyPair)| {
        let header =
            x_matrix::sign_request(key, ("GET", &target), (server, a.name()), None).unwrap();
        let request = http
            .get(format!("https://{}{target}", a.name()))
            .header("Authorization", header);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let ask = || ask_as((&origin, &notary.origin_key));
    let (status, body) = ask().await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    // Nor does our own notary endpoint pass the document on.
    let (status, answer) = {
        let response = http
            .get(format!(
                "https://{}/_matrix/key/v2/query/{}",
                a.name(),
                origin
            ))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["server_keys"]
            .as_array()
            .is_none_or(|docs| docs.iter().all(|d| d["server_name"] != origin.as_str())),
        "{answer}"
    );

    // The same notary, now passing on the document the origin signed: taken (after the
    // failed fetch's back-off), which shows the refusal was the signature's doing.
    notary.honest.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ask().await;
        if status == 200 {
            assert_eq!(body["displayname"], "alice", "{body}");
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(
            Instant::now() < deadline,
            "the honest answer was never taken"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A key its own server signed, but past its validity: nothing new is taken signed
    // with it.
    let (status, body) = ask_as((&notary.expired, &notary.expired_key)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    handle.shutdown();
    let _ = serving.await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_key_said_valid_for_a_year_signs_nothing_past_seven_days() {
    // The long-lived server's document says a year; the spec caps a key's validity at 7
    // days after it was fetched (rooms v5+, "Signing key validity period"). An invite of
    // its user made now is taken; one dated 8 days ahead is refused, since no key of its
    // server was valid then as far as we may know.
    let notary = Arc::new(Notary::new(true));
    let cluster = cluster_trusting(&notary).await;
    let a = &cluster.instances[0];
    let alice = User::register(a, "alice").await.unwrap();
    let (handle, serving, _dir) = notary.serve(&cluster.ca).await;
    let http = cluster.tls_client().unwrap();
    let server = notary.long_lived.as_str();
    let room_id = format!("!room:{server}");

    let invite = |origin_server_ts: u64| {
        let built = pdu::build(
            RoomVersion::V11,
            PduTemplate {
                room_id: Some(room_id.clone()),
                sender: format!("@lee:{server}"),
                kind: "m.room.member".into(),
                state_key: Some(alice.user_id.clone()),
                content: json!({"membership": "invite"}),
                prev_events: vec![format!("${}", "a".repeat(43))],
                auth_events: vec![format!("${}", "b".repeat(43))],
                depth: 3,
                origin_server_ts,
                redacts: None,
            },
            server,
            &notary.long_lived_key,
        )
        .unwrap();
        let target = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            enc(&room_id),
            enc(&built.event_id)
        );
        let body = json!({"room_version": "11", "event": built.pdu, "invite_room_state": []});
        let header = x_matrix::sign_request(
            &notary.long_lived_key,
            ("PUT", &target),
            (server, a.name()),
            Some(&body),
        )
        .unwrap();
        let request = http
            .put(format!("https://{}{target}", a.name()))
            .header("Authorization", header)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = invite(now_ms() + 8 * DAY_MS).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("valid at the event's time"),
        "{body}"
    );
    let (status, body) = invite(now_ms()).await;
    assert_eq!(status, 200, "{body}");
    let sync = alice.get("/sync").await.1;
    assert!(sync["rooms"]["invite"].get(&room_id).is_some(), "{sync}");

    handle.shutdown();
    let _ = serving.await;
    cluster.shutdown().await;
}

/// A request naming a key its server's document does not hold (anyone can forge the
/// header) costs one fetch of the document now and then, not one per request; so does a
/// notary query for a validity the document does not reach.
#[tokio::test]
async fn keys_a_document_lacks_are_not_fetched_again_and_again() {
    for notary_query in [false, true] {
        let notary = Arc::new(Notary::new(true));
        let cluster = cluster_trusting(&notary).await;
        let a = &cluster.instances[0];
        let alice = User::register(a, "alice").await.unwrap();
        let (handle, serving, _dir) = notary.serve(&cluster.ca).await;
        let http = cluster.tls_client().unwrap();
        let forged = SigningKeyPair::generate();
        let target = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc(&alice.user_id)
        );
        for _ in 0..10 {
            let response = match notary_query {
                false => {
                    let header = x_matrix::sign_request(
                        &forged,
                        ("GET", &target),
                        (&notary.name, a.name()),
                        None,
                    )
                    .unwrap();
                    http.get(format!("https://{}{target}", a.name()))
                        .header("Authorization", header)
                        .send()
                        .await
                        .unwrap()
                }
                true => http
                    .post(format!("https://{}/_matrix/key/v2/query", a.name()))
                    .json(&json!({"server_keys": {notary.name.clone(): {
                        "k": {"minimum_valid_until_ts": 9_000_000_000_000_000u64}}}}))
                    .send()
                    .await
                    .unwrap(),
            };
            let expected = if notary_query { 200 } else { 401 };
            assert_eq!(response.status().as_u16(), expected);
        }
        // Each lookup fetches the document directly and, through the notary, the notary's
        // own document again: two a lookup. Backed off after the first, a few at most.
        let fetches = notary.own_fetches.load(Ordering::SeqCst);
        assert!(
            (1..=6).contains(&fetches),
            "{fetches} fetches for 10 lookups (notary query: {notary_query})"
        );
        handle.shutdown();
        let _ = serving.await;
        cluster.shutdown().await;
    }
}

/// As a notary, asked for a key id the document we keep lacks (the server rotated to a
/// new key since we fetched it), we fetch the document again rather than answer the old
/// one (as Synapse's notary does), no sooner than the refetch guard allows.
#[tokio::test]
async fn asked_for_a_key_it_lacks_our_notary_fetches_the_document_again() {
    let server = Arc::new(Notary::new(true));
    let cluster = cluster_trusting(&server).await;
    let a = &cluster.instances[0];
    let (handle, serving, _dir) = server.serve(&cluster.ca).await;
    let http = cluster.tls_client().unwrap();
    let ask = |key_ids: Value| {
        let http = http.clone();
        let body = json!({"server_keys": {server.name.clone(): key_ids}});
        let url = format!("https://{}/_matrix/key/v2/query", a.name());
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let answer: Value = response.json().await.unwrap();
            answer["server_keys"][0]["verify_keys"]
                .as_object()
                .map(|keys| keys.keys().cloned().collect::<Vec<String>>())
                .unwrap_or_default()
        }
    };
    let first_key = server.key.key_id().to_owned();
    assert_eq!(ask(json!({})).await, vec![first_key.clone()]);
    let new_key = SigningKeyPair::generate();
    let new_id = new_key.key_id().to_owned();
    *server.rotated_to.lock().unwrap() = Some(new_key);
    let named = || json!({new_id.clone(): {"minimum_valid_until_ts": now_ms()}});
    // Within the refetch guard (30 s after a fetch) the document kept is the answer.
    assert_eq!(ask(named()).await, vec![first_key.clone()]);
    // Asked about the keys we hold, the kept document (valid for an hour) still serves.
    let fetches = server.own_fetches.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(ask(json!({})).await, vec![first_key]);
    assert_eq!(server.own_fetches.load(Ordering::SeqCst), fetches);
    // Asked about the new key, it fetches again and answers the new document.
    assert_eq!(ask(named()).await, vec![new_id]);
    assert!(server.own_fetches.load(Ordering::SeqCst) > fetches);
    handle.shutdown();
    let _ = serving.await;
    cluster.shutdown().await;
}

/// A key id the server's own document lacks (it dropped the key), asked of our notary:
/// a notary's older copy of the document that lists it does not take the place of the
/// newer document the server gave (its keys are kept as old keys, not served here).
#[tokio::test]
async fn an_older_notary_copy_does_not_replace_the_document_the_server_gave() {
    let server = Arc::new(Notary::new(true));
    let dropped = SigningKeyPair::generate();
    let dropped_id = dropped.key_id().to_owned();
    *server.dropped.lock().unwrap() = Some(dropped);
    // The server is its own notary here: its answers as a notary hold the older copy.
    let cluster = cluster_trusting(&server).await;
    let a = &cluster.instances[0];
    let (handle, serving, _dir) = server.serve(&cluster.ca).await;
    let http = cluster.tls_client().unwrap();
    let response = http
        .post(format!("https://{}/_matrix/key/v2/query", a.name()))
        .json(&json!({"server_keys": {server.name.clone(): {dropped_id: {}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let keys: Vec<&String> = answer["server_keys"][0]["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, vec![server.key.key_id()], "{answer}");
    handle.shutdown();
    let _ = serving.await;
    cluster.shutdown().await;
}

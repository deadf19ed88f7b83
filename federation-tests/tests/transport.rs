//! Two and three real servers on loopback, verifying each other's certificates and
//! request signatures: keys fetched and cached, a notary lookup, bad requests refused,
//! profile and alias lookups, remote device keys.

use federation_tests::{enc, Cluster, User};
use ourwhats::core::{signatures, x_matrix, SigningKeyPair};
use serde_json::{json, Value};

#[tokio::test]
async fn profile_and_alias_lookups_cross_servers_and_keys_are_fetched_once_and_notarised() {
    let cluster = Cluster::start(3).await.unwrap();
    let (a, b, c) = (
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    );
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();

    let (status, _) = bob
        .put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            json!({"displayname": "Bob B"}),
        )
        .await;
    assert_eq!(status, 200);
    // Alice asks her server for bob's profile: it asks bob's server, signed; bob's server
    // fetches alice's server's key to check the signature.
    let (status, profile) = alice.get(&format!("/profile/{}", enc(&bob.user_id))).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["displayname"], "Bob B");
    let (status, field) = alice
        .get(&format!("/profile/{}/displayname", enc(&bob.user_id)))
        .await;
    assert_eq!((status, field), (200, json!({"displayname": "Bob B"})));
    // An unknown remote user: the other server's 404.
    let nobody = format!("@nobody:{}", b.name());
    let (status, body) = alice.get(&format!("/profile/{}", enc(&nobody))).await;
    assert_eq!(
        (status, &body["errcode"]),
        (404, &json!("M_NOT_FOUND")),
        "{body}"
    );

    // An alias of bob's server.
    let (status, created) = bob
        .post("/createRoom", json!({"room_alias_name": "lobby"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let alias = format!("#lobby:{}", b.name());
    let (status, found) = alice.get(&format!("/directory/room/{}", enc(&alias))).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["room_id"], created["room_id"]);
    assert_eq!(found["servers"], json!([b.name()]));
    let (status, _) = alice
        .get(&format!(
            "/directory/room/{}",
            enc(&format!("#none:{}", b.name()))
        ))
        .await;
    assert_eq!(status, 404);

    // Server c, as a notary, answers a's keys signed by a and by c.
    let http = cluster.tls_client().unwrap();
    let url = format!("https://{}/_matrix/key/v2/query/{}", c.name(), a.name());
    let answer: Value = http.get(url).send().await.unwrap().json().await.unwrap();
    let doc = &answer["server_keys"][0];
    assert_eq!(doc["server_name"], a.name(), "{answer}");
    assert!(doc["signatures"][a.name()].is_object());
    assert!(doc["signatures"][c.name()].is_object());
    // Batched form, our own document included.
    let body = json!({"server_keys": {a.name(): {}, c.name(): {}, "127.0.0.1:1": {}}});
    let url = format!("https://{}/_matrix/key/v2/query", c.name());
    let answer: Value = http
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = answer["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["server_name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want = vec![a.name(), c.name()];
    want.sort();
    assert_eq!(names, want, "an unreachable server is left out");
    cluster.shutdown().await;
}

/// Sends a request to `server`'s federation API as `origin`, signed with `key` over
/// `signed_as` (method, target, destination) — which a forger may get wrong on purpose.
async fn signed_request(
    http: &reqwest::Client,
    server: &str,
    (origin, key): (&str, &SigningKeyPair),
    signed_as: (&str, &str, &str),
    body: Option<&Value>,
) -> (u16, Value) {
    let (method, target, destination) = signed_as;
    let header =
        x_matrix::sign_request(key, (method, target), (origin, destination), body).unwrap();
    let mut request = http
        .request(reqwest::Method::GET, format!("https://{server}{target}"))
        .header("Authorization", header);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn forged_misdirected_and_unsigned_requests_are_refused_with_401() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let bob = User::register(b, "bob").await.unwrap();
    let http = cluster.tls_client().unwrap();
    let target = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&bob.user_id)
    );
    let unauthorized = |(status, body): (u16, Value)| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    };

    // No header at all.
    let response = http
        .get(format!("https://{}{target}", b.name()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // Signed as server a, but with a key that is not a's (a forgery): a's real key is
    // fetched and does not verify it.
    let forger = SigningKeyPair::from_seed(&[1; 32], a.running().services.signing_key.version());
    unauthorized(
        signed_request(
            &http,
            b.name(),
            (a.name(), &forger),
            ("GET", &target, b.name()),
            None,
        )
        .await,
    );
    // A key id a does not have.
    let unknown = SigningKeyPair::from_seed(&[1; 32], "nope");
    unauthorized(
        signed_request(
            &http,
            b.name(),
            (a.name(), &unknown),
            ("GET", &target, b.name()),
            None,
        )
        .await,
    );
    // a's real key, but meant for another server.
    let real = &a.running().services.signing_key;
    unauthorized(
        signed_request(
            &http,
            b.name(),
            (a.name(), real),
            ("GET", &target, "127.0.0.1:1"),
            None,
        )
        .await,
    );
    // a's real key over another target (a signature replayed onto another request).
    let other = format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=displayname",
        enc(&bob.user_id)
    );
    let header = x_matrix::sign_request(real, ("GET", &other), (a.name(), b.name()), None).unwrap();
    let response = http
        .get(format!("https://{}{target}", b.name()))
        .header("Authorization", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // An origin whose keys cannot be fetched.
    let stranger = SigningKeyPair::from_seed(&[2; 32], "k");
    unauthorized(
        signed_request(
            &http,
            b.name(),
            ("127.0.0.1:1", &stranger),
            ("GET", &target, b.name()),
            None,
        )
        .await,
    );
    // And the genuine request passes.
    let (status, body) = signed_request(
        &http,
        b.name(),
        (a.name(), real),
        ("GET", &target, b.name()),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"displayname": "bob"})));
    cluster.shutdown().await;
}

#[tokio::test]
async fn remote_device_keys_are_queried_and_claimed_and_an_unreachable_server_is_a_failure() {
    let cluster = Cluster::start(2).await.unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let alice = User::register(a, "alice").await.unwrap();
    let bob = User::register(b, "bob").await.unwrap();
    // The device's own ed25519 key signs its keys, as a client's Olm account would.
    let device_key = SigningKeyPair::from_seed(&[5; 32], &bob.device_id);
    let mut device_keys = json!({
        "user_id": bob.user_id,
        "device_id": bob.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", bob.device_id): "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
            format!("ed25519:{}", bob.device_id): device_key.public_key_base64(),
        },
    });
    signatures::sign_json(&mut device_keys, &bob.user_id, &device_key).unwrap();
    let mut one_time_key = json!({"key": "zKbLg+NrIjpnagy+pIY6uPL4ZwEG2v+8F9lmgsnlZzs"});
    signatures::sign_json(&mut one_time_key, &bob.user_id, &device_key).unwrap();
    let (status, body) = bob
        .post(
            "/keys/upload",
            json!({
                "device_keys": device_keys,
                "one_time_keys": {"signed_curve25519:AAAAHg": one_time_key},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let unreachable = "@carol:127.0.0.1:1";
    let (status, answer) = alice
        .post(
            "/keys/query",
            json!({"device_keys": {bob.user_id.clone(): [], unreachable: []}, "timeout": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["device_keys"][&bob.user_id][&bob.device_id]["keys"], device_keys["keys"],
        "{answer}"
    );
    assert!(answer["failures"]["127.0.0.1:1"].is_object(), "{answer}");

    let (status, claimed) = alice
        .post(
            "/keys/claim",
            json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    let keys = &claimed["one_time_keys"][&bob.user_id][&bob.device_id];
    assert!(keys["signed_curve25519:AAAAHg"].is_object(), "{claimed}");
    // Claimed once: the next claim finds none.
    let (_, again) = alice
        .post(
            "/keys/claim",
            json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}}),
        )
        .await;
    assert!(
        again["one_time_keys"][&bob.user_id]
            .get(&bob.device_id)
            .is_none(),
        "{again}"
    );

    // Bob's device list, as a server tracking it sees it.
    let http = cluster.tls_client().unwrap();
    let real = &a.running().services.signing_key;
    let target = format!("/_matrix/federation/v1/user/devices/{}", enc(&bob.user_id));
    let (status, devices) = signed_request(
        &http,
        b.name(),
        (a.name(), real),
        ("GET", &target, b.name()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["user_id"], bob.user_id);
    assert_eq!(devices["devices"][0]["device_id"], bob.device_id);
    assert_eq!(devices["devices"][0]["keys"]["keys"], device_keys["keys"]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_origin_over_its_rate_limit_gets_429_and_other_origins_do_not() {
    let cluster = Cluster::start_with(3, |i, config| {
        if i == 1 {
            config.rate_limits.enabled = true;
            config.rate_limits.federation_per_second = 1;
            config.rate_limits.federation_burst = 3;
        }
    })
    .await
    .unwrap();
    let (a, b, c) = (
        &cluster.instances[0],
        &cluster.instances[1],
        &cluster.instances[2],
    );
    let bob = User::register(b, "bob").await.unwrap();
    let http = cluster.tls_client().unwrap();
    let target = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&bob.user_id)
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let key = &a.running().services.signing_key;
        let (status, body) = signed_request(
            &http,
            b.name(),
            (a.name(), key),
            ("GET", &target, b.name()),
            None,
        )
        .await;
        if status == 429 {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Another origin has its own allowance.
    let key = &c.running().services.signing_key;
    let (status, _) = signed_request(
        &http,
        b.name(),
        (c.name(), key),
        ("GET", &target, b.name()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    cluster.shutdown().await;
}

/// Sends `PUT target` to `address` over TLS (trusting the test CA) with `header` as its
/// Authorization, announcing a megabyte of body and sending a few bytes of it; answers
/// what came back within `wait` (empty if nothing) and when.
async fn put_a_stalled_body(
    cluster: &Cluster,
    address: &str,
    (target, header): (&str, String),
    wait: std::time::Duration,
) -> (String, std::time::Duration) {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;

    let ca = rustls::pki_types::CertificateDer::from_pem_file(&cluster.ca.cert_path).unwrap();
    let (address, target) = (address.to_owned(), target.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = std::net::TcpStream::connect(&address).unwrap();
        socket.set_read_timeout(Some(wait)).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        let head = format!(
            "PUT {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {header}\r\n\
             Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{{\"pdus\": ["
        );
        tls.write_all(head.as_bytes()).unwrap();
        tls.flush().unwrap();
        let started = std::time::Instant::now();
        let mut answer = vec![0u8; 4096];
        let read = tls.read(&mut answer).unwrap_or(0);
        (
            String::from_utf8_lossy(&answer[..read]).into_owned(),
            started.elapsed(),
        )
    })
    .await
    .unwrap()
}

/// A request naming an origin whose key cannot be found is refused (401) before its
/// body is read: a made-up origin cannot make us wait for, read and parse a large body.
/// From a server whose key is found, a body that stops arriving fails (408) once the
/// listener's idle time for bodies is out, instead of holding the connection.
#[tokio::test]
async fn a_stalled_body_is_refused_at_once_from_a_made_up_origin_and_408_from_a_server() {
    let cluster = Cluster::start_with(2, |_, config| {
        config.federation.body_idle_timeout = std::time::Duration::from_secs(1);
    })
    .await
    .unwrap();
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let target = "/_matrix/federation/v1/send/txn1";
    let body = json!({"pdus": [], "edus": []});
    // A made-up origin (nothing listens there).
    let nobody = format!("127.0.0.1:{}", federation_tests::free_port().unwrap());
    let header = x_matrix::sign_request(
        &SigningKeyPair::generate(),
        ("PUT", target),
        (&nobody, a.name()),
        Some(&body),
    )
    .unwrap();
    let wait = std::time::Duration::from_secs(10);
    let (answer, took) = put_a_stalled_body(&cluster, a.name(), (target, header), wait).await;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "after {took:?}: {answer:?}"
    );
    assert!(answer.contains("M_UNAUTHORIZED"), "{answer}");
    // Server B's name and key id (its key found): the body is waited for, a second.
    let keys = cluster.key_document(b.name()).await.unwrap();
    let key_id = keys["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let header = format!(
        "X-Matrix origin=\"{}\",destination=\"{}\",key=\"{key_id}\",sig=\"c2ln\"",
        b.name(),
        a.name()
    );
    let (answer, took) = put_a_stalled_body(&cluster, a.name(), (target, header), wait).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer:?}"
    );
    assert!(took >= std::time::Duration::from_millis(900), "{took:?}");
    cluster.shutdown().await;
}

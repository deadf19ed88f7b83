//! Attack classes (hostile-federation issue): "a notary answer not signed by the origin
//! server" and "an expired key": refused. A server we cannot reach directly has its keys
//! vouched for by a notary (`federation.trusted_key_servers`); a notary that signs a key
//! document the server itself did not sign must not make us accept requests (or events)
//! signed with that key, and a key past its `valid_until_ts` signs nothing new. The
//! notary here is a real HTTPS server of the test's own, lying or not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use federation_tests::{enc, free_port, Cluster, User};
use ourwhats::core::{signatures, x_matrix, ServerName, SigningKeyPair};
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
}

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
}

async fn own_keys(State(notary): State<Arc<Notary>>) -> Json<Value> {
    Json(notary.own_document())
}

async fn query(State(notary): State<Arc<Notary>>) -> Json<Value> {
    Json(json!({"server_keys": [notary.origin_document(), notary.expired_document()]}))
}

#[tokio::test]
async fn a_notary_answer_the_origin_did_not_sign_is_refused() {
    let notary_port = free_port().unwrap();
    // A server name nobody listens on: its keys can only come through the notary.
    let origin = format!("127.0.0.1:{}", free_port().unwrap());
    let notary = Arc::new(Notary {
        name: format!("127.0.0.1:{notary_port}"),
        key: SigningKeyPair::generate(),
        origin: origin.clone(),
        origin_key: SigningKeyPair::generate(),
        honest: AtomicBool::new(false),
        expired: format!("127.0.0.1:{}", free_port().unwrap()),
        expired_key: SigningKeyPair::generate(),
    });
    let notary_name = ServerName::parse(&notary.name).unwrap();
    let cluster = Cluster::start_with(1, |_, config| {
        config.federation.trusted_key_servers = vec![notary_name.clone()];
    })
    .await
    .unwrap();
    let a = &cluster.instances[0];
    let alice = User::register(a, "alice").await.unwrap();

    // The notary, with a certificate of the cluster's CA.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cluster.ca.issue(dir.path(), "notary").unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .unwrap();
    let app = Router::new()
        .route("/_matrix/key/v2/server", get(own_keys))
        .route("/_matrix/key/v2/query", post(query))
        .route("/_matrix/key/v2/query/{server}", get(query))
        .with_state(Arc::clone(&notary));
    let address: SocketAddr = format!("127.0.0.1:{notary_port}").parse().unwrap();
    let handle = axum_server::Handle::new();
    let serving = tokio::spawn(
        axum_server::bind_rustls(address, tls)
            .handle(handle.clone())
            .serve(app.into_make_service()),
    );

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

//! Key lookups for events from many servers (the transport issue's target: batched, at
//! most one request per live server).
//!
//! Server A (ourwhats) hosts a public room. `--servers` origin servers (1,000 by default)
//! are small HTTPS key servers of this bench, each on its own loopback port with its own
//! signing key, counting the `GET /_matrix/key/v2/server` requests they get; a tenth more
//! are dead (nothing listens). Every origin has a user who joins the room and says
//! something, the events chained one after the other; they reach A through B (a second
//! ourwhats that signs the transactions: PDUs of other servers relayed, each checked
//! with its own server's key), 50 PDUs a transaction, a server's join and message in the
//! same one, so two lookups of one key race. Then every live origin's user says
//! something again (the keys are known by then). Printed: key requests per live server
//! (the most any got, and the total), the events A accepted, and the time each round
//! took.
//!
//! `cargo bench -p federation-tests --bench key_lookups [-- --servers 1000]` (under
//! `cargo test` a short run with 20 servers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use federation_tests::{enc, free_port, Cluster, User};
use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::{signatures, RoomVersion, SigningKeyPair};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One origin server: its name, key, and how often its key was asked for.
struct Origin {
    name: String,
    key: SigningKeyPair,
    asked: AtomicU64,
}

async fn key_document(State(origin): State<Arc<Origin>>) -> Json<Value> {
    origin.asked.fetch_add(1, Ordering::SeqCst);
    let mut doc = json!({
        "server_name": origin.name,
        "valid_until_ts": now_ms() + 3_600_000,
        "verify_keys": {origin.key.key_id(): {"key": origin.key.public_key_base64()}},
        "old_verify_keys": {},
    });
    signatures::sign_json(&mut doc, &origin.name, &origin.key).expect("signs");
    Json(doc)
}

/// The room as the origins build on it: its id, auth events and newest event.
struct Room {
    id: String,
    power_levels: String,
    join_rules: String,
    prev: String,
    depth: u64,
}

impl Room {
    fn event(
        &mut self,
        origin: &Origin,
        (kind, state_key): (&str, Option<String>),
        content: Value,
        auth: Vec<String>,
    ) -> (String, Value) {
        self.depth += 1;
        let built = pdu::build(
            RoomVersion::V12,
            PduTemplate {
                room_id: Some(self.id.clone()),
                sender: format!("@u:{}", origin.name),
                kind: kind.into(),
                state_key,
                content,
                prev_events: vec![self.prev.clone()],
                auth_events: auth,
                depth: self.depth,
                origin_server_ts: now_ms(),
                redacts: None,
            },
            &origin.name,
            &origin.key,
        )
        .expect("an event");
        self.prev = built.event_id.clone();
        (built.event_id, built.pdu)
    }
}

/// Sends `pdus` to A through B, 50 a transaction; answers the events A accepted.
async fn relay(cluster: &Cluster, round: &str, pdus: Vec<Value>) -> usize {
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let mut accepted = 0;
    for (i, chunk) in pdus.chunks(50).enumerate() {
        let body = json!({"origin": b.name(), "origin_server_ts": now_ms(), "pdus": chunk});
        let (status, answer) = b
            .ask(
                a.name(),
                reqwest::Method::PUT,
                &format!("/_matrix/federation/v1/send/{round}{i}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        accepted += answer["pdus"].as_object().map_or(0, |results| {
            results
                .values()
                .filter(|r| r.get("error").is_none())
                .count()
        });
    }
    accepted
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let servers: usize = std::env::args()
        .skip_while(|a| a != "--servers")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(if full { 1_000 } else { 20 });
    let dead = servers / 10;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let cluster = Cluster::start(2).await.expect("two servers");
        let a = &cluster.instances[0];
        let alice = User::register(a, "alice").await.expect("alice");
        let room_id = alice
            .create_room(json!({"preset": "public_chat", "room_version": "12"}))
            .await;

        // The origins: live ones serving their key, then dead ones.
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = cluster.ca.issue(dir.path(), "origins").expect("a certificate");
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
            .await
            .expect("TLS");
        let mut origins = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..servers {
            // Bound here and kept, so no two origins get one port.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
            listener.set_nonblocking(true).expect("non-blocking");
            let port = listener.local_addr().expect("an address").port();
            let origin = Arc::new(Origin {
                name: format!("127.0.0.1:{port}"),
                key: SigningKeyPair::generate(),
                asked: AtomicU64::new(0),
            });
            let app = Router::new()
                .route("/_matrix/key/v2/server", get(key_document))
                .with_state(Arc::clone(&origin));
            let handle = axum_server::Handle::new();
            let server = axum_server::tls_rustls::from_tcp_rustls(listener, tls.clone())
                .expect("a server");
            tokio::spawn(
                server
                    .handle(handle.clone())
                    .serve(app.into_make_service()),
            );
            handles.push(handle);
            origins.push(origin);
        }
        for _ in 0..dead {
            origins.push(Arc::new(Origin {
                name: format!("127.0.0.1:{}", free_port().expect("a port")),
                key: SigningKeyPair::generate(),
                asked: AtomicU64::new(0),
            }));
        }
        for handle in &handles {
            handle.listening().await;
        }

        // The room's auth events and newest event, as A has them.
        let store = a.running().services.rooms.store();
        let state_id = |kind: &str| {
            let room = store.room(&room_id).expect("read").expect("the room");
            store
                .state_event(room.record.state, kind, "")
                .expect("read")
                .expect("the event")
                .event_id
        };
        // The room's newest event (its only extremity here) and its depth.
        let newest = || {
            let room = store.room(&room_id).expect("read").expect("the room");
            let id = room.record.extremities[0].clone();
            let event = store.event_by_id(&id).expect("read").expect("stored");
            let depth = event.pdu()["depth"].as_u64().unwrap_or(0);
            (id, depth)
        };
        let (newest_id, depth) = newest();
        let mut room = Room {
            id: room_id.clone(),
            power_levels: state_id("m.room.power_levels"),
            join_rules: state_id("m.room.join_rules"),
            prev: newest_id,
            depth,
        };

        // Round 1: each origin's join and first message, in chain order (a dead
        // origin's events, which cannot be checked, hang off the chain).
        let mut joins = Vec::new();
        let mut pdus = Vec::new();
        for (i, origin) in origins.iter().enumerate() {
            let chain = (room.prev.clone(), room.depth);
            let auth = vec![room.power_levels.clone(), room.join_rules.clone()];
            let (join_id, join) = room.event(
                origin,
                ("m.room.member", Some(format!("@u:{}", origin.name))),
                json!({"membership": "join"}),
                auth,
            );
            let auth = vec![room.power_levels.clone(), join_id.clone()];
            let (_, said) = room.event(
                origin,
                ("m.room.message", None),
                json!({"msgtype": "m.text", "body": "hello"}),
                auth,
            );
            pdus.push(join);
            pdus.push(said);
            joins.push(join_id);
            if i >= servers {
                (room.prev, room.depth) = chain;
            }
        }
        let started = Instant::now();
        let first = relay(&cluster, "first", pdus).await;
        let first_time = started.elapsed();
        let asked_after_first: u64 = origins.iter().map(|o| o.asked.load(Ordering::SeqCst)).sum();

        // Round 2: every live origin's user again (a chain on the last accepted event).
        (room.prev, room.depth) = newest();
        let mut pdus = Vec::new();
        for (origin, join) in origins.iter().zip(&joins).take(servers) {
            let auth = vec![room.power_levels.clone(), join.clone()];
            let (_, said) = room.event(
                origin,
                ("m.room.message", None),
                json!({"msgtype": "m.text", "body": "again"}),
                auth,
            );
            pdus.push(said);
        }
        let started = Instant::now();
        let second = relay(&cluster, "second", pdus).await;
        let second_time = started.elapsed();

        let asked: Vec<u64> = origins[..servers]
            .iter()
            .map(|o| o.asked.load(Ordering::SeqCst))
            .collect();
        let most = asked.iter().copied().max().unwrap_or(0);
        let total: u64 = asked.iter().sum();
        let (_, members) = alice
            .get(&format!("/rooms/{}/joined_members", enc(&room_id)))
            .await;
        let joined = members["joined"].as_object().map_or(0, |m| m.len());
        println!(
            "{servers} live servers ({dead} dead): key requests per live server at most {most}, \
             {total} in all; round 1 (join + message each, {} PDUs): {first} accepted in {:.2} s; \
             round 2 (a message each, keys known): {second} accepted in {:.2} s, no new request: {}; \
             joined members {joined}",
            2 * (servers + dead),
            first_time.as_secs_f64(),
            second_time.as_secs_f64(),
            asked_after_first == total,
        );
        assert!(most <= 1, "a live server was asked for its key {most} times");
        assert_eq!(total, servers as u64, "every live server was asked once");
        assert_eq!(first, 2 * servers, "the live servers' events were accepted");
        assert_eq!(second, servers);
        assert_eq!(asked_after_first, total, "no key asked for again in round 2");
        assert_eq!(joined, servers + 1);
        for handle in handles {
            handle.shutdown();
        }
        cluster.shutdown().await;
    });
}

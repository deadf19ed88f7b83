//! Delivery of room messages between two ourwhats on loopback (the federated rooms issue's
//! target: p50 ≤ 5 ms, p99 ≤ 20 ms): alice on server A sends into a room bob on server B
//! joined; the time from the send's start until bob's long-polling `/sync` on B returns
//! the message. Each message waits for the previous one, so every figure is one whole
//! trip: A's writer and fsync, A's federation sender, B's `/send` with the receipt checks,
//! B's writer and fsync, B's notifier, the `/sync` answer.
//!
//! `cargo bench -p federation-tests --bench room_delivery` (200 messages; under `cargo
//! test` a short run of 5).

use std::time::{Duration, Instant};

use federation_tests::{enc, Cluster, User};
use serde_json::{json, Value};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Long-polls `user`'s `/sync` from `since` until a message with `body` arrives in `room`.
async fn wait_for(user: &User, room: &str, since: &mut String, body: &str) {
    let filter = enc(
        r#"{"room":{"timeline":{"limit":10},"state":{"lazy_load_members":true}},"presence":{"types":[]}}"#,
    );
    let started = Instant::now();
    loop {
        let (status, answer) = user
            .get(&format!(
                "/sync?timeout=5000&since={}&filter={filter}",
                enc(since)
            ))
            .await;
        assert_eq!(status, 200, "{answer}");
        if let Some(next) = answer["next_batch"].as_str() {
            *since = next.to_owned();
        }
        let found = answer["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e: &Value| e["content"]["body"] == body);
        if found {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "message {body:?} never arrived"
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let count = if full { 200 } else { 5 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let cluster = Cluster::start(2).await.expect("two servers");
        let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
        let alice = User::register(a, "alice").await.expect("alice");
        let bob = User::register(b, "bob").await.expect("bob");
        let (status, created) = alice
            .post("/createRoom", json!({"preset": "public_chat"}))
            .await;
        assert_eq!(status, 200, "{created}");
        let room = created["room_id"].as_str().expect("a room id").to_owned();
        let (status, joined) = bob
            .post(
                &format!("/join/{}?via={}", enc(&room), enc(a.name())),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{joined}");
        let (_, first) = bob.get("/sync?timeout=0").await;
        let mut since = first["next_batch"].as_str().expect("a token").to_owned();
        // Warm up both directions' connections and key caches.
        for i in 0..3 {
            let body = format!("warm {i}");
            alice
                .put(
                    &format!("/rooms/{}/send/m.room.message/w{i}", enc(&room)),
                    json!({"msgtype": "m.text", "body": body}),
                )
                .await;
            wait_for(&bob, &room, &mut since, &body).await;
        }
        let mut times = Vec::with_capacity(count);
        for i in 0..count {
            let body = format!("m {i}");
            let started = Instant::now();
            let (status, sent) = alice
                .put(
                    &format!("/rooms/{}/send/m.room.message/t{i}", enc(&room)),
                    json!({"msgtype": "m.text", "body": body}),
                )
                .await;
            assert_eq!(status, 200, "{sent}");
            wait_for(&bob, &room, &mut since, &body).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|x, y| x.total_cmp(y));
        println!(
            "room delivery A -> B ({count} messages, one at a time): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
        cluster.shutdown().await;
    });
}

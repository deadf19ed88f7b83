//! Load generator for the live-chat issue's targets (run through `benches/sync.sh`),
//! against a running release server (PID for its CPU time and memory):
//!   - delivery: a receiver long-polls `/sync`, a sender PUTs a message; the time from the
//!     send to the receiver's answer (`DELIVERIES` samples, p50 and p99);
//!   - initial `/sync` of a user in `ROOMS` rooms (each with a second member and a few
//!     messages): median latency of 20;
//!   - incremental `/sync` with nothing new (`timeout=0`): median of 500;
//!   - `POLLERS` concurrent long-polling clients: the server's RSS before and while they wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

mod common;

use common::{median, percentile, register, rss_kib, User};

/// The `next_batch` of a sync answer.
fn next_batch(answer: &Value) -> String {
    answer["next_batch"]
        .as_str()
        .unwrap_or_else(|| panic!("a sync answer without next_batch: {answer}"))
        .to_owned()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sync(user: &User, base: &str, query: &str) -> Value {
    user.call(
        Method::GET,
        &format!("{base}/_matrix/client/v3/sync?{query}"),
        None,
    )
    .await
}

async fn create_room(user: &User, base: &str, invite: &[&str]) -> String {
    let room = user
        .call(
            Method::POST,
            &format!("{base}/_matrix/client/v3/createRoom"),
            Some(json!({"preset": "private_chat", "invite": invite})),
        )
        .await;
    room["room_id"].as_str().expect("room id").to_owned()
}

async fn join(user: &User, base: &str, room: &str) {
    user.call(
        Method::POST,
        &format!("{base}/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
}

async fn send(user: &User, base: &str, room: &str, n: usize) {
    user.call(
        Method::PUT,
        &format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/b{n}"),
        Some(json!({"msgtype": "m.text", "body": format!("message {n}")})),
    )
    .await;
}

async fn delivery(base: &str) {
    let samples = env("DELIVERIES", 300);
    let alice = register(base, "deliver_alice").await;
    let bob = register(base, "deliver_bob").await;
    let room = create_room(&alice, base, &[&bob.user_id]).await;
    join(&bob, base, &room).await;
    let mut since = next_batch(&sync(&bob, base, "timeout=0").await);
    let bob = Arc::new(bob);
    let mut times = Vec::with_capacity(samples);
    for n in 0..samples {
        let poll = {
            let bob = Arc::clone(&bob);
            let url = format!("{base}/_matrix/client/v3/sync?since={since}&timeout=30000");
            tokio::spawn(async move {
                let answer = bob.call(Method::GET, &url, None).await;
                (Instant::now(), answer)
            })
        };
        // Let the long-poll reach the server and park.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = Instant::now();
        send(&alice, base, &room, n).await;
        let (arrived, answer) = poll.await.expect("the long-poll task ran");
        let events = &answer["rooms"]["join"][&room]["timeline"]["events"];
        assert!(
            events.as_array().is_some_and(|e| !e.is_empty()),
            "the long-poll answered without the message: {answer}"
        );
        times.push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
        since = next_batch(&answer);
    }
    println!(
        "| delivery PUT /send -> long-polling receiver ({samples} samples) | p50 {:.2} ms, p99 {:.2} ms |",
        percentile(times.clone(), 50.0),
        percentile(times, 99.0)
    );
}

async fn initial_sync(base: &str) {
    let rooms = env("ROOMS", 200);
    let user = register(base, "many_rooms").await;
    let other = register(base, "many_rooms_friend").await;
    for r in 0..rooms {
        let room = create_room(&other, base, &[&user.user_id]).await;
        join(&user, base, &room).await;
        for m in 0..3 {
            send(&other, base, &room, r * 10 + m).await;
        }
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let answer = sync(&user, base, "").await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let joined = answer["rooms"]["join"].as_object().map_or(0, |j| j.len());
        assert_eq!(joined, rooms, "every room in the initial sync");
        bytes = answer.to_string().len();
    }
    println!(
        "| initial /sync, {rooms} rooms (timeline limit 10, full state) | {:.1} ms median ({} KiB) |",
        median(times),
        bytes / 1024
    );
    let since = next_batch(&sync(&user, base, "").await);
    let mut times = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        let answer = sync(&user, base, &format!("since={since}&timeout=0")).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(answer.get("rooms").is_none());
    }
    let mut baseline = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        user.call(
            Method::GET,
            &format!("{base}/_matrix/client/v3/account/whoami"),
            None,
        )
        .await;
        baseline.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "| incremental /sync with nothing new, {rooms} rooms | {:.3} ms median round trip (GET /account/whoami on the same connection: {:.3} ms) |",
        median(times),
        median(baseline)
    );
}

async fn pollers(base: &str, pid: u32) {
    let pollers = env("POLLERS", 1000);
    let users = 20;
    let mut clients = Vec::new();
    for u in 0..users {
        clients.push(Arc::new(register(base, &format!("poller{u}")).await));
    }
    let before = rss_kib(pid);
    let mut tasks = Vec::new();
    for p in 0..pollers {
        let user = Arc::clone(&clients[p % users]);
        // One connection per poller.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("an HTTP client");
        let url = format!("{base}/_matrix/client/v3/sync?timeout=20000");
        let since = {
            let answer: Value = http
                .get(url.replace("timeout=20000", "timeout=0"))
                .bearer_auth(&user.token)
                .send()
                .await
                .expect("the server answers")
                .json()
                .await
                .expect("a JSON answer");
            next_batch(&answer)
        };
        tasks.push(tokio::spawn(async move {
            http.get(format!("{url}&since={since}"))
                .bearer_auth(&user.token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib(pid);
    let still_waiting = tasks.iter().filter(|t| !t.is_finished()).count();
    println!(
        "| {pollers} concurrent long-polls ({still_waiting} still parked) | RSS {:.1} MiB before, {:.1} MiB while held (+{:.1} MiB) |",
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        (during as f64 - before as f64) / 1024.0
    );
    for task in tasks {
        task.abort();
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(base), Some(pid)) = (
        args.first(),
        args.get(1).and_then(|p| p.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: sync_load BASE PID");
        return;
    };
    // Memory first, on a fresh server.
    pollers(base, pid).await;
    delivery(base).await;
    initial_sync(base).await;
}

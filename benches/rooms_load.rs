//! Load generator for the rooms issue's targets (run through `benches/rooms.sh`).
//!
//! `http BASE PID`: against a running release server (PID for its CPU time):
//!   - PUT /send into a room of 32 members from 32 concurrent connections (one per member):
//!     events/s and server CPU per event, for `SEND_SECS` seconds, `RUNS` runs;
//!   - GET /messages of 100 events: median latency over 200 requests;
//!   - POST /createRoom: median latency over 100 rooms.
//!
//! `storage MEMBERS`: in-process, a room grows to MEMBERS members, then gets 1,000
//! messages and 1,000 membership changes; prints the state bytes each kind of event
//! stored (the snapshot layer it wrote, if any).

use std::time::{Duration, Instant};

use serde_json::json;

mod common;

const MEMBERS: usize = 32;

use common::{cpu_seconds, median, register};

async fn http_bench(base: &str, pid: u32) {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let send_secs: u64 = std::env::var("SEND_SECS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let stamp = std::process::id();
    let mut users = Vec::new();
    for i in 0..MEMBERS {
        users.push(register(base, &format!("load{stamp}x{i}")).await);
    }
    let v3 = format!("{base}/_matrix/client/v3");
    let room = users[0]
        .call(
            reqwest::Method::POST,
            &format!("{v3}/createRoom"),
            Some(json!({"preset": "public_chat"})),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for user in &users[1..] {
        user.call(
            reqwest::Method::POST,
            &format!("{v3}/join/{room}"),
            Some(json!({})),
        )
        .await;
    }

    // PUT /send: 32 members, one connection each, as fast as they get answers.
    let mut rates = Vec::new();
    let mut cpu_per_event = Vec::new();
    for run in 0..runs {
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(send_secs);
        let tasks: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let url = format!("{v3}/rooms/{room}/send/m.room.message");
                let http = user.http.clone();
                let token = user.token.clone();
                tokio::spawn(async move {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        let response = http
                            .put(format!("{url}/r{run}u{i}n{sent}"))
                            .bearer_auth(&token)
                            .json(&json!({"msgtype": "m.text", "body": "load test message"}))
                            .send()
                            .await
                            .unwrap();
                        assert!(response.status().is_success(), "{}", response.status());
                        let _ = response.bytes().await;
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu_before;
        rates.push(total as f64 / elapsed);
        cpu_per_event.push(cpu * 1000.0 / total as f64);
        eprintln!(
            "send run {run}: {total} events in {elapsed:.1}s = {:.0}/s, server CPU {:.3} ms/event",
            total as f64 / elapsed,
            cpu * 1000.0 / total as f64
        );
    }

    // GET /messages?limit=100.
    let reader = &users[1];
    let url = format!("{v3}/rooms/{room}/messages?dir=b&limit=100");
    let mut latencies = Vec::new();
    let cpu_before = cpu_seconds(pid);
    for _ in 0..200 {
        let started = Instant::now();
        let page = reader.call(reqwest::Method::GET, &url, None).await;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page["chunk"].as_array().unwrap().len(), 100);
    }
    let messages_cpu = (cpu_seconds(pid) - cpu_before) * 1000.0 / 200.0;

    // POST /createRoom.
    let mut creates = Vec::new();
    let cpu_before = cpu_seconds(pid);
    for i in 0..100 {
        let started = Instant::now();
        users[i % MEMBERS]
            .call(
                reqwest::Method::POST,
                &format!("{v3}/createRoom"),
                Some(json!({"preset": "private_chat", "name": "bench room"})),
            )
            .await;
        creates.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let create_cpu = (cpu_seconds(pid) - cpu_before) * 1000.0 / 100.0;

    println!("| measure | target | result |");
    println!("|---|---|---|");
    println!(
        "| PUT /send, room of {MEMBERS}, {MEMBERS} connections | >= 5,000 events/s | {:.0} events/s (median of {runs} runs of {send_secs} s) |",
        median(rates)
    );
    println!(
        "| server CPU per sent event | <= 0.2 ms | {:.3} ms |",
        median(cpu_per_event)
    );
    println!(
        "| GET /messages, 100 events | <= 2 ms | {:.2} ms median round trip ({messages_cpu:.2} ms server CPU) |",
        median(latencies)
    );
    println!(
        "| POST /createRoom (7 events) | <= 5 ms | {:.2} ms median round trip ({create_cpu:.2} ms server CPU) |",
        median(creates)
    );
    let _ = users[0].user_id.len();
}

async fn storage_bench(members: usize) {
    use ourwhats::core::UserId;
    use ourwhats::services::rooms::create::CreateRoomRequest;
    use ourwhats::services::rooms::membership::MemberProfile;
    use ourwhats::services::rooms::sending::Txn;

    let dir = tempfile::tempdir().unwrap();
    let mut config = ourwhats::Config::embedded_default();
    config.data_dir = dir.path().to_path_buf();
    config.client.listen = "127.0.0.1:0".parse().unwrap();
    config.federation.enabled = false;
    config.logging.level = "warn".into();
    let server = ourwhats::Server::start(config).await.unwrap();
    let services = std::sync::Arc::clone(&server.services);
    let rooms = &services.rooms;
    let uid = |i: usize| UserId::parse(&format!("@m{i}:localhost")).unwrap();
    let no_profile = |_: &UserId| None;
    let room = rooms
        .create_room(
            &uid(0),
            CreateRoomRequest {
                preset: Some("public_chat".into()),
                ..CreateRoomRequest::default()
            },
            &MemberProfile::default(),
            &no_profile,
        )
        .await
        .unwrap();
    let store = rooms.store();
    let state_bytes = |event_id: &str| -> usize {
        let event = store.event_by_id(event_id).unwrap().unwrap();
        if event.meta.state_after == event.meta.state_before {
            0
        } else {
            store.state().stored_bytes(event.meta.state_after).unwrap()
        }
    };
    let last_event = || store.room(&room).unwrap().unwrap().record.extremities[0].clone();

    // Grow the room, 64 joins at a time (group commit).
    let started = Instant::now();
    let mut join_bytes = 0usize;
    let room_ref = room.as_str();
    for chunk in (1..members).collect::<Vec<_>>().chunks(64) {
        let joins = chunk.iter().map(|&i| {
            let user = uid(i);
            async move {
                rooms
                    .join(&user, room_ref, None, &MemberProfile::default())
                    .await
                    .unwrap();
                rooms
                    .store()
                    .membership(user.as_str(), room_ref)
                    .unwrap()
                    .unwrap()
                    .event_id
            }
        });
        for event_id in futures_util::future::join_all(joins).await {
            join_bytes += state_bytes(&event_id);
        }
    }
    eprintln!(
        "{members} members joined in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut message_bytes = 0usize;
    for n in 0..1000 {
        rooms
            .send_message(
                &uid(n % members),
                &room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": "hello"}),
                Txn {
                    device_id: "BENCH",
                    txn_id: &format!("m{n}"),
                },
            )
            .await
            .unwrap();
        message_bytes += state_bytes(&last_event());
    }
    let mut change_bytes = Vec::new();
    for n in 0..1000 {
        let user = uid(1 + n % (members - 1));
        if n % 2 == 0 {
            rooms.leave(&user, &room, None).await.unwrap();
        } else {
            rooms
                .join(&user, &room, None, &MemberProfile::default())
                .await
                .unwrap();
        }
        change_bytes.push(state_bytes(&last_event()) as f64);
    }
    let full_state = members * 16;
    println!("| state storage, room of {members} members | result |");
    println!("|---|---|");
    println!(
        "| per message | {:.1} bytes |",
        message_bytes as f64 / 1000.0
    );
    println!(
        "| per membership change (mean of 1,000 at {members} members) | {:.0} bytes (median {:.0}; a full copy would be {full_state}) |",
        change_bytes.iter().sum::<f64>() / 1000.0,
        median(change_bytes.clone())
    );
    println!(
        "| per join while growing to {members} (mean) | {:.0} bytes |",
        join_bytes as f64 / (members - 1) as f64
    );
    server.shutdown().await;
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("http") => {
            let base = args.get(1).expect("usage: http BASE PID");
            let pid = args
                .get(2)
                .and_then(|p| p.parse().ok())
                .expect("usage: http BASE PID");
            http_bench(base, pid).await;
        }
        Some("storage") => {
            let members = args.get(1).and_then(|m| m.parse().ok()).unwrap_or(10_000);
            storage_bench(members).await;
        }
        _ => eprintln!("usage: rooms_load http BASE PID | rooms_load storage [MEMBERS]"),
    }
}

//! State storage per event, in-process (no HTTP): a room grows to MEMBERS members, then
//! gets 1,000 messages and 1,000 membership changes; prints the state bytes each kind of
//! event stored (the snapshot layer it wrote, if any). The rooms issue's storage figures.
//! Usage: `cargo bench --bench state_storage -- MEMBERS` (without MEMBERS, as
//! `cargo test --all-targets` runs it, it does nothing).

use std::time::Instant;

use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        .unwrap()
        .room_id;
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
                    .join(&user, room_ref, None, &MemberProfile::default(), false)
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
                .join(&user, &room, None, &MemberProfile::default(), false)
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
    let members = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .find_map(|a| a.parse::<usize>().ok());
    match members {
        Some(members) if members >= 2 => storage_bench(members).await,
        _ => eprintln!("usage: state_storage MEMBERS (at least 2)"),
    }
}

//! Criterion micro-benchmarks of the event pipeline (the benchmarks issue): canonical
//! JSON, the content hash, signing, verifying, building a PDU, and one message through
//! the whole write path (build, auth, store, group fsync) of a real server in a temp
//! folder. `cargo bench --bench pipeline`; under `cargo test` each runs once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

use ourwhats::core::pdu::{self, PduTemplate};
use ourwhats::core::{
    canonical_json, event_hashes, signatures, RoomVersion, SigningKeyPair, UserId,
};
use ourwhats::services::rooms::create::CreateRoomRequest;
use ourwhats::services::rooms::membership::MemberProfile;
use ourwhats::services::rooms::sending::Txn;

/// A message PDU as a room of a few hundred events would hold it.
fn message_template() -> PduTemplate {
    PduTemplate {
        room_id: Some("!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM".into()),
        sender: "@alice:example.org".into(),
        kind: "m.room.message".into(),
        state_key: None,
        content: json!({
            "msgtype": "m.text",
            "body": "Shall we meet at the café at half past seven? I'll bring the photos.",
            "m.mentions": {"user_ids": ["@bob:example.org"]},
        }),
        prev_events: vec!["$Wf4s2Mk3J8R2f4Tl2p2ky8fSxS9Jb1lPEpZGSxoVm4w".into()],
        auth_events: vec![
            "$G0e0-W1GZ-7E5fEsBSpI4G95Pq3NlnRwjvYYKMdWSqk".into(),
            "$lh9oKeowGOhX3V8R2uT62ClyolEWQG_N1ZC2DKvCt6s".into(),
            "$bN9X8y6fYdIKuUj0Eo4grAbc7CzNI1Y2R9Zdd6wsOYM".into(),
        ],
        depth: 412,
        origin_server_ts: 1_763_700_000_000,
        redacts: None,
    }
}

fn key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[7; 32], "bench")
}

fn protocol(c: &mut Criterion) {
    let key = key();
    let built = pdu::build(RoomVersion::V12, message_template(), "example.org", &key)
        .expect("the template builds");
    let event: Value = built.pdu;
    let mut unsigned = event.clone();
    if let Some(o) = unsigned.as_object_mut() {
        o.remove("signatures");
    }

    c.bench_function("canonical_json/message_pdu", |b| {
        b.iter(|| canonical_json::to_canonical_bytes(black_box(&event)))
    });
    c.bench_function("content_hash/message_pdu", |b| {
        b.iter(|| event_hashes::content_hash(black_box(&event), RoomVersion::V12))
    });
    c.bench_function("sign/message_pdu", |b| {
        b.iter(|| {
            let mut value = unsigned.clone();
            signatures::sign_json(black_box(&mut value), "example.org", &key)
        })
    });
    let verifying = key.verifying_key();
    let redacted = ourwhats::core::redaction::redact(&event, RoomVersion::V12);
    c.bench_function("verify/message_pdu", |b| {
        b.iter(|| {
            signatures::verify_json(
                black_box(&redacted),
                "example.org",
                key.key_id(),
                &verifying,
            )
        })
    });
    c.bench_function("build/message_pdu (hash, sign, event id)", |b| {
        b.iter(|| {
            pdu::build(
                RoomVersion::V12,
                black_box(message_template()),
                "example.org",
                &key,
            )
        })
    });
}

/// One message through the real write path: queue to the room's writer, auth against
/// the room state, store the event, its state snapshot, indexes and notifications, fsync.
fn write_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temp folder");
    let (server, room) = runtime.block_on(async {
        let mut config = ourwhats::Config::embedded_default();
        config.data_dir = dir.path().to_path_buf();
        config.client.listen = "127.0.0.1:0".parse().expect("an address");
        config.federation.enabled = false;
        config.logging.level = "warn".into();
        let server = ourwhats::Server::start(config)
            .await
            .expect("the server starts");
        let services = Arc::clone(&server.services);
        let alice = UserId::parse("@alice:localhost").expect("a user id");
        let no_profile = |_: &UserId| None;
        let room = services
            .rooms
            .create_room(
                &alice,
                CreateRoomRequest {
                    preset: Some("public_chat".into()),
                    ..CreateRoomRequest::default()
                },
                &MemberProfile::default(),
                &no_profile,
            )
            .await
            .expect("the room is created")
            .room_id;
        for n in 0..8 {
            let member = UserId::parse(&format!("@m{n}:localhost")).expect("a user id");
            services
                .rooms
                .join(&member, &room, None, &MemberProfile::default(), false)
                .await
                .expect("the member joins");
        }
        (server, room)
    });
    let services = Arc::clone(&server.services);
    let alice = UserId::parse("@alice:localhost").expect("a user id");
    let mut n = 0u64;
    c.bench_function("send_message/room_of_9 (build, auth, store, fsync)", |b| {
        b.iter(|| {
            n += 1;
            runtime.block_on(services.rooms.send_message(
                &alice,
                &room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("message {n}")}),
                Txn {
                    device_id: "BENCH",
                    txn_id: &format!("t{n}"),
                },
            ))
        })
    });
    runtime.block_on(server.shutdown());
}

criterion_group!(benches, protocol, write_path);
criterion_main!(benches);

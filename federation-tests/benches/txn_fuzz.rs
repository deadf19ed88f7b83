//! A transaction fuzzer against a live server (the hostile-federation issue): server B
//! (its real key signs every request and every PDU) sends server A transactions of PDUs
//! for rooms of versions 10, 11 and 12 that B's user joined, most of them mutated
//! (signatures, content hashes, senders, room ids, auth and prev events, depths, sizes,
//! types, garbage), some valid, some valid but forking the graph wide or deep. After each
//! batch:
//! - no answer was a 5xx, and each was a transaction answer or a Matrix error;
//! - no mutated PDU that B could not have signed as it stands is readable on A (no
//!   forgery accepted), and every valid one is;
//! - alice's next message on A reaches carol on server C within 1 s.
//!
//! It prints the CPU time (user + system of the whole process, all three servers) and the
//! bytes sent per hostile PDU, per batch, and the worst batch.
//!
//! `cargo bench -p federation-tests --bench txn_fuzz -- --batches 200 --seed 7` runs long;
//! under `cargo test` a short run of 3 batches checks the same things.

use std::time::{Duration, Instant};

use federation_tests::seeded::{cpu_time, full_run, number_arg, Rng};
use federation_tests::{enc, Cluster, Instance, User};
use ourwhats::core::pdu::MAX_DEPTH;
use ourwhats::core::pdu_checks::{check_content_hash, check_signatures, KnownKey, SignatureCheck};
use ourwhats::core::{base64, event_hashes, RoomVersion};
use reqwest::Method;
use serde_json::{json, Value};

/// PDUs per transaction (the most `/send` takes is 50).
const PER_TRANSACTION: usize = 20;
/// Transactions per batch.
const TRANSACTIONS: usize = 3;

/// A room the fuzzer writes into, and what B's user needs to write there.
struct Room {
    id: String,
    version: RoomVersion,
    /// The room's create event id (an auth event before v12).
    create: String,
    power_levels: String,
    bob_member: String,
}

/// How a PDU was made, and so what A must do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Valid: A must accept it.
    Valid,
    /// Valid, on an older event or many (a fork): A must accept it.
    Fork,
    /// Signed by B as it stands but not allowed or not placeable: A may refuse it.
    SignedOdd,
    /// Not what B signed (or not signed at all): A must never show it as it stands.
    Forged,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The ids A's store gives for `room`: its create, power levels and bob's member event.
fn room_facts(a: &Instance, room_id: &str, bob: &str, version: RoomVersion) -> Room {
    let store = a.running().services.rooms.store();
    let room = store.room(room_id).unwrap().unwrap();
    let id_of = |kind: &str, key: &str| {
        store
            .state_event(room.record.state, kind, key)
            .unwrap()
            .unwrap_or_else(|| panic!("{kind} in {room_id}"))
            .event_id
            .clone()
    };
    Room {
        id: room_id.to_owned(),
        version,
        create: id_of("m.room.create", ""),
        power_levels: id_of("m.room.power_levels", ""),
        bob_member: id_of("m.room.member", bob),
    }
}

/// A's forward extremities and depth in `room`, and some older accepted events.
fn room_tips(a: &Instance, room_id: &str) -> (Vec<String>, u64, Vec<String>) {
    let store = a.running().services.rooms.store();
    let room = store.room(room_id).unwrap().unwrap();
    let recent = store
        .timeline(room.short, 0, u64::MAX, true, 30)
        .unwrap()
        .into_iter()
        .filter_map(|(_, short)| store.event(short).ok())
        .filter(|e| e.kind() == "m.room.message")
        .map(|e| e.event_id.clone())
        .collect();
    (room.record.extremities.clone(), room.record.depth, recent)
}

/// A message of bob in `room` on `prev`, at `depth`, signed by B.
fn bob_message(
    b: &Instance,
    bob: &str,
    room: &Room,
    prev: Vec<String>,
    depth: u64,
    body: &str,
) -> Value {
    let mut auth = vec![room.power_levels.clone(), room.bob_member.clone()];
    if !room.version.room_id_is_create_event_hash() {
        auth.insert(0, room.create.clone());
    }
    let mut pdu = json!({
        "type": "m.room.message",
        "room_id": room.id,
        "sender": bob,
        "origin_server_ts": now_ms(),
        "depth": depth,
        "prev_events": prev,
        "auth_events": auth,
        "content": {"msgtype": "m.text", "body": body},
    });
    sign(b, room.version, &mut pdu);
    pdu
}

fn sign(b: &Instance, version: RoomVersion, pdu: &mut Value) {
    if let Some(map) = pdu.as_object_mut() {
        map.remove("hashes");
        map.remove("signatures");
    }
    let key = &b.running().services.signing_key;
    // A PDU that cannot be hashed (not an object) stays as it is.
    let _ = event_hashes::hash_and_sign_event(pdu, b.name(), key, version);
}

/// Makes one PDU for the batch: answers it and what A must do with it.
#[allow(clippy::too_many_arguments)]
fn make_pdu(
    rng: &mut Rng,
    (b, bob): (&Instance, &str),
    rooms: &[Room],
    tips: &[(Vec<String>, u64, Vec<String>)],
    n: usize,
) -> (Value, Kind) {
    let r = rng.below(rooms.len());
    let (room, (prev, depth, recent)) = (&rooms[r], &tips[r]);
    let body = format!("fuzz {n}");
    let valid = bob_message(
        b,
        bob,
        room,
        prev.clone(),
        (depth + 1).min(MAX_DEPTH),
        &body,
    );
    let resign = |rng_pdu: &mut Value| sign(b, room.version, rng_pdu);
    match rng.below(16) {
        0 => (valid, Kind::Valid),
        1 => {
            // A fork on an older message, or a wide one on several.
            let k = 1 + rng.below(recent.len().min(20));
            let mut on: Vec<String> = Vec::new();
            for _ in 0..k {
                if let Some(id) = recent.get(rng.below(recent.len())) {
                    if !on.contains(id) {
                        on.push(id.clone());
                    }
                }
            }
            if on.is_empty() {
                return (valid, Kind::Valid);
            }
            (
                bob_message(b, bob, room, on, (depth + 1).min(MAX_DEPTH), &body),
                Kind::Fork,
            )
        }
        2 => {
            // A signature byte flipped (in the bytes: flipping a base64 character could
            // touch only the unused bits of the last one and leave the signature as it is).
            let mut pdu = valid;
            let key = b.running().services.signing_key.key_id().to_owned();
            let signature = pdu["signatures"][b.name()][&key]
                .as_str()
                .map(base64::decode);
            if let Some(Ok(mut bytes)) = signature {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
                pdu["signatures"][b.name()][&key] = json!(base64::encode(bytes));
            }
            (pdu, Kind::Forged)
        }
        3 => {
            // Content changed after signing (the content hash no longer matches).
            let mut pdu = valid;
            pdu["content"]["body"] = json!("changed after signing");
            (pdu, Kind::Forged)
        }
        4 => {
            // Speaking for another server's user, signed by B.
            let mut pdu = valid;
            pdu["sender"] = json!(format!("@alice:{}", rooms_server(&room.id)));
            resign(&mut pdu);
            (pdu, Kind::Forged)
        }
        5 => {
            // Another room's auth events.
            let other = &rooms[(r + 1) % rooms.len()];
            let mut pdu = valid;
            pdu["auth_events"] = json!([other.power_levels, other.bob_member]);
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        6 => {
            // Unknown prev or auth events (B cannot give them either).
            let mut pdu = valid;
            let unknown = format!("${:043}", rng.next_u64());
            let field = if rng.below(2) == 0 {
                "prev_events"
            } else {
                "auth_events"
            };
            pdu[field] = json!([unknown]);
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        7 => {
            // Depths of the wrong type or at the ends of the range (a request body cannot
            // hold numbers canonical JSON refuses: it could not be signed).
            let mut pdu = valid;
            let depths = [
                json!(-1),
                json!("7"),
                Value::Null,
                json!(0),
                json!((1u64 << 53) - 1),
            ];
            pdu["depth"] = depths[rng.below(depths.len())].clone();
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        8 => {
            // Over 65,536 bytes.
            let mut pdu = valid;
            pdu["content"]["body"] = json!("x".repeat(66_000 + rng.below(10_000)));
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        9 => {
            // Too many prev events, or none.
            let mut pdu = valid;
            let many: Vec<String> = (0..25).map(|i| format!("${i:043}")).collect();
            pdu["prev_events"] = if rng.below(2) == 0 {
                json!(many)
            } else {
                json!([])
            };
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        10 => {
            // A state event bob has no power for (rejected).
            let mut pdu = valid;
            pdu["type"] = json!("m.room.power_levels");
            pdu["state_key"] = json!("");
            pdu["content"] = json!({"users": {bob: 100}});
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        11 => {
            // Fields of the wrong type, or missing.
            let mut pdu = valid;
            let field = [
                "type",
                "room_id",
                "sender",
                "content",
                "prev_events",
                "auth_events",
                "origin_server_ts",
            ][rng.below(7)];
            if rng.below(2) == 0 {
                pdu.as_object_mut().unwrap().remove(field);
            } else {
                pdu[field] = [json!(42), json!([]), json!({}), json!(true)][rng.below(4)].clone();
            }
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        12 => {
            // Nested content: mostly within what the JSON parser takes (then the PDU is
            // judged), now and then beyond (then the whole body is refused).
            let levels = if rng.below(8) == 0 {
                130 + rng.below(100)
            } else {
                10 + rng.below(100)
            };
            let mut nested = json!("bottom");
            for _ in 0..levels {
                nested = json!({"n": nested});
            }
            let mut pdu = valid;
            pdu["content"]["deep"] = nested;
            resign(&mut pdu);
            (pdu, Kind::SignedOdd)
        }
        13 => {
            // Not an object at all.
            (
                [json!("a pdu"), json!(17), json!([1, 2]), Value::Null][rng.below(4)].clone(),
                Kind::Forged,
            )
        }
        14 => {
            // Unsigned.
            let mut pdu = valid;
            pdu.as_object_mut().unwrap().remove("signatures");
            (pdu, Kind::Forged)
        }
        _ => {
            // Room id changed after signing.
            let mut pdu = valid;
            pdu["room_id"] = json!(rooms[(r + 1) % rooms.len()].id);
            (pdu, Kind::Forged)
        }
    }
}

fn rooms_server(room_id: &str) -> &str {
    room_id.split_once(':').map_or("", |(_, s)| s)
}

/// Whether alice on A can read `event_id` in `room` as `content` says.
async fn readable(alice: &User, room: &str, event_id: &str) -> Option<Value> {
    let (status, event) = alice
        .get(&format!("/rooms/{}/event/{}", enc(room), enc(event_id)))
        .await;
    (status == 200).then_some(event)
}

fn main() {
    let full = full_run();
    let batches = number_arg("--batches").unwrap_or(if full { 20 } else { 3 });
    let seed = number_arg("--seed").unwrap_or(0x5EED);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let cluster = Cluster::start(3).await.unwrap();
        let (a, b, c) = (&cluster.instances[0], &cluster.instances[1], &cluster.instances[2]);
        let alice = User::register(a, "alice").await.unwrap();
        let bob = User::register(b, "bob").await.unwrap();
        let carol = User::register(c, "carol").await.unwrap();
        let mut rooms = Vec::new();
        for version in ["10", "11", "12"] {
            let id = alice
                .create_room(json!({"preset": "public_chat", "room_version": version}))
                .await;
            bob.join_via(&id, a.name()).await;
            carol.join_via(&id, a.name()).await;
            let version = RoomVersion::from_id(version).unwrap();
            rooms.push(room_facts(a, &id, &bob.user_id, version));
        }
        let mut rng = Rng::new(seed);
        let mut worst = (0.0f64, 0.0f64);
        let mut counts = [0usize; 4];
        for batch in 0..batches {
            let cpu_before = cpu_time();
            let mut bytes = 0usize;
            let mut hostile = 0usize;
            let mut sent: Vec<(Value, Kind, bool)> = Vec::new();
            let mut answers = serde_json::Map::new();
            for t in 0..TRANSACTIONS {
                let tips: Vec<_> = rooms.iter().map(|r| room_tips(a, &r.id)).collect();
                let pdus: Vec<(Value, Kind)> = (0..PER_TRANSACTION)
                    .map(|i| make_pdu(&mut rng, (b, &bob.user_id), &rooms, &tips, (batch as usize * 1000) + t * 100 + i))
                    .collect();
                let body = json!({
                    "origin": b.name(),
                    "origin_server_ts": now_ms(),
                    "pdus": pdus.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
                    "edus": [],
                });
                bytes += body.to_string().len();
                hostile += pdus.iter().filter(|(_, k)| !matches!(k, Kind::Valid | Kind::Fork)).count();
                let path = format!("/_matrix/federation/v1/send/fuzz-{seed}-{batch}-{t}");
                let (status, answer) = b.ask(a.name(), Method::PUT, &path, Some(body)).await;
                assert!(status < 500, "batch {batch}: {status} {answer}");
                if status != 200 {
                    // A body we cannot take (nesting beyond the JSON parser's limit) is
                    // refused whole; its valid PDUs are not owed.
                    println!("batch {batch} transaction {t}: {status} {}", answer["errcode"]);
                }
                if status == 200 {
                    assert!(answer["pdus"].is_object(), "batch {batch}: {answer}");
                    answers.extend(answer["pdus"].as_object().cloned().unwrap_or_default());
                } else {
                    assert!(answer["errcode"].is_string(), "batch {batch}: {status} {answer}");
                }
                let taken = status == 200;
                sent.extend(pdus.into_iter().map(|(pdu, kind)| (pdu, kind, taken)));
            }
            let cpu = cpu_time().saturating_sub(cpu_before);

            // What A shows: every valid PDU, and no forgery as it was sent.
            for (pdu, kind, taken) in &sent {
                counts[*kind as usize] += 1;
                let Some(room) = rooms.iter().find(|r| pdu["room_id"] == r.id.as_str()) else {
                    continue;
                };
                let Ok(id) = event_hashes::event_id(pdu, room.version) else {
                    continue;
                };
                let shown = readable(&alice, &room.id, &id).await;
                match kind {
                    Kind::Valid | Kind::Fork if *taken => {
                        assert!(
                            shown.is_some(),
                            "batch {batch}: a valid PDU was not taken ({}): {pdu}",
                            answers.get(&id).cloned().unwrap_or_default()
                        )
                    }
                    Kind::Forged => {
                        // The harness's own check that the mutation did forge: B's key
                        // does not verify it as it stands, or its content hash fails.
                        let key = b.running().services.signing_key.verifying_key();
                        let known = |server: &str, _: &str| {
                            (server == b.name()).then_some(KnownKey {
                                key,
                                valid_until_ts: u64::MAX,
                            })
                        };
                        let verified = check_signatures(room.version, pdu, &known)
                            == SignatureCheck::Verified;
                        let (_, redacted) = check_content_hash(room.version, pdu.clone());
                        assert!(!verified || redacted, "the harness failed to forge: {pdu}");
                        if let Some(event) = shown {
                            assert_ne!(
                                event["content"], pdu["content"],
                                "batch {batch}: a forged PDU is shown as sent: {pdu}"
                            );
                            assert_ne!(event["sender"], pdu["sender"].clone().as_str().filter(|s| s.starts_with("@alice")).map(Value::from).unwrap_or(Value::Null));
                        }
                    }
                    Kind::Valid | Kind::Fork | Kind::SignedOdd => {}
                }
            }

            // A still delivers to a third server within 1 s.
            let target = &rooms[batch as usize % rooms.len()];
            let (status, said) = alice
                .put(
                    &format!("/rooms/{}/send/m.room.message/after{batch}", enc(&target.id)),
                    json!({"msgtype": "m.text", "body": format!("after batch {batch}")}),
                )
                .await;
            assert_eq!(status, 200, "{said}");
            let id = said["event_id"].as_str().unwrap();
            let started = Instant::now();
            loop {
                let (status, _) = carol
                    .get(&format!("/rooms/{}/event/{}", enc(&target.id), enc(id)))
                    .await;
                if status == 200 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "batch {batch}: alice's message did not reach carol within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let delivery = started.elapsed();
            let per_cpu = cpu.as_secs_f64() * 1e6 / hostile.max(1) as f64;
            let per_bytes = bytes as f64 / hostile.max(1) as f64;
            worst = (worst.0.max(per_cpu), worst.1.max(per_bytes));
            println!(
                "batch {batch}: {hostile} hostile PDUs of {}, CPU {per_cpu:.0} µs and {per_bytes:.0} bytes per hostile PDU, delivery to C after it {:.1} ms",
                sent.len(),
                delivery.as_secs_f64() * 1e3
            );
        }
        println!(
            "txn_fuzz seed {seed}: {batches} batches, valid {} fork {} signed-odd {} forged {}; worst batch: CPU {:.0} µs and {:.0} bytes per hostile PDU",
            counts[0], counts[1], counts[2], counts[3], worst.0, worst.1
        );
        cluster.shutdown().await;
    });
}

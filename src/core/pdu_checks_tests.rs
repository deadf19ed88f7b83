//! One test per check, with PDUs built and signed by a test key of a made-up remote
//! server (`remote.example`), then tampered with.

use serde_json::{json, Value};

use super::*;
use crate::core::pdu::{build, PduTemplate};
use crate::core::SigningKeyPair;

const REMOTE: &str = "remote.example";
const ROOM: &str = "!room:remote.example";
const PREV: &str = "$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn remote_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[7; 32], "r1")
}

fn remote_pdu(content: Value) -> Value {
    let template = PduTemplate {
        room_id: Some(ROOM.into()),
        sender: format!("@bob:{REMOTE}"),
        kind: "m.room.message".into(),
        state_key: None,
        content,
        prev_events: vec![PREV.into()],
        auth_events: vec![PREV.into()],
        depth: 12,
        origin_server_ts: 1_000_000,
        redacts: None,
    };
    build(RoomVersion::V11, template, REMOTE, &remote_key())
        .unwrap()
        .pdu
}

fn message() -> Value {
    remote_pdu(json!({"msgtype": "m.text", "body": "hello"}))
}

fn dropped(pdu: &Value) -> String {
    check_format(RoomVersion::V11, pdu).unwrap_err().0
}

// Check 1: the format.

#[test]
fn check_1_a_well_formed_pdu_passes() {
    check_format(RoomVersion::V11, &message()).unwrap();
}

#[test]
fn check_1_floats_and_out_of_range_integers_are_dropped() {
    let mut pdu = message();
    pdu["content"]["amount"] = json!(1.5);
    assert!(dropped(&pdu).contains("not an integer"));
    let mut pdu = message();
    pdu["content"]["amount"] = json!(1u64 << 60);
    assert!(dropped(&pdu).contains("outside"));
}

#[test]
fn check_1_event_ids_in_the_alphabet_of_the_room_version() {
    let v3_id = "$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk";
    let v4_id = "$acR1l0raoZnm60CBwAVgqbZqoO_mYU81xysh1u7XcJk";
    for (version, good, bad) in [
        (RoomVersion::V3, v3_id, v4_id),
        (RoomVersion::V4, v4_id, v3_id),
        (RoomVersion::V11, v4_id, v3_id),
    ] {
        let mut pdu = message();
        pdu["prev_events"] = json!([good]);
        check_format(version, &pdu).unwrap();
        pdu["auth_events"] = json!([bad]);
        assert!(check_format(version, &pdu).is_err(), "{version}: {bad}");
    }
}

/// Rooms before v6 do not enforce canonical JSON (`rooms/fragments/v1-canonical-json.md`):
/// a power levels event with float levels and an integer beyond 2^53 passes checks 1 to 3,
/// hashed and signed over the numbers as its server wrote them; from v6 it is dropped.
#[test]
fn check_1_to_3_rooms_before_v6_take_floats_and_large_integers() {
    let mut pdu = json!({
        "type": "m.room.power_levels", "state_key": "", "sender": format!("@bob:{REMOTE}"),
        "room_id": ROOM, "prev_events": [PREV], "auth_events": [PREV], "depth": 12,
        "origin_server_ts": 1_000_000,
        "content": {"ban": 50.5, "users": {format!("@bob:{REMOTE}"): 100.0},
                    "big": 9_007_199_254_740_993u64},
    });
    event_hashes::hash_and_sign_event(&mut pdu, REMOTE, &remote_key(), RoomVersion::V5).unwrap();
    for version in [RoomVersion::V3, RoomVersion::V5] {
        check_format(version, &pdu).unwrap();
        assert_eq!(
            check_signatures(version, &pdu, &known),
            SignatureCheck::Verified
        );
        assert!(
            !check_content_hash(version, pdu.clone()).1,
            "the content hash matches"
        );
    }
    let dropped = check_format(RoomVersion::V6, &pdu).unwrap_err().0;
    assert!(dropped.contains("not an integer"), "{dropped}");
    // The bytes signed hold the numbers as written: changing 50.5 to 50 breaks the hash.
    let mut changed = pdu.clone();
    changed["content"]["ban"] = json!(50);
    assert!(check_content_hash(RoomVersion::V5, changed).1);
}

#[test]
fn check_1_a_pdu_over_64_kib_is_dropped() {
    let mut pdu = remote_pdu(json!({"msgtype": "m.text", "body": "x".repeat(60_000)}));
    check_format(RoomVersion::V11, &pdu).unwrap();
    // Our builder refuses such an event; a remote server may send one.
    pdu["content"]["body"] = json!("x".repeat(66_000));
    assert!(dropped(&pdu).contains("more than 65536"));
}

#[test]
fn check_1_missing_and_mistyped_fields_are_dropped() {
    for field in [
        "type",
        "sender",
        "room_id",
        "origin_server_ts",
        "depth",
        "content",
        "hashes",
        "signatures",
        "prev_events",
        "auth_events",
    ] {
        let mut pdu = message();
        pdu.as_object_mut().unwrap().remove(field);
        assert!(!dropped(&pdu).is_empty(), "{field}");
    }
    let cases: [(&str, Value); 9] = [
        ("type", json!(5)),
        ("sender", json!("bob")),
        ("room_id", json!("room")),
        ("origin_server_ts", json!("now")),
        ("depth", json!(-1)),
        ("content", json!([])),
        ("state_key", json!(1)),
        ("prev_events", json!(["not an id"])),
        ("unsigned", json!("x")),
    ];
    for (field, value) in cases {
        let mut pdu = message();
        pdu[field] = value;
        assert!(!dropped(&pdu).is_empty(), "{field}");
    }
}

#[test]
fn check_1_size_limits_per_key() {
    let mut pdu = message();
    pdu["type"] = json!("t".repeat(256));
    assert!(dropped(&pdu).contains("type"));
    let mut pdu = message();
    pdu["state_key"] = json!("k".repeat(256));
    assert!(dropped(&pdu).contains("state_key"));
    let mut pdu = message();
    pdu["prev_events"] = json!(vec![PREV; 21]);
    assert!(dropped(&pdu).contains("more than 20"));
    let mut pdu = message();
    pdu["auth_events"] = json!(vec![PREV; 11]);
    assert!(dropped(&pdu).contains("more than 10"));
}

#[test]
fn check_1_a_version_12_create_event_has_no_room_id() {
    let mut create = message();
    create["type"] = json!("m.room.create");
    create["state_key"] = json!("");
    assert!(check_format(RoomVersion::V12, &create)
        .unwrap_err()
        .0
        .contains("no room_id"));
    create.as_object_mut().unwrap().remove("room_id");
    check_format(RoomVersion::V12, &create).unwrap();
    assert!(check_format(RoomVersion::V11, &create).is_err());
}

// Check 2: the signatures.

fn known(server: &str, key_id: &str) -> Option<KnownKey> {
    let key = remote_key();
    (server == REMOTE && key_id == key.key_id()).then(|| KnownKey {
        key: key.verifying_key(),
        valid_until_ts: u64::MAX,
    })
}

#[test]
fn check_2_the_senders_server_signature_verifies() {
    assert_eq!(
        check_signatures(RoomVersion::V11, &message(), &known),
        SignatureCheck::Verified
    );
}

#[test]
fn check_2_a_missing_signature_is_dropped() {
    let mut pdu = message();
    pdu["signatures"] = json!({});
    assert!(matches!(
        check_signatures(RoomVersion::V11, &pdu, &known),
        SignatureCheck::Invalid(_)
    ));
    // Signed by another server only.
    let mut pdu = message();
    let sig = pdu["signatures"][REMOTE].clone();
    pdu["signatures"] = json!({ "other.example": sig });
    assert!(matches!(
        check_signatures(RoomVersion::V11, &pdu, &known),
        SignatureCheck::Invalid(_)
    ));
}

#[test]
fn check_2_without_a_valid_sender_nothing_verifies() {
    let mut pdu = message();
    pdu["sender"] = json!("not a user id");
    assert!(matches!(
        check_signatures(RoomVersion::V11, &pdu, &known),
        SignatureCheck::Invalid(_)
    ));
}

#[test]
fn check_2_a_bad_signature_is_dropped() {
    // A signed field changed after signing.
    let mut pdu = message();
    pdu["origin_server_ts"] = json!(1_000_001);
    assert!(matches!(
        check_signatures(RoomVersion::V11, &pdu, &known),
        SignatureCheck::Invalid(_)
    ));
    // Signed by a key that is not the server's.
    let impostor = SigningKeyPair::from_seed(&[9; 32], "r1");
    let template_pdu = message();
    let mut forged = template_pdu.clone();
    forged.as_object_mut().unwrap().remove("signatures");
    let redacted = crate::core::redaction::redact(&forged, RoomVersion::V11);
    let bytes = signatures::signed_bytes(redacted.as_object().unwrap()).unwrap();
    let signature = crate::core::base64::encode(impostor.sign(&bytes));
    forged["signatures"] = json!({ REMOTE: { impostor.key_id(): signature } });
    assert!(matches!(
        check_signatures(RoomVersion::V11, &forged, &known),
        SignatureCheck::Invalid(_)
    ));
}

#[test]
fn check_2_an_unknown_key_is_reported_to_be_fetched() {
    let nothing = |_: &str, _: &str| None;
    assert_eq!(
        check_signatures(RoomVersion::V11, &message(), &nothing),
        SignatureCheck::NeedKeys(vec![(REMOTE.into(), "ed25519:r1".into())])
    );
}

#[test]
fn check_2_a_key_expired_before_the_event_does_not_count() {
    let expired = |server: &str, key_id: &str| {
        known(server, key_id).map(|k| KnownKey {
            valid_until_ts: 999_999,
            ..k
        })
    };
    assert!(matches!(
        check_signatures(RoomVersion::V11, &message(), &expired),
        SignatureCheck::Invalid(_)
    ));
    // Validity periods are enforced from room version 5 (spec: rooms v5, "Signing key
    // validity period"); in rooms 3 and 4 the expired key still counts.
    assert!(matches!(
        check_signatures(RoomVersion::V5, &message(), &expired),
        SignatureCheck::Invalid(_)
    ));
    for version in [RoomVersion::V3, RoomVersion::V4] {
        assert_eq!(
            check_signatures(version, &message(), &expired),
            SignatureCheck::Verified
        );
    }
}

// Check 3: the content hash.

#[test]
fn check_3_a_matching_hash_keeps_the_event() {
    let pdu = message();
    assert_eq!(
        check_content_hash(RoomVersion::V11, pdu.clone()),
        (pdu, false)
    );
}

#[test]
fn check_3_a_changed_content_is_kept_redacted_and_still_verifies() {
    let mut pdu = message();
    pdu["content"]["body"] = json!("changed on the way");
    // The signature covers the redacted form, so it still holds ...
    assert_eq!(
        check_signatures(RoomVersion::V11, &pdu, &known),
        SignatureCheck::Verified
    );
    // ... but the hash does not: the event is kept without its content.
    let (kept, redacted) = check_content_hash(RoomVersion::V11, pdu.clone());
    assert!(redacted);
    assert_eq!(kept["content"], json!({}));
    assert_eq!(kept["sender"], pdu["sender"]);
}

// Rooms v1 and v2: the event carries its id, references carry hashes, and the server
// named in the id signs too.

fn v1_pdu(sender: &str, id_server: &str) -> Value {
    let template = PduTemplate {
        room_id: Some(ROOM.into()),
        sender: sender.into(),
        kind: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "hello"}),
        prev_events: vec!["$prev:remote.example".into()],
        auth_events: vec!["$auth:remote.example".into()],
        depth: 12,
        origin_server_ts: 1_000_000,
        redacts: None,
    };
    let hash = |_: &str| Some([3u8; 32]);
    crate::core::pdu::build_referencing(RoomVersion::V1, template, &hash, id_server, &remote_key())
        .unwrap()
        .pdu
}

#[test]
fn check_1_v1_and_v2_events_carry_their_id_and_reference_events_with_hashes() {
    let pdu = v1_pdu(&format!("@bob:{REMOTE}"), REMOTE);
    check_format(RoomVersion::V1, &pdu).unwrap();
    check_format(RoomVersion::V2, &pdu).unwrap();
    // The later format lists plain ids, and the older one pairs.
    assert!(check_format(RoomVersion::V3, &pdu)
        .unwrap_err()
        .0
        .contains("event ids"));
    assert!(check_format(RoomVersion::V1, &message()).is_err());
    let refused = |change: &dyn Fn(&mut Value)| {
        let mut bad = pdu.clone();
        change(&mut bad);
        check_format(RoomVersion::V1, &bad).unwrap_err().0
    };
    assert!(refused(&|p| {
        p.as_object_mut().unwrap().remove("event_id");
    })
    .contains("event_id"));
    assert!(refused(&|p| p["event_id"] = json!("$no_server")).contains("event_id"));
    assert!(refused(&|p| p["event_id"] = json!(7)).contains("event_id"));
    assert!(refused(&|p| p["prev_events"] = json!([["$prev:remote.example"]])).contains("pairs"));
    assert!(refused(&|p| p["auth_events"] = json!([["$a:r.example", "h"]])).contains("pairs"));
    assert!(refused(&|p| p["auth_events"] = json!(["$a:r.example"])).contains("pairs"));
    assert!(refused(&|p| p["prev_events"] = json!([["nosigil:r", {}]])).contains("pairs"));
}

#[test]
fn check_2_in_v1_the_server_named_in_the_event_id_signs_too() {
    let other = "other.example";
    let both = |server: &str, key_id: &str| {
        let key = remote_key();
        (key_id == key.key_id() && (server == REMOTE || server == other)).then(|| KnownKey {
            key: key.verifying_key(),
            valid_until_ts: u64::MAX,
        })
    };
    // Sent by bob of remote.example under an id of other.example, signed only by the
    // latter: remote.example's signature is missing.
    let mut pdu = v1_pdu(&format!("@bob:{REMOTE}"), other);
    assert_eq!(required_signers(RoomVersion::V1, &pdu), [REMOTE, other]);
    assert!(matches!(
        check_signatures(RoomVersion::V1, &pdu, &both),
        SignatureCheck::Invalid(reason) if reason.contains(REMOTE)
    ));
    // Signed by both, each key known: verified; other.example's key unknown: fetched.
    event_hashes::sign_event(&mut pdu, REMOTE, &remote_key(), RoomVersion::V1).unwrap();
    assert_eq!(
        check_signatures(RoomVersion::V1, &pdu, &both),
        SignatureCheck::Verified
    );
    assert!(matches!(
        check_signatures(RoomVersion::V1, &pdu, &known),
        SignatureCheck::NeedKeys(keys) if keys[0].0 == other
    ));
    // From v3 on, the id is the hash and names no server: the sender's signature is all.
    assert_eq!(required_signers(RoomVersion::V3, &pdu), [REMOTE]);
    // An event of carol (other.example) whose id only remote.example signed is dropped.
    let carol = v1_pdu(&format!("@carol:{other}"), REMOTE);
    assert!(matches!(
        check_signatures(RoomVersion::V1, &carol, &both),
        SignatureCheck::Invalid(reason) if reason.contains(other)
    ));
}

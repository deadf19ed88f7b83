//! Fuzzing of the pure receive path with proptest (the hostile-federation issue: canonical
//! JSON parsing, PDU parsing and checks 1 to 3). `cargo fuzz` needs a nightly compiler,
//! which CI does not have; these run under `cargo test` with a short case count, and long
//! with `PDU_FUZZ_CASES=100000 cargo test --lib pdu_fuzz`.
//!
//! Properties:
//! - any bytes: parsing answers a value or an error, never a panic, and a value's
//!   canonical form (when it has one) is a fixed point;
//! - a signed PDU with any mutations (values replaced by random JSON, keys removed or
//!   added, at any depth): the format check, the event id, the signature check and the
//!   content hash check answer without a panic, and a mutated PDU whose signature verifies
//!   and whose content hash matches differs from the original only in `unsigned` or in
//!   `signatures`: no forgery is accepted.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::canonical_json::Numbers;
use super::pdu::{build, PduTemplate};
use super::pdu_checks::{
    check_content_hash, check_format, check_signatures, KnownKey, SignatureCheck,
};
use super::{canonical_json, event_hashes, RoomVersion, SigningKeyPair};
use crate::http::extract::parse_json;

const REMOTE: &str = "remote.example";

fn cases() -> u32 {
    std::env::var("PDU_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn remote_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[5; 32], "f1")
}

fn signed_pdu(version: RoomVersion) -> Value {
    let template = PduTemplate {
        room_id: Some("!room:remote.example".into()),
        sender: format!("@bob:{REMOTE}"),
        kind: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "hello", "nested": {"a": [1, 2, {"b": "c"}]}}),
        prev_events: vec!["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()],
        auth_events: vec!["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into()],
        depth: 12,
        origin_server_ts: 1_000_000,
        redacts: None,
    };
    build(version, template, REMOTE, &remote_key()).unwrap().pdu
}

fn known(server: &str, key_id: &str) -> Option<KnownKey> {
    let key = remote_key();
    (server == REMOTE && key_id == key.key_id()).then(|| KnownKey {
        key: key.verifying_key(),
        valid_until_ts: u64::MAX,
    })
}

/// Random JSON, a few levels deep, with the kinds of values a hostile server sends.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("@mallory:evil.example")),
        Just(json!("a\"b\\c\n\t\u{1}\u{1f}\u{7f}é")),
        Just(json!(-9_007_199_254_740_991i64)),
        Just(json!("$cccccccccccccccccccccccccccccccccccccccccc")),
        Just(json!("x".repeat(70_000))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON value: `path` picks where (each number chooses among the keys or
/// items at its level), `what` what is done there.
#[derive(Debug, Clone)]
enum Change {
    Replace(Value),
    Remove,
    Insert(String, Value),
}

fn change() -> impl Strategy<Value = (Vec<usize>, Change)> {
    let what = prop_oneof![
        json_value().prop_map(Change::Replace),
        Just(Change::Remove),
        (".{0,12}", json_value()).prop_map(|(k, v)| Change::Insert(k, v)),
    ];
    (proptest::collection::vec(any::<usize>(), 0..5), what)
}

fn apply(value: &mut Value, path: &[usize], change: Change) {
    let Some((&first, rest)) = path.split_first() else {
        match change {
            Change::Replace(v) => *value = v,
            Change::Insert(k, v) => {
                if let Value::Object(map) = value {
                    map.insert(k, v);
                }
            }
            Change::Remove => *value = Value::Null,
        }
        return;
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map
                .keys()
                .nth(first % map.len())
                .cloned()
                .unwrap_or_default();
            if rest.is_empty() && matches!(change, Change::Remove) {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                apply(child, rest, change);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = first % items.len();
            if rest.is_empty() && matches!(change, Change::Remove) {
                items.remove(i);
            } else {
                apply(&mut items[i], rest, change);
            }
        }
        _ => apply(value, &[], change),
    }
}

/// The PDU without what anyone may change freely: `unsigned`, and `signatures` (which
/// no signature covers; extra entries there change neither the event nor its id).
fn signed_part(pdu: &Value) -> Value {
    let mut out = pdu.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("unsigned");
        map.remove("signatures");
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_parse_or_fail_cleanly_and_canonical_forms_are_fixed_points(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        text in "[\\[\\]{}\":,0-9a-z\\\\. eE+-]{0,120}",
    ) {
        for input in [bytes.as_slice(), text.as_bytes()] {
            if let Ok(value) = parse_json::<Value>(input) {
                if let Ok(canonical) = canonical_json::to_canonical_bytes(&value) {
                    let again: Value = parse_json(&canonical).unwrap();
                    prop_assert_eq!(canonical_json::to_canonical_bytes(&again).unwrap(), canonical);
                }
            }
        }
    }

    /// The size check counts exactly what the writer writes, and fails alike.
    #[test]
    fn encoded_len_is_the_length_written(value in json_value(), lenient in any::<bool>()) {
        let numbers = if lenient { Numbers::Lenient } else { Numbers::Canonical };
        prop_assert_eq!(
            canonical_json::encoded_len(&value, numbers),
            canonical_json::to_bytes(&value, numbers).map(|bytes| bytes.len())
        );
    }

    #[test]
    fn mutated_pdus_never_panic_and_never_pass_as_the_senders(
        v12 in any::<bool>(),
        changes in proptest::collection::vec(change(), 1..4),
    ) {
        let version = if v12 { RoomVersion::V12 } else { RoomVersion::V11 };
        let original = signed_pdu(version);
        let mut pdu = original.clone();
        for (path, change) in changes {
            apply(&mut pdu, &path, change);
        }
        let _ = check_format(version, &pdu);
        let _ = event_hashes::event_id(&pdu, version);
        let verified = check_signatures(version, &pdu, &known) == SignatureCheck::Verified;
        let (_, redacted) = check_content_hash(version, pdu.clone());
        if verified && !redacted {
            prop_assert_eq!(signed_part(&pdu), signed_part(&original));
        }
    }
}

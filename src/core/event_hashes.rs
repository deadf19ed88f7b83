//! Content hashes, reference hashes, event ids and the signing of events.
//!
//! Spec: server-server API, "Calculating the content hash for an event",
//! "Calculating the reference hash for an event" and "Signing events"; rooms v4+
//! "Event IDs"; rooms v12 "Event format" (the room id is the create event's hash).

use ring::digest::{digest, SHA256};
use serde_json::{json, Value};

use super::base64;
use super::canonical_json::{self, Numbers};
use super::redaction::redact;
use super::room_version::RoomVersion;
use super::signatures::{self, SignatureError};
use super::signing_key::SigningKeyPair;

/// SHA-256 over the event without `unsigned`, `signatures` and `hashes`, numbers written
/// as events of rooms of `version` have them.
pub fn content_hash(event: &Value, version: RoomVersion) -> Result<[u8; 32], SignatureError> {
    let object = event.as_object().ok_or(SignatureError::NotAnObject)?;
    let bytes = canonical_json::object_to_bytes_without(
        object,
        &["unsigned", "signatures", "hashes"],
        Numbers::of(version),
    )?;
    Ok(sha256(&bytes))
}

/// SHA-256 over the redacted event without `signatures` and `unsigned`.
pub fn reference_hash(event: &Value, version: RoomVersion) -> Result<[u8; 32], SignatureError> {
    Ok(sha256(&redacted_signed_bytes(event, version)?))
}

/// The redacted event without `signatures` and `unsigned`, as canonical JSON: what the
/// reference hash hashes and what every server's signature of the event covers (spec:
/// server-server API, "Calculating the reference hash for an event" and "Signing
/// events"), so one pass serves both checks of a received PDU.
pub fn redacted_signed_bytes(
    event: &Value,
    version: RoomVersion,
) -> Result<Vec<u8>, SignatureError> {
    let redacted = redact(event, version);
    let object = redacted.as_object().ok_or(SignatureError::NotAnObject)?;
    Ok(signatures::signed_bytes_with(object, Numbers::of(version))?)
}

/// The event id of `event`: `$` + unpadded base64 of the reference hash (rooms v3, the
/// standard alphabet; v4+, URL-safe); in rooms v1 and v2, the `event_id` the event
/// carries, which must have the form `$opaque:server` (spec: rooms v1, "Event IDs").
pub fn event_id(event: &Value, version: RoomVersion) -> Result<String, SignatureError> {
    if !version.event_ids_are_reference_hashes() {
        return carried_event_id(event);
    }
    Ok(event_id_of_hash(reference_hash(event, version)?, version))
}

/// As [`event_id`], with the event's [`redacted_signed_bytes`] already written.
pub fn event_id_over(
    event: &Value,
    version: RoomVersion,
    signed: &[u8],
) -> Result<String, SignatureError> {
    if !version.event_ids_are_reference_hashes() {
        return carried_event_id(event);
    }
    Ok(event_id_of_hash(sha256(signed), version))
}

/// Rooms v1 and v2: the `event_id` the event carries.
fn carried_event_id(event: &Value) -> Result<String, SignatureError> {
    match event.get("event_id").and_then(Value::as_str) {
        Some(id) if is_v1_event_id(id) => Ok(id.to_owned()),
        _ => Err(SignatureError::NoEventId),
    }
}

/// Spec: rooms v1, "Event IDs": `$opaque_id:domain`, the domain a server name.
pub fn is_v1_event_id(id: &str) -> bool {
    id.contains(':') && super::identifiers::EventId::parse(id).is_ok()
}

/// The server named in a rooms v1/v2 event id (`$opaque:server`).
pub fn event_id_server(id: &str) -> Option<&str> {
    id.split_once(':').map(|(_, server)| server)
}

/// The event id of a reference hash in a room of `version`.
pub fn event_id_of_hash(hash: [u8; 32], version: RoomVersion) -> String {
    if version.event_ids_are_url_safe() {
        format!("${}", base64::encode_url_safe(hash))
    } else {
        format!("${}", base64::encode(hash))
    }
}

/// The room id a v12 create event defines: its event id with the `!` sigil.
pub fn room_id_from_create_event(
    create_event: &Value,
    version: RoomVersion,
) -> Result<String, SignatureError> {
    Ok(format!(
        "!{}",
        base64::encode_url_safe(reference_hash(create_event, version)?)
    ))
}

/// Adds `hashes.sha256` and the server's signature over the redacted event, in place, and
/// answers the event's reference hash: the signature covers the same bytes (the redacted
/// event without `signatures` and `unsigned`), so they are built once for both.
///
/// Spec: server-server API, "Signing events" (`hash_and_sign_event`), and room versions
/// 4+, "Event IDs" (the reference hash).
pub fn hash_and_sign_event(
    event: &mut Value,
    server_name: &str,
    key: &SigningKeyPair,
    version: RoomVersion,
) -> Result<[u8; 32], SignatureError> {
    let hash = content_hash(event, version)?;
    let object = event.as_object_mut().ok_or(SignatureError::NotAnObject)?;
    object.insert(
        "hashes".to_owned(),
        json!({ "sha256": base64::encode(hash) }),
    );
    sign_event(event, server_name, key, version)
}

/// Adds `server_name`'s signature to an event that already has its hashes (spec:
/// "Signing events": the redacted form is signed), keeping the signatures it has; answers
/// the event's reference hash. A resident server signs a restricted join this way.
pub fn sign_event(
    event: &mut Value,
    server_name: &str,
    key: &SigningKeyPair,
    version: RoomVersion,
) -> Result<[u8; 32], SignatureError> {
    let redacted = redact(event, version);
    let redacted = redacted.as_object().ok_or(SignatureError::NotAnObject)?;
    let bytes = signatures::signed_bytes_with(redacted, Numbers::of(version))?;
    let signature = base64::encode(key.sign(&bytes));
    let object = event.as_object_mut().ok_or(SignatureError::NotAnObject)?;
    signatures::add_signature(object, server_name, key.key_id(), signature);
    Ok(sha256(&bytes))
}

/// Whether `hashes.sha256` matches the event's content hash.
pub fn content_hash_matches(event: &Value, version: RoomVersion) -> Result<bool, SignatureError> {
    let Some(claimed) = event
        .get("hashes")
        .and_then(|h| h.get("sha256"))
        .and_then(Value::as_str)
    else {
        return Ok(false);
    };
    let Ok(claimed) = base64::decode(claimed) else {
        return Ok(false);
    };
    Ok(claimed == content_hash(event, version)?)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signatures::tests::spec_key;
    use crate::core::signatures::verify_json;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// Spec: appendices, "Event Signing", the minimally-sized event. The vectors use the
    /// redaction rules that keep `origin`, i.e. those of room version 10.
    #[test]
    fn spec_event_signing_minimal_event() {
        let mut event = parse(
            r#"{
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {
        "age_ts": 1000000
    }
}"#,
        );
        hash_and_sign_event(&mut event, "domain", &spec_key(), RoomVersion::V10).unwrap();
        assert_eq!(
            event,
            parse(
                r#"{
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {
        "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    },
    "type": "X",
    "unsigned": {
        "age_ts": 1000000
    }
}"#
            )
        );
    }

    /// Spec: appendices, "Event Signing", the event with redactable content.
    #[test]
    fn spec_event_signing_redactable_content() {
        let mut event = parse(
            r#"{
    "content": {
        "body": "Here is the message content"
    },
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {
        "age_ts": 1000000
    }
}"#,
        );
        hash_and_sign_event(&mut event, "domain", &spec_key(), RoomVersion::V10).unwrap();
        assert_eq!(
            event,
            parse(
                r#"{
    "content": {
        "body": "Here is the message content"
    },
    "event_id": "$0:domain",
    "hashes": {
        "sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        }
    },
    "unsigned": {
        "age_ts": 1000000
    }
}"#
            )
        );
        assert!(content_hash_matches(&event, RoomVersion::V10).unwrap());
        // The signature covers the redacted form, so it verifies on that form.
        let redacted = redact(&event, RoomVersion::V10);
        verify_json(
            &redacted,
            "domain",
            "ed25519:1",
            &spec_key().verifying_key(),
        )
        .unwrap();
    }

    #[test]
    fn content_hash_detects_a_changed_body() {
        let mut event = json!({"type": "m.room.message", "content": {"body": "a"}, "room_id": "!r:x", "sender": "@a:x"});
        hash_and_sign_event(&mut event, "x", &spec_key(), RoomVersion::V12).unwrap();
        assert!(content_hash_matches(&event, RoomVersion::V12).unwrap());
        event["content"]["body"] = json!("b");
        assert!(!content_hash_matches(&event, RoomVersion::V12).unwrap());
        assert!(
            !content_hash_matches(&json!({"hashes": {"sha256": "!!"}}), RoomVersion::V12).unwrap()
        );
    }

    #[test]
    fn event_id_ignores_non_essential_content_and_unsigned() {
        let a = json!({"type": "m.room.message", "content": {"body": "a"}, "hashes": {"sha256": "h"}, "unsigned": {"x": 1}});
        let b =
            json!({"type": "m.room.message", "content": {"body": "b"}, "hashes": {"sha256": "h"}});
        let id = event_id(&a, RoomVersion::V11).unwrap();
        assert_eq!(id, event_id(&b, RoomVersion::V11).unwrap());
        assert!(id.starts_with('$'));
        assert_eq!(id.len(), 44);
        assert!(!id.contains('+') && !id.contains('/'));
    }

    #[test]
    fn the_bytes_written_once_give_the_event_id_and_verify_the_signature() {
        let mut event = json!({"type": "m.room.message", "content": {"body": "a"},
                               "room_id": "!r:x", "sender": "@a:x", "event_id": "$e:x",
                               "unsigned": {"age": 1}});
        hash_and_sign_event(&mut event, "x", &spec_key(), RoomVersion::V12).unwrap();
        for version in [RoomVersion::V1, RoomVersion::V3, RoomVersion::V12] {
            let signed = redacted_signed_bytes(&event, version).unwrap();
            assert_eq!(
                event_id_over(&event, version, &signed).unwrap(),
                event_id(&event, version).unwrap()
            );
        }
        let signed = redacted_signed_bytes(&event, RoomVersion::V12).unwrap();
        let signature = event["signatures"]["x"]["ed25519:1"].as_str().unwrap();
        let key = spec_key().verifying_key();
        assert!(signatures::verify_signature_over(&signed, signature, &key).is_ok());
        // The body is not covered (redacted away); the type is.
        let mut changed = event.clone();
        changed["type"] = json!("m.room.other");
        let signed = redacted_signed_bytes(&changed, RoomVersion::V12).unwrap();
        assert!(signatures::verify_signature_over(&signed, signature, &key).is_err());
    }

    #[test]
    fn v3_event_ids_use_the_standard_alphabet_and_v4_the_url_safe_one() {
        // Search for an event whose hash has a byte that encodes as `+`/`-` or `/`/`_`.
        let found = (0..200).find_map(|n| {
            let event = json!({"type": "m.room.message", "content": {}, "depth": n,
                               "hashes": {"sha256": "h"}});
            let v3 = event_id(&event, RoomVersion::V3).unwrap();
            let v4 = event_id(&event, RoomVersion::V4).unwrap();
            (v3.contains(['+', '/'])).then_some((v3, v4))
        });
        let (v3, v4) = found.expect("some hash among 200 encodes a + or /");
        assert_eq!(v3.len(), 44);
        assert_eq!(v3.replace('+', "-").replace('/', "_"), v4);
        assert_eq!(
            event_id(&json!({"type": "t"}), RoomVersion::V5).unwrap(),
            event_id(&json!({"type": "t"}), RoomVersion::V4).unwrap()
        );
    }

    #[test]
    fn v12_room_id_is_the_create_event_hash_with_a_bang() {
        let create = json!({
            "type": "m.room.create", "state_key": "", "sender": "@a:x",
            "content": {"room_version": "12"}, "origin_server_ts": 1, "depth": 1,
            "prev_events": [], "auth_events": [], "hashes": {"sha256": "h"}
        });
        let room_id = room_id_from_create_event(&create, RoomVersion::V12).unwrap();
        let event_id = event_id(&create, RoomVersion::V12).unwrap();
        assert_eq!(&room_id[1..], &event_id[1..]);
        assert!(room_id.starts_with('!'));
    }
}

//! The checks on receipt of a PDU that need nothing but the PDU and the sender's keys.
//!
//! Spec: server-server API, "Checks performed on receipt of a PDU". A server receiving
//! an event from another must ensure that the event:
//! 1. is a valid event of its room version (the event format, and the client-server
//!    API's "Size limits"), otherwise it is dropped: [`check_format`];
//! 2. passes signature checks, otherwise it is dropped: [`check_signatures`];
//! 3. passes hash checks, otherwise it is redacted before being processed further:
//!    [`check_content_hash`];
//! 4. passes the authorisation rules based on its auth events, otherwise it is rejected;
//! 5. passes them based on the state before it, otherwise it is rejected;
//! 6. passes them based on the current state of the room, otherwise it is soft failed.
//!
//! Checks 4 to 6 are [`super::auth_rules::check`] against three states, which the rooms
//! service assembles from its graph; check 7 (policy servers) is not supported. Pure: keys
//! come through a lookup, and a key the lookup does not know is reported so that the caller
//! can fetch it (outside any room's writer) and ask again.

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::canonical_json::{self, CanonicalJsonError, Numbers};
use super::event_hashes;
use super::identifiers::{is_standard_hash, is_url_safe_hash};
use super::identifiers::{RoomId, UserId};
use super::pdu::{MAX_AUTH_EVENTS, MAX_DEPTH, MAX_PREV_EVENTS};
use super::redaction;
use super::room_version::RoomVersion;
use super::signatures;

/// The largest PDU, as canonical JSON with its signatures (spec: "Size limits").
pub const MAX_PDU_BYTES: usize = 65_536;
/// The longest `type` and `state_key` (bytes), and user and room ids.
const MAX_KEY_BYTES: usize = 255;

/// Why a PDU was dropped by check 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

fn invalid<T>(reason: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(reason.into()))
}

/// Check 1: the PDU has the event format of its room version (rooms 1 and 2: an
/// `event_id` of the form `$opaque:server` and `[id, hashes]` pairs as references; rooms
/// 3 to 12: the v3 format, with v3 event ids in room 3 and v4 ones after, v12 without
/// `room_id` on the create event), is canonical JSON (no floats, integers within ±(2^53 - 1)) from room
/// version 6 (before, "servers MUST NOT strictly enforce" it: floats and large integers
/// pass, written as [`Numbers::Lenient`] says), and is at most [`MAX_PDU_BYTES`] as
/// canonical JSON.
pub fn check_format(version: RoomVersion, pdu: &Value) -> Result<(), FormatError> {
    let Some(object) = pdu.as_object() else {
        return invalid("a PDU must be a JSON object");
    };
    let len = canonical_json::encoded_len(pdu, Numbers::of(version)).map_err(|e| match e {
        CanonicalJsonError::NotAnInteger(n) => FormatError(format!("{n} is not an integer")),
        CanonicalJsonError::OutOfRange(n) => FormatError(format!("{n} is outside ±(2^53 - 1)")),
    })?;
    if len > MAX_PDU_BYTES {
        return invalid(format!("the PDU is {len} bytes, more than {MAX_PDU_BYTES}"));
    }
    let string = |key: &str| -> Result<Option<&str>, FormatError> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => invalid(format!("{key} must be a string")),
        }
    };
    let required = |key: &str| -> Result<&Value, FormatError> {
        object
            .get(key)
            .ok_or_else(|| FormatError(format!("{key} is missing")))
    };

    let Some(kind) = string("type")? else {
        return invalid("type is missing");
    };
    if kind.len() > MAX_KEY_BYTES {
        return invalid("type is longer than 255 bytes");
    }
    if let Some(state_key) = string("state_key")? {
        if state_key.len() > MAX_KEY_BYTES {
            return invalid("state_key is longer than 255 bytes");
        }
    }
    let Some(sender) = string("sender")? else {
        return invalid("sender is missing");
    };
    if sender.len() > MAX_KEY_BYTES || UserId::parse(sender).is_err() {
        return invalid("sender is not a valid user id");
    }
    let is_v12_create = version.room_id_is_create_event_hash() && kind == "m.room.create";
    match (string("room_id")?, is_v12_create) {
        (Some(_), true) => return invalid("a version 12 create event has no room_id"),
        (None, false) => return invalid("room_id is missing"),
        (Some(room_id), false) => {
            if room_id.len() > MAX_KEY_BYTES || RoomId::parse(room_id).is_err() {
                return invalid("room_id is not a valid room id");
            }
        }
        (None, true) => {}
    }
    if !required("origin_server_ts")?.is_i64() {
        return invalid("origin_server_ts must be an integer");
    }
    // Spec: `depth` up to 2^63 - 1 in the PDU formats of rooms v3 to v5 (`pdu_v3.yaml`,
    // `pdu_v4.yaml`); v6 lowered it to canonical JSON's 2^53 - 1.
    let max_depth = if version.strict_canonical_json() {
        MAX_DEPTH
    } else {
        i64::MAX as u64
    };
    match required("depth")?.as_u64() {
        Some(depth) if depth <= max_depth => {}
        _ => return invalid(format!("depth must be an integer from 0 to {max_depth}")),
    }
    if !required("content")?.is_object() {
        return invalid("content must be an object");
    }
    match required("hashes")?.get("sha256") {
        Some(Value::String(_)) => {}
        _ => return invalid("hashes.sha256 must be a string"),
    }
    let Some(signatures) = required("signatures")?.as_object() else {
        return invalid("signatures must be an object");
    };
    for by_server in signatures.values() {
        let Some(by_key) = by_server.as_object() else {
            return invalid("signatures must map servers to objects");
        };
        if !by_key.values().all(Value::is_string) {
            return invalid("signatures must be strings");
        }
    }
    if object.get("unsigned").is_some_and(|u| !u.is_object()) {
        return invalid("unsigned must be an object");
    }
    if !version.event_ids_are_reference_hashes() {
        match string("event_id")? {
            Some(id) if is_event_id(version, id) => {}
            _ => return invalid("event_id must be of the form $opaque:server"),
        }
    }
    let what = if version.event_references_carry_hashes() {
        "a list of [event id, hashes] pairs"
    } else {
        "a list of event ids"
    };
    for (key, max) in [
        ("prev_events", MAX_PREV_EVENTS),
        ("auth_events", MAX_AUTH_EVENTS),
    ] {
        let Some(references) = required(key)?.as_array() else {
            return invalid(format!("{key} must be {what}"));
        };
        if references.len() > max {
            return invalid(format!("{key} holds more than {max} events"));
        }
        if !references.iter().all(|r| is_reference(version, r)) {
            return invalid(format!("{key} must be {what}"));
        }
    }
    Ok(())
}

/// One entry of `prev_events` or `auth_events`: an event id (rooms v3 and later), or
/// (rooms v1 and v2, `pdu_v1.yaml`) a pair of an event id and an object of hashes.
fn is_reference(version: RoomVersion, reference: &Value) -> bool {
    if !version.event_references_carry_hashes() {
        return reference
            .as_str()
            .is_some_and(|id| is_event_id(version, id));
    }
    match reference.as_array().map(Vec::as_slice) {
        Some([Value::String(id), Value::Object(hashes)]) => {
            is_event_id(version, id) && hashes.values().all(Value::is_string)
        }
        _ => false,
    }
}

/// Spec: "Event IDs": rooms v1 and v2, `$opaque:server`; v3, `$` and the unpadded
/// standard base64 of a sha256 hash; v4 and later, URL-safe base64.
fn is_event_id(version: RoomVersion, id: &str) -> bool {
    if !version.event_ids_are_reference_hashes() {
        return event_hashes::is_v1_event_id(id);
    }
    id.strip_prefix('$').is_some_and(|hash| {
        if version.event_ids_are_url_safe() {
            is_url_safe_hash(hash)
        } else {
            is_standard_hash(hash)
        }
    })
}

/// A server's verify key as the caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct KnownKey {
    /// The public key.
    pub key: VerifyingKey,
    /// Until when (ms since the epoch) the key may sign events.
    pub valid_until_ts: u64,
}

/// What [`check_signatures`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Every server that must sign did, with a key valid at the event's time.
    Verified,
    /// These `(server, key id)` are unknown: fetch them and check again.
    NeedKeys(Vec<(String, String)>),
    /// The event must be dropped.
    Invalid(String),
}

/// The servers whose signatures an event needs (spec: "Validating hashes and signatures
/// on received events"): the sender's server, and in rooms v1 and v2 also the server
/// named in the event id. Empty when the sender is not a user id.
pub fn required_signers(version: RoomVersion, pdu: &Value) -> Vec<String> {
    let Some(sender) = pdu
        .get("sender")
        .and_then(Value::as_str)
        .and_then(|s| UserId::parse(s).ok())
    else {
        return Vec::new();
    };
    let mut servers = vec![sender.server_name().to_owned()];
    if version.event_id_server_signs() {
        let id_server = pdu
            .get("event_id")
            .and_then(Value::as_str)
            .and_then(event_hashes::event_id_server);
        if let Some(server) = id_server.filter(|s| *s != servers[0]) {
            servers.push(server.to_owned());
        }
    }
    servers
}

/// Check 2: the redacted event carries a valid signature of every server that must sign,
/// by a key known to `keys` that had not expired at the event's `origin_server_ts` (rooms
/// v5 and later; in rooms 3 and 4 an expired key still counts).
/// Signatures by keys the caller does not know are skipped, as the spec says; a server
/// with no known key among its signatures is reported as [`SignatureCheck::NeedKeys`].
/// Run on the redacted form, so it holds whether the full event or a redacted copy came.
pub fn check_signatures(
    version: RoomVersion,
    pdu: &Value,
    keys: &dyn Fn(&str, &str) -> Option<KnownKey>,
) -> SignatureCheck {
    match event_hashes::redacted_signed_bytes(pdu, version) {
        Ok(signed) => check_signatures_over(version, pdu, &signed, keys),
        Err(e) => SignatureCheck::Invalid(format!("not signable: {e:?}")),
    }
}

/// As [`check_signatures`], with the PDU's
/// [`redacted_signed_bytes`](event_hashes::redacted_signed_bytes) already written.
pub fn check_signatures_over(
    version: RoomVersion,
    pdu: &Value,
    signed: &[u8],
    keys: &dyn Fn(&str, &str) -> Option<KnownKey>,
) -> SignatureCheck {
    let signers = required_signers(version, pdu);
    if signers.is_empty() {
        return SignatureCheck::Invalid("the sender is not a valid user id".into());
    }
    let mut missing = Vec::new();
    for server in signers {
        match check_server_signature_over(version, pdu, signed, &server, keys) {
            SignatureCheck::Verified => {}
            SignatureCheck::NeedKeys(unknown) => missing.extend(unknown),
            invalid @ SignatureCheck::Invalid(_) => return invalid,
        }
    }
    if missing.is_empty() {
        SignatureCheck::Verified
    } else {
        SignatureCheck::NeedKeys(missing)
    }
}

/// Whether the redacted event carries a valid signature of `server` (as in
/// [`check_signatures`]); also asked for servers the auth rules name, such as the
/// authorising server of a restricted join.
pub fn check_server_signature(
    version: RoomVersion,
    pdu: &Value,
    server: &str,
    keys: &dyn Fn(&str, &str) -> Option<KnownKey>,
) -> SignatureCheck {
    match event_hashes::redacted_signed_bytes(pdu, version) {
        Ok(signed) => check_server_signature_over(version, pdu, &signed, server, keys),
        Err(e) => SignatureCheck::Invalid(format!("not signable: {e:?}")),
    }
}

/// As [`check_server_signature`], with the PDU's
/// [`redacted_signed_bytes`](event_hashes::redacted_signed_bytes) already written.
pub fn check_server_signature_over(
    version: RoomVersion,
    pdu: &Value,
    signed: &[u8],
    server: &str,
    keys: &dyn Fn(&str, &str) -> Option<KnownKey>,
) -> SignatureCheck {
    let ts = pdu
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let Some(by_key) = pdu
        .get("signatures")
        .and_then(|s| s.get(server))
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    else {
        return SignatureCheck::Invalid(format!("no signature from {server}"));
    };
    let mut verified = false;
    let mut unknown = Vec::new();
    for (key_id, signature) in by_key {
        if !key_id.starts_with("ed25519:") {
            continue;
        }
        let Some(known) = keys(server, key_id) else {
            unknown.push((server.to_owned(), key_id.clone()));
            continue;
        };
        if version.enforces_key_validity() && known.valid_until_ts < ts {
            // Expired before the event was made: ignored (rooms v5 and later).
            continue;
        }
        let Some(signature) = signature.as_str() else {
            return SignatureCheck::Invalid(format!("signature {key_id} is not a string"));
        };
        match signatures::verify_signature_over(signed, signature, &known.key) {
            Ok(()) => verified = true,
            Err(e) => {
                return SignatureCheck::Invalid(format!(
                    "signature of {server} with {key_id} does not verify: {e:?}"
                ))
            }
        }
    }
    if verified {
        SignatureCheck::Verified
    } else if unknown.is_empty() {
        SignatureCheck::Invalid(format!(
            "no signature from {server} by a key valid at the event's time"
        ))
    } else {
        SignatureCheck::NeedKeys(unknown)
    }
}

/// Check 3: the event as it is to be kept: itself when its content hash matches, or its
/// redacted form (and `true`) when it does not, for then "we have only been given a
/// redacted version of the event".
/// Takes the PDU and gives it back, so that a PDU whose hash holds is not copied.
pub fn check_content_hash(version: RoomVersion, pdu: Value) -> (Value, bool) {
    match event_hashes::content_hash_matches(&pdu, version) {
        Ok(true) => (pdu, false),
        _ => (redaction::redact(&pdu, version), true),
    }
}

#[cfg(test)]
#[path = "pdu_checks_tests.rs"]
mod tests;

//! Building a signed PDU (persistent data unit) for our server.
//!
//! Spec: server-server API, "PDUs" and "Signing events"; room versions' "Event format"
//! (v10/v11: `room_id` on every event; v12: not on the create event). The caller chooses
//! `prev_events`, `auth_events` and `depth` (the rooms service owns the graph); this module
//! checks the spec's size limits, fills the hashes and signature, and answers the event id.

use serde_json::{json, Map, Value};

use super::canonical_json;
use super::event_hashes::{self, hash_and_sign_event};
use super::room_version::RoomVersion;
use super::signing_key::SigningKeyPair;

/// Spec: a PDU, in canonical JSON, is at most 65536 bytes.
pub const MAX_PDU_BYTES: usize = 65_536;
/// Spec: at most 20 `prev_events`.
pub const MAX_PREV_EVENTS: usize = 20;
/// Spec: at most 10 `auth_events`.
pub const MAX_AUTH_EVENTS: usize = 10;
/// Spec (room versions 6 and later): `depth` stays below the largest canonical integer
/// (2^53 - 1); a room already there keeps it.
pub const MAX_DEPTH: u64 = (1 << 53) - 1;

/// The event ids a PDU lists under `key` (`prev_events` or `auth_events`): plain ids
/// (rooms v3 and later) or the ids of `[id, hashes]` pairs (rooms v1 and v2); anything
/// else is skipped (the format check refuses it on receipt).
pub fn event_ids<'p>(pdu: &'p Value, key: &str) -> impl Iterator<Item = &'p str> {
    pdu.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|reference| match reference {
            Value::String(id) => Some(id.as_str()),
            Value::Array(pair) => pair.first().and_then(Value::as_str),
            _ => None,
        })
}

/// The event a redaction redacts: top-level `redacts` in rooms before v11,
/// `content.redacts` in v11 and later (spec: room version 11, "Moving the redacts
/// key"), never the other one, as Synapse reads it; `None` for other events or a
/// malformed one.
pub fn redaction_target(pdu: &Value, version: RoomVersion) -> Option<&str> {
    if pdu.get("type").and_then(Value::as_str) != Some("m.room.redaction") {
        return None;
    }
    let redacts = if version.redacts_in_content() {
        pdu.get("content").and_then(|c| c.get("redacts"))
    } else {
        pdu.get("redacts")
    };
    redacts.and_then(Value::as_str)
}

/// What a new event says, before the server hashes and signs it.
#[derive(Debug, Clone)]
pub struct PduTemplate {
    /// The room; `None` only for a v12 create event (its id is the room id).
    pub room_id: Option<String>,
    /// Our user who sends it.
    pub sender: String,
    /// Event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    /// The content object.
    pub content: Value,
    /// The room's forward extremities (at most 20).
    pub prev_events: Vec<String>,
    /// From the auth events selection (at most 10).
    pub auth_events: Vec<String>,
    /// One more than the deepest prev event.
    pub depth: u64,
    /// Milliseconds since the epoch.
    pub origin_server_ts: u64,
    /// For `m.room.redaction` in v10: the redacted event (v11+ carries it in content).
    pub redacts: Option<String>,
}

/// A built PDU and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltPdu {
    /// `$` + base64 of the reference hash (rooms v3 and later); `$opaque:server`, made
    /// up here and held in the PDU (rooms v1 and v2).
    pub event_id: String,
    /// The signed event in federation format (an `event_id` member only in rooms v1, v2).
    pub pdu: Value,
}

/// Why a PDU cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PduError {
    /// `content` is not an object, or has no canonical form (floats, big integers).
    BadContent(String),
    /// Too many prev or auth events, or a missing/forbidden room id.
    BadShape(String),
    /// Larger than 65536 bytes.
    TooLarge(usize),
}

impl std::fmt::Display for PduError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadContent(m) | Self::BadShape(m) => f.write_str(m),
            Self::TooLarge(n) => write!(f, "event is {n} bytes, more than {MAX_PDU_BYTES}"),
        }
    }
}

impl std::error::Error for PduError {}

/// Fills in hashes and our signature and computes the event id. Events of rooms v1 and v2
/// list the reference hashes of their prev and auth events: build those with
/// [`build_referencing`].
pub fn build(
    version: RoomVersion,
    template: PduTemplate,
    server_name: &str,
    key: &SigningKeyPair,
) -> Result<BuiltPdu, PduError> {
    build_referencing(version, template, &|_| None, server_name, key)
}

/// [`build`], with `reference_hash` answering the reference hash of each prev and auth
/// event (asked only in rooms v1 and v2, whose events list `[id, {"sha256": hash}]`
/// pairs and carry an `event_id` the sending server makes up: `$opaque:server_name`).
pub fn build_referencing(
    version: RoomVersion,
    template: PduTemplate,
    reference_hash: &dyn Fn(&str) -> Option<[u8; 32]>,
    server_name: &str,
    key: &SigningKeyPair,
) -> Result<BuiltPdu, PduError> {
    if !template.content.is_object() {
        return Err(PduError::BadContent("content must be an object".into()));
    }
    // Rooms before v6 take floats and large integers (a client sending back power levels
    // that hold `50.5`, say); later ones refuse them.
    if version.strict_canonical_json() {
        canonical_json::validate(&template.content)
            .map_err(|e| PduError::BadContent(e.to_string()))?;
    }
    if template.prev_events.len() > MAX_PREV_EVENTS {
        return Err(PduError::BadShape(format!(
            "more than {MAX_PREV_EVENTS} prev_events"
        )));
    }
    if template.auth_events.len() > MAX_AUTH_EVENTS {
        return Err(PduError::BadShape(format!(
            "more than {MAX_AUTH_EVENTS} auth_events"
        )));
    }
    let is_v12_create = version.room_id_is_create_event_hash() && template.kind == "m.room.create";
    if is_v12_create != template.room_id.is_none() {
        return Err(PduError::BadShape(if is_v12_create {
            "a v12 create event has no room_id".into()
        } else {
            "room_id is required".into()
        }));
    }
    let mut pdu = Map::new();
    pdu.insert("type".into(), json!(template.kind));
    pdu.insert("sender".into(), json!(template.sender));
    pdu.insert("content".into(), template.content);
    let prev_events = references(version, &template.prev_events, reference_hash)?;
    pdu.insert("prev_events".into(), prev_events);
    let auth_events = references(version, &template.auth_events, reference_hash)?;
    pdu.insert("auth_events".into(), auth_events);
    let made_up_id = (!version.event_ids_are_reference_hashes()).then(|| new_event_id(server_name));
    if let Some(id) = &made_up_id {
        pdu.insert("event_id".into(), json!(id));
    }
    pdu.insert("depth".into(), json!(template.depth));
    pdu.insert("origin_server_ts".into(), json!(template.origin_server_ts));
    if let Some(room_id) = template.room_id {
        pdu.insert("room_id".into(), json!(room_id));
    }
    if let Some(state_key) = template.state_key {
        pdu.insert("state_key".into(), json!(state_key));
    }
    if let Some(redacts) = template.redacts {
        if !version.redacts_in_content() {
            pdu.insert("redacts".into(), json!(redacts));
        }
    }
    let mut pdu = Value::Object(pdu);
    let reference_hash = hash_and_sign_event(&mut pdu, server_name, key, version)
        .map_err(|e| PduError::BadContent(e.to_string()))?;
    let size = canonical_json::to_bytes(&pdu, canonical_json::Numbers::of(version))
        .map_err(|e| PduError::BadContent(e.to_string()))?
        .len();
    if size > MAX_PDU_BYTES {
        return Err(PduError::TooLarge(size));
    }
    let event_id =
        made_up_id.unwrap_or_else(|| event_hashes::event_id_of_hash(reference_hash, version));
    Ok(BuiltPdu { event_id, pdu })
}

/// `prev_events` or `auth_events` as an event of `version` lists them: the ids (rooms v3
/// and later), or `[id, {"sha256": hash}]` pairs with `reference_hash` answering each
/// hash (rooms v1 and v2; spec: `pdu_v1.yaml`).
pub fn references<S: AsRef<str>>(
    version: RoomVersion,
    ids: &[S],
    reference_hash: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> Result<Value, PduError> {
    let ids = ids.iter().map(AsRef::as_ref);
    if !version.event_references_carry_hashes() {
        return Ok(Value::Array(ids.map(|id| json!(id)).collect()));
    }
    let pairs = ids.map(|id| {
        let hash = reference_hash(id)
            .ok_or_else(|| PduError::BadShape(format!("no reference hash for the event {id}")))?;
        Ok(json!([id, { "sha256": super::base64::encode(hash) }]))
    });
    pairs
        .collect::<Result<Vec<Value>, PduError>>()
        .map(Value::Array)
}

/// A new event id for rooms v1 and v2: `$` + 16 random characters (96 bits) + `:server`.
pub fn new_event_id(server_name: &str) -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    // The system's random source failing is not recoverable anywhere; the id would
    // still be unique enough with the time alone, so fall back to it.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    format!("${}:{server_name}", super::base64::encode_url_safe(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event_hashes::{content_hash_matches, room_id_from_create_event};
    use crate::core::redaction::redact;
    use crate::core::signatures::verify_json;

    fn template(room_id: Option<&str>, kind: &str, content: Value) -> PduTemplate {
        PduTemplate {
            room_id: room_id.map(str::to_owned),
            sender: "@alice:a.org".into(),
            kind: kind.into(),
            state_key: None,
            content,
            prev_events: vec!["$prev".into()],
            auth_events: vec!["$auth".into()],
            depth: 7,
            origin_server_ts: 1_700_000_000_000,
            redacts: None,
        }
    }

    #[test]
    fn built_events_are_hashed_signed_and_named_by_their_reference_hash() {
        let key = SigningKeyPair::generate();
        let versions = RoomVersion::ALL.into_iter();
        for version in versions.filter(|v| v.event_ids_are_reference_hashes()) {
            let built = build(
                version,
                template(
                    Some("!r:a.org"),
                    "m.room.message",
                    json!({"body": "hi", "msgtype": "m.text"}),
                ),
                "a.org",
                &key,
            )
            .unwrap();
            assert!(content_hash_matches(&built.pdu, version).unwrap());
            verify_json(
                &redact(&built.pdu, version),
                "a.org",
                key.key_id(),
                &key.verifying_key(),
            )
            .unwrap();
            assert_eq!(
                built.event_id,
                event_hashes::event_id(&built.pdu, version).unwrap()
            );
            assert!(built.pdu.get("event_id").is_none());
            assert_eq!(built.pdu["depth"], 7);
        }
    }

    #[test]
    fn v1_and_v2_events_carry_a_made_up_id_and_reference_their_events_with_hashes() {
        let key = SigningKeyPair::generate();
        let hashes = |id: &str| match id {
            "$prev" => Some([1u8; 32]),
            "$auth" => Some([2u8; 32]),
            _ => None,
        };
        for version in [RoomVersion::V1, RoomVersion::V2] {
            let t = template(Some("!r:a.org"), "m.room.message", json!({"body": "hi"}));
            let built = build_referencing(version, t.clone(), &hashes, "a.org", &key).unwrap();
            assert!(built.event_id.starts_with('$') && built.event_id.ends_with(":a.org"));
            assert_eq!(built.pdu["event_id"], built.event_id);
            assert_eq!(
                event_hashes::event_id(&built.pdu, version).unwrap(),
                built.event_id
            );
            let sha = |b: u8| crate::core::base64::encode([b; 32]);
            assert_eq!(
                built.pdu["prev_events"],
                json!([["$prev", {"sha256": sha(1)}]])
            );
            assert_eq!(
                built.pdu["auth_events"],
                json!([["$auth", {"sha256": sha(2)}]])
            );
            assert_eq!(
                event_ids(&built.pdu, "prev_events").collect::<Vec<_>>(),
                ["$prev"]
            );
            // The signature and the content hash cover the id.
            assert!(content_hash_matches(&built.pdu, version).unwrap());
            let mut forged = redact(&built.pdu, version);
            forged["event_id"] = json!("$other:a.org");
            assert!(verify_json(&forged, "a.org", key.key_id(), &key.verifying_key()).is_err());
            // Two events never share an id.
            let again = build_referencing(version, t.clone(), &hashes, "a.org", &key).unwrap();
            assert_ne!(again.event_id, built.event_id);
            // Without the hashes of what it references, no event.
            assert!(matches!(
                build(version, t, "a.org", &key),
                Err(PduError::BadShape(_))
            ));
        }
    }

    #[test]
    fn v12_create_has_no_room_id_and_defines_it() {
        let key = SigningKeyPair::generate();
        let mut t = template(None, "m.room.create", json!({"room_version": "12"}));
        t.state_key = Some(String::new());
        t.prev_events.clear();
        t.auth_events.clear();
        let built = build(RoomVersion::V12, t.clone(), "a.org", &key).unwrap();
        assert!(built.pdu.get("room_id").is_none());
        let room_id = room_id_from_create_event(&built.pdu, RoomVersion::V12).unwrap();
        assert_eq!(&room_id[1..], &built.event_id[1..]);
        // Other events, and create events of older versions, need a room id.
        assert!(matches!(
            build(RoomVersion::V11, t, "a.org", &key),
            Err(PduError::BadShape(_))
        ));
        let msg = template(None, "m.room.message", json!({}));
        assert!(matches!(
            build(RoomVersion::V12, msg, "a.org", &key),
            Err(PduError::BadShape(_))
        ));
    }

    #[test]
    fn redacts_is_top_level_only_in_v10() {
        let key = SigningKeyPair::generate();
        let mut t = template(
            Some("!r:a.org"),
            "m.room.redaction",
            json!({"redacts": "$e"}),
        );
        t.redacts = Some("$e".into());
        let v10 = build(RoomVersion::V10, t.clone(), "a.org", &key).unwrap();
        assert_eq!(v10.pdu["redacts"], "$e");
        let v11 = build(RoomVersion::V11, t, "a.org", &key).unwrap();
        assert!(v11.pdu.get("redacts").is_none());
        assert_eq!(v11.pdu["content"]["redacts"], "$e");
    }

    #[test]
    fn a_redaction_names_its_target_where_its_room_version_puts_it() {
        let both = json!({"type": "m.room.redaction", "redacts": "$top", "content": {"redacts": "$content"}});
        assert_eq!(redaction_target(&both, RoomVersion::V10), Some("$top"));
        assert_eq!(redaction_target(&both, RoomVersion::V11), Some("$content"));
        let in_content = json!({"type": "m.room.redaction", "content": {"redacts": "$content"}});
        assert_eq!(redaction_target(&in_content, RoomVersion::V10), None);
        let at_top = json!({"type": "m.room.redaction", "redacts": "$top", "content": {}});
        assert_eq!(redaction_target(&at_top, RoomVersion::V12), None);
        let message =
            json!({"type": "m.room.message", "redacts": "$top", "content": {"redacts": "$c"}});
        assert_eq!(redaction_target(&message, RoomVersion::V10), None);
    }

    #[test]
    fn spec_limits_are_enforced() {
        let key = SigningKeyPair::generate();
        let big = template(
            Some("!r:a.org"),
            "m.room.message",
            json!({"body": "x".repeat(70_000)}),
        );
        assert!(matches!(
            build(RoomVersion::V12, big, "a.org", &key),
            Err(PduError::TooLarge(_))
        ));
        let mut many = template(Some("!r:a.org"), "m.room.message", json!({}));
        many.prev_events = (0..21).map(|i| format!("$e{i}")).collect();
        assert!(matches!(
            build(RoomVersion::V12, many, "a.org", &key),
            Err(PduError::BadShape(_))
        ));
        let mut auth = template(Some("!r:a.org"), "m.room.message", json!({}));
        auth.auth_events = (0..11).map(|i| format!("$e{i}")).collect();
        assert!(matches!(
            build(RoomVersion::V12, auth, "a.org", &key),
            Err(PduError::BadShape(_))
        ));
        let float = template(Some("!r:a.org"), "m.room.message", json!({"n": 1.5}));
        assert!(matches!(
            build(RoomVersion::V12, float, "a.org", &key),
            Err(PduError::BadContent(_))
        ));
        let not_object = template(Some("!r:a.org"), "m.room.message", json!([1]));
        assert!(matches!(
            build(RoomVersion::V12, not_object, "a.org", &key),
            Err(PduError::BadContent(_))
        ));
    }
}

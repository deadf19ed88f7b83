//! A server's key document (`GET /_matrix/key/v2/server`, or relayed by a notary):
//! checked and read.
//!
//! Spec: server-server API, "Retrieving server keys", and the `Server Keys` definition:
//! the document names its server, lists `verify_keys` (for requests and events) and
//! `old_verify_keys` (events only, with the time they expired), and is signed by its own
//! verify keys. A key's validity is the lesser of `valid_until_ts` and seven days after
//! the document was fetched ("Servers MUST use the lesser of this field and 7 days into
//! the future"). A notary adds its own signature, checked by the caller with the
//! notary's key.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::base64;
use super::signatures;

/// The longest a fetched key is trusted without fetching it again.
pub const MAX_VALIDITY_MS: u64 = 7 * 24 * 3_600_000;

/// One key of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerKey {
    /// The public key.
    pub key: VerifyingKey,
    /// Until when it may be trusted (ms since the epoch): for a verify key, the lesser of
    /// `valid_until_ts` and seven days after the fetch; for an old key, its `expired_ts`.
    pub valid_until_ts: u64,
    /// Whether it is an old key (valid for events before it expired, never for requests).
    pub old: bool,
}

/// A checked key document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDocument {
    /// The server it describes.
    pub server_name: String,
    /// Its keys by key id (`ed25519:…`).
    pub keys: HashMap<String, ServerKey>,
    /// The document's own `valid_until_ts`.
    pub valid_until_ts: u64,
}

/// Why a key document is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDocumentError(pub String);

impl std::fmt::Display for KeyDocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyDocumentError {}

fn bad<T>(reason: impl Into<String>) -> Result<T, KeyDocumentError> {
    Err(KeyDocumentError(reason.into()))
}

fn parse_key(id: &str, entry: &Value) -> Result<VerifyingKey, KeyDocumentError> {
    let Some(text) = entry.get("key").and_then(Value::as_str) else {
        return bad(format!("key {id} has no key"));
    };
    let bytes =
        base64::decode(text).map_err(|_| KeyDocumentError(format!("key {id} is not base64")))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyDocumentError(format!("key {id} is not 32 bytes")))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| KeyDocumentError(format!("key {id} is not an ed25519 key")))
}

/// Checks `document` as the keys of `server` fetched at `now`: it names that server, each
/// of its ed25519 verify keys signed it, and its fields have their types.
pub fn check(document: &Value, server: &str, now: u64) -> Result<KeyDocument, KeyDocumentError> {
    if document.get("server_name").and_then(Value::as_str) != Some(server) {
        return bad(format!("the document is not about {server}"));
    }
    let Some(valid_until_ts) = document.get("valid_until_ts").and_then(Value::as_u64) else {
        return bad("valid_until_ts is missing or not an integer");
    };
    let Some(verify_keys) = document.get("verify_keys").and_then(Value::as_object) else {
        return bad("verify_keys is missing");
    };
    let trusted_until = valid_until_ts.min(now.saturating_add(MAX_VALIDITY_MS));
    let mut keys = HashMap::new();
    for (id, entry) in verify_keys {
        if !id.starts_with("ed25519:") {
            continue;
        }
        let key = parse_key(id, entry)?;
        if signatures::verify_json(document, server, id, &key).is_err() {
            return bad(format!("the document is not signed by its key {id}"));
        }
        keys.insert(
            id.clone(),
            ServerKey {
                key,
                valid_until_ts: trusted_until,
                old: false,
            },
        );
    }
    if keys.is_empty() {
        return bad("the document has no ed25519 verify key");
    }
    if let Some(old) = document.get("old_verify_keys").and_then(Value::as_object) {
        for (id, entry) in old {
            if !id.starts_with("ed25519:") || keys.contains_key(id) {
                continue;
            }
            let key = parse_key(id, entry)?;
            let Some(expired_ts) = entry.get("expired_ts").and_then(Value::as_u64) else {
                return bad(format!("old key {id} has no expired_ts"));
            };
            keys.insert(
                id.clone(),
                ServerKey {
                    key,
                    valid_until_ts: expired_ts,
                    old: true,
                },
            );
        }
    }
    Ok(KeyDocument {
        server_name: server.to_owned(),
        keys,
        valid_until_ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SigningKeyPair;
    use serde_json::json;

    fn document(key: &SigningKeyPair, server: &str, valid_until_ts: u64) -> Value {
        let mut doc = json!({
            "server_name": server,
            "valid_until_ts": valid_until_ts,
            "verify_keys": {key.key_id(): {"key": key.public_key_base64()}},
            "old_verify_keys": {
                "ed25519:0ldK3y": {
                    "expired_ts": 1532645052628u64,
                    "key": SigningKeyPair::from_seed(&[8; 32], "0ldK3y").public_key_base64()
                }
            },
        });
        signatures::sign_json(&mut doc, server, key).unwrap();
        doc
    }

    #[test]
    fn a_self_signed_document_gives_its_keys_and_old_keys() {
        let key = SigningKeyPair::from_seed(&[1; 32], "abc123");
        let now = 1_000_000_000_000;
        let doc = check(
            &document(&key, "example.org", now + 3_600_000),
            "example.org",
            now,
        )
        .unwrap();
        let current = doc.keys["ed25519:abc123"];
        assert_eq!(current.key, key.verifying_key());
        assert_eq!(current.valid_until_ts, now + 3_600_000);
        assert!(!current.old);
        let old = doc.keys["ed25519:0ldK3y"];
        assert!(old.old);
        assert_eq!(old.valid_until_ts, 1532645052628);
    }

    #[test]
    fn validity_is_capped_at_seven_days() {
        let key = SigningKeyPair::from_seed(&[1; 32], "abc123");
        let now = 1_000_000_000_000;
        let doc = check(
            &document(&key, "example.org", now + 30 * 86_400_000),
            "example.org",
            now,
        )
        .unwrap();
        assert_eq!(
            doc.keys["ed25519:abc123"].valid_until_ts,
            now + MAX_VALIDITY_MS
        );
    }

    #[test]
    fn another_server_a_forged_or_unsigned_document_is_refused() {
        let key = SigningKeyPair::from_seed(&[1; 32], "abc123");
        let doc = document(&key, "example.org", 5);
        assert!(check(&doc, "other.org", 0).is_err(), "about another server");
        let mut forged = doc.clone();
        forged["valid_until_ts"] = json!(u64::MAX >> 12);
        assert!(
            check(&forged, "example.org", 0).is_err(),
            "changed after signing"
        );
        let mut unsigned = doc.clone();
        unsigned.as_object_mut().unwrap().remove("signatures");
        assert!(check(&unsigned, "example.org", 0).is_err());
        // Signed by a key that is not the one listed.
        let mut swapped = doc;
        swapped["verify_keys"]["ed25519:abc123"]["key"] =
            json!(SigningKeyPair::from_seed(&[2; 32], "abc123").public_key_base64());
        assert!(check(&swapped, "example.org", 0).is_err());
    }

    #[test]
    fn the_spec_example_document_is_refused_for_its_signature() {
        // Spec: `examples/server_key.json` carries placeholder keys and signatures; a
        // checker that accepted it would accept anything.
        let example = json!({
            "server_name": "example.org",
            "verify_keys": {"ed25519:abc123": {"key": "VGhpcyBzaG91bGQgYmUgYSByZWFsIGVkMjU1MTkgcGF5bG9hZA"}},
            "old_verify_keys": {"ed25519:0ldk3y": {"expired_ts": 1532645052628u64, "key": "VGhpcyBzaG91bGQgYmUgeW91ciBvbGQga2V5J3MgZWQyNTUxOSBwYXlsb2FkLg"}},
            "signatures": {"example.org": {"ed25519:auto2": "VGhpcyBzaG91bGQgYWN0dWFsbHkgYmUgYSBzaWduYXR1cmU"}},
            "valid_until_ts": 1652262000000u64
        });
        assert!(check(&example, "example.org", 0).is_err());
    }
}

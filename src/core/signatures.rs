//! Signing and verifying JSON objects.
//!
//! Spec: appendices, "Signing Details" and "Checking for a Signature". The signature covers
//! the canonical JSON of the object without its `signatures` and `unsigned` members.

use ed25519_dalek::VerifyingKey;
use serde_json::{Map, Value};

use super::base64;
use super::canonical_json::{self, CanonicalJsonError, Numbers};
use super::ed25519_strict;
use super::signing_key::SigningKeyPair;

/// Why a signature could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The value is not a JSON object.
    NotAnObject,
    /// The object has no canonical form.
    Canonical(CanonicalJsonError),
    /// `signatures` holds no entry for this entity and key id.
    Missing,
    /// The signature is not unpadded base64 of 64 bytes.
    Malformed,
    /// The signature does not match.
    Invalid,
    /// An event of room version 1 or 2 has no `event_id` of the form `$opaque:server`.
    NoEventId,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAnObject => f.write_str("signed value is not a JSON object"),
            Self::Canonical(e) => write!(f, "no canonical form: {e}"),
            Self::Missing => f.write_str("signature missing"),
            Self::Malformed => f.write_str("signature is not valid base64 of 64 bytes"),
            Self::Invalid => f.write_str("signature does not verify"),
            Self::NoEventId => f.write_str("event_id missing or not of the form $opaque:server"),
        }
    }
}

impl std::error::Error for SignatureError {}

impl From<CanonicalJsonError> for SignatureError {
    fn from(e: CanonicalJsonError) -> Self {
        Self::Canonical(e)
    }
}

/// The bytes a signature of `object` covers.
pub fn signed_bytes(object: &Map<String, Value>) -> Result<Vec<u8>, CanonicalJsonError> {
    signed_bytes_with(object, Numbers::Canonical)
}

/// The bytes a signature of `object` covers, numbers written as `numbers` says (an event
/// of a room before v6 may hold floats).
pub fn signed_bytes_with(
    object: &Map<String, Value>,
    numbers: Numbers,
) -> Result<Vec<u8>, CanonicalJsonError> {
    canonical_json::object_to_bytes_without(object, &["signatures", "unsigned"], numbers)
}

/// Signs `value` in place as `entity` (a server name) and adds the signature under
/// `signatures.<entity>.<key id>`, keeping any signatures already there.
pub fn sign_json(
    value: &mut Value,
    entity: &str,
    key: &SigningKeyPair,
) -> Result<(), SignatureError> {
    sign_json_with(value, entity, key, Numbers::Canonical)
}

/// As [`sign_json`], over the bytes [`signed_bytes_with`] writes.
pub fn sign_json_with(
    value: &mut Value,
    entity: &str,
    key: &SigningKeyPair,
    numbers: Numbers,
) -> Result<(), SignatureError> {
    let object = value.as_object_mut().ok_or(SignatureError::NotAnObject)?;
    let signature = base64::encode(key.sign(&signed_bytes_with(object, numbers)?));
    add_signature(object, entity, key.key_id(), signature);
    Ok(())
}

/// Puts `signature` under `signatures.<entity>.<key id>` of `object`, keeping the
/// signatures already there (and replacing a malformed `signatures` member).
pub fn add_signature(
    object: &mut Map<String, Value>,
    entity: &str,
    key_id: &str,
    signature: String,
) {
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    if !signatures.is_object() {
        *signatures = Value::Object(Map::new());
    }
    let by_entity = signatures
        .as_object_mut()
        .expect("signatures was just made an object")
        .entry(entity)
        .or_insert_with(|| Value::Object(Map::new()));
    if !by_entity.is_object() {
        *by_entity = Value::Object(Map::new());
    }
    by_entity
        .as_object_mut()
        .expect("entity entry was just made an object")
        .insert(key_id.to_owned(), Value::String(signature));
}

/// Checks that `entity` signed `value` with the key `key_id`, whose public half is `key`.
pub fn verify_json(
    value: &Value,
    entity: &str,
    key_id: &str,
    key: &VerifyingKey,
) -> Result<(), SignatureError> {
    let object = value.as_object().ok_or(SignatureError::NotAnObject)?;
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(entity))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or(SignatureError::Missing)?;
    verify_signature(object, signature, key)
}

/// Checks one base64 signature over `object` (without its `signatures` and `unsigned`).
pub fn verify_signature(
    object: &Map<String, Value>,
    signature_b64: &str,
    key: &VerifyingKey,
) -> Result<(), SignatureError> {
    verify_signature_with(object, signature_b64, key, Numbers::Canonical)
}

/// As [`verify_signature`], over the bytes [`signed_bytes_with`] writes.
pub fn verify_signature_with(
    object: &Map<String, Value>,
    signature_b64: &str,
    key: &VerifyingKey,
    numbers: Numbers,
) -> Result<(), SignatureError> {
    verify_signature_over(&signed_bytes_with(object, numbers)?, signature_b64, key)
}

/// Checks one base64 signature over `signed`, the bytes [`signed_bytes_with`] wrote.
pub fn verify_signature_over(
    signed: &[u8],
    signature_b64: &str,
    key: &VerifyingKey,
) -> Result<(), SignatureError> {
    let bytes = base64::decode(signature_b64).map_err(|_| SignatureError::Malformed)?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| SignatureError::Malformed)?;
    if ed25519_strict::verify(key, signed, &bytes) {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Spec: appendices, "Cryptographic Test Vectors", "Signing Key".
    pub(crate) fn spec_key() -> SigningKeyPair {
        let seed = base64::decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        SigningKeyPair::from_seed(&seed.try_into().unwrap(), "1")
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// Spec: appendices, "JSON Signing", the empty object.
    #[test]
    fn spec_json_signing_empty_object() {
        let mut value = parse("{}");
        sign_json(&mut value, "domain", &spec_key()).unwrap();
        assert_eq!(
            value,
            parse(
                r#"{
    "signatures": {
        "domain": {
            "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        }
    }
}"#
            )
        );
    }

    /// Spec: appendices, "JSON Signing", the object with data values.
    #[test]
    fn spec_json_signing_with_values() {
        let mut value = parse(
            r#"{
    "one": 1,
    "two": "Two"
}"#,
        );
        sign_json(&mut value, "domain", &spec_key()).unwrap();
        assert_eq!(
            value,
            parse(
                r#"{
    "one": 1,
    "signatures": {
        "domain": {
            "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        }
    },
    "two": "Two"
}"#
            )
        );
    }

    #[test]
    fn verify_accepts_own_signature_and_refuses_tampering() {
        let key = spec_key();
        let mut value = json!({"one": 1, "unsigned": {"age": 5}});
        sign_json(&mut value, "domain", &key).unwrap();
        let public = key.verifying_key();
        assert_eq!(verify_json(&value, "domain", "ed25519:1", &public), Ok(()));

        // `unsigned` is not covered, so changing it keeps the signature valid.
        value["unsigned"]["age"] = json!(99);
        assert_eq!(verify_json(&value, "domain", "ed25519:1", &public), Ok(()));

        value["one"] = json!(2);
        assert_eq!(
            verify_json(&value, "domain", "ed25519:1", &public),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_json(&value, "other", "ed25519:1", &public),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let key = spec_key();
        let value = json!({"signatures": {"domain": {"ed25519:1": "not base64!"}}});
        assert_eq!(
            verify_json(&value, "domain", "ed25519:1", &key.verifying_key()),
            Err(SignatureError::Malformed)
        );
        let short = json!({"signatures": {"domain": {"ed25519:1": "Zm9v"}}});
        assert_eq!(
            verify_json(&short, "domain", "ed25519:1", &key.verifying_key()),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn signing_keeps_other_signatures() {
        let key = spec_key();
        let mut value = json!({"a": 1, "signatures": {"other.org": {"ed25519:x": "abc"}}});
        sign_json(&mut value, "domain", &key).unwrap();
        assert_eq!(value["signatures"]["other.org"]["ed25519:x"], "abc");
        assert!(value["signatures"]["domain"]["ed25519:1"].is_string());
    }
}

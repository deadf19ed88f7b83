//! Signed JSON for the `keys` scenario: the spec's canonical JSON and ed25519 signatures,
//! so servers that verify uploaded keys (as ourwhats does) accept them.
//!
//! Spec: appendices, "Canonical JSON" (keys sorted by code point, no insignificant
//! whitespace) and "Signing JSON" (sign the canonical form without `signatures` and
//! `unsigned`; unpadded standard base64).

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

/// The canonical JSON of `value` (the benchmark's values hold no floats).
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// An ed25519 key and the id it signs under (`ed25519:{key_id}`).
pub struct Key {
    signing: SigningKey,
    pub key_id: String,
}

impl Key {
    /// A key derived from `label` (the same label, the same key).
    pub fn from_label(label: &str) -> Self {
        let mut seed = [7u8; 32];
        for (i, b) in label.bytes().enumerate() {
            seed[i % 32] = seed[i % 32].rotate_left(3) ^ b;
        }
        let signing = SigningKey::from_bytes(&seed);
        let key_id = STANDARD_NO_PAD.encode(signing.verifying_key().as_bytes());
        Self { signing, key_id }
    }

    /// A key that signs under the given id (a device's keys sign as `ed25519:DEVICEID`).
    pub fn with_id(mut self, key_id: &str) -> Self {
        self.key_id = key_id.to_owned();
        self
    }

    /// The public key, unpadded base64.
    pub fn public(&self) -> String {
        STANDARD_NO_PAD.encode(self.signing.verifying_key().as_bytes())
    }

    /// Adds this key's signature of `object` under `signatures.{user_id}`.
    pub fn sign(&self, object: &mut Value, user_id: &str) {
        let mut bare = object.clone();
        if let Some(map) = bare.as_object_mut() {
            map.remove("signatures");
            map.remove("unsigned");
        }
        let signature =
            STANDARD_NO_PAD.encode(self.signing.sign(canonical(&bare).as_bytes()).to_bytes());
        let id = format!("ed25519:{}", self.key_id);
        if !object["signatures"].is_object() {
            object["signatures"] = json!({});
        }
        if !object["signatures"][user_id].is_object() {
            object["signatures"][user_id] = json!({});
        }
        object["signatures"][user_id][id] = Value::String(signature);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's canonical JSON examples (appendices, "Canonical JSON").
    #[test]
    fn canonical_json_as_the_spec_shows() {
        let v: Value = serde_json::from_str(r#"{"one": 1, "two": "Two"}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"one":1,"two":"Two"}"#);
        let v: Value = serde_json::from_str(r#"{"b": "2", "a": "1"}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":"1","b":"2"}"#);
        let v: Value = serde_json::from_str(
            r#"{"auth":{"success":true,"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email","address":"john.doe@example.org"},{"medium":"msisdn","address":"123456789"}]}}}"#,
        )
        .unwrap();
        assert_eq!(
            canonical(&v),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
        );
    }

    /// The spec's signing test vector (appendices, "JSON Signing"): the seed
    /// `YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1` signs `{}` as shown.
    #[test]
    fn signs_the_empty_object_like_the_spec() {
        // The spec's seed has nonzero trailing bits, which the strict engine refuses.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
                .with_decode_allow_trailing_bits(true),
        );
        let seed: [u8; 32] = lenient
            .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .unwrap()
            .try_into()
            .unwrap();
        let key = Key {
            signing: SigningKey::from_bytes(&seed),
            key_id: "1".into(),
        };
        let mut object = json!({});
        key.sign(&mut object, "domain");
        assert_eq!(
            object["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
    }
}

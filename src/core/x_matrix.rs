//! Request authentication between servers: the `X-Matrix` `Authorization` header.
//!
//! Spec: server-server API, "Request Authentication". The request's method, target
//! (path and query), origin, destination and JSON body are wrapped in an object, signed
//! with the JSON signing algorithm by the origin's key, and the signature travels as
//! `Authorization: X-Matrix origin="…",destination="…",key="…",sig="…"`. Parsing follows
//! RFC 9110 section 11.4 as the spec asks: scheme case-insensitive, parameter names
//! case-insensitive and in any order, values quoted (with backslash escapes) or bare
//! tokens, colons allowed unquoted for older senders, unknown parameters ignored.
//!
//! A body may carry events of rooms before v6, which can hold floats and integers beyond
//! canonical JSON's range: requests are signed over the lenient form (as Synapse does, see
//! [`Numbers::Lenient`]; the same bytes as canonical JSON for a body without such
//! numbers), and a signature that does not verify over the canonical bytes is checked over
//! the lenient ones too (both encode the same JSON value).

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Map, Value};

use super::canonical_json::Numbers;
use super::signatures::{self, SignatureError};
use super::SigningKeyPair;

/// The parameters of an `X-Matrix` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    /// The sending server's name.
    pub origin: String,
    /// The receiving server's name (older senders leave it out).
    pub destination: Option<String>,
    /// The id of the key that signed, `ed25519:…`.
    pub key: String,
    /// The unpadded base64 signature.
    pub sig: String,
}

/// Why a header is not a usable `X-Matrix` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(pub String);

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeaderError {}

fn bad<T>(reason: impl Into<String>) -> Result<T, HeaderError> {
    Err(HeaderError(reason.into()))
}

impl XMatrix {
    /// Parses an `Authorization` header value.
    pub fn parse(header: &str) -> Result<Self, HeaderError> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once([' ', '\t'])
            .ok_or_else(|| HeaderError("no parameters after the scheme".into()))?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return bad(format!("the scheme is {scheme:?}, not X-Matrix"));
        }
        let mut origin = None;
        let mut destination = None;
        let mut key = None;
        let mut sig = None;
        for (name, value) in parameters(rest)? {
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key,
                "sig" => &mut sig,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return bad(format!("parameter {name} given twice"));
            }
        }
        let (Some(origin), Some(key), Some(sig)) = (origin, key, sig) else {
            return bad("origin, key and sig are required");
        };
        Ok(Self {
            origin,
            destination,
            key,
            sig,
        })
    }

    /// The header value, written as the spec asks senders to (one space, lower-case
    /// names, quoted values, no spaces around commas).
    pub fn to_header(&self) -> String {
        let mut out = format!("X-Matrix origin=\"{}\"", self.origin);
        if let Some(destination) = &self.destination {
            out.push_str(&format!(",destination=\"{destination}\""));
        }
        out.push_str(&format!(",key=\"{}\",sig=\"{}\"", self.key, self.sig));
        out
    }
}

/// The `name=value` pairs of the header's parameter list.
fn parameters(text: &str) -> Result<Vec<(String, String)>, HeaderError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| matches!(c, ' ' | '\t' | ',')) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if c == ',' {
                return bad(format!("parameter {name:?} has no value"));
            }
            name.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return bad(format!("parameter {name:?} has no value"));
        }
        let name = name.trim().to_owned();
        if name.is_empty() {
            return bad("a parameter has no name");
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return bad(format!("the value of {name} is not closed")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return bad(format!("the value of {name} is not closed")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if matches!(c, ',' | ' ' | '\t') {
                    break;
                }
                if c == '"' || c == '\\' {
                    return bad(format!("the value of {name} has a stray {c}"));
                }
                value.push(c);
                chars.next();
            }
        }
        // Only separators may follow a value.
        while chars.peek().is_some_and(|c| matches!(c, ' ' | '\t')) {
            chars.next();
        }
        match chars.peek() {
            None | Some(',') => {}
            Some(c) => return bad(format!("unexpected {c:?} after the value of {name}")),
        }
        out.push((name, value));
    }
}

/// The object a request's signature covers (step 1 of the spec).
pub fn request_object(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&Value>,
) -> Value {
    let mut object = json!({
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    });
    if let Some(content) = content {
        object["content"] = content.clone();
    }
    object
}

/// Signs a request as `origin` with `key`: the `Authorization` header value.
pub fn sign_request(
    key: &SigningKeyPair,
    (method, uri): (&str, &str),
    (origin, destination): (&str, &str),
    content: Option<&Value>,
) -> Result<String, SignatureError> {
    let mut object = request_object(method, uri, origin, destination, content);
    // The lenient form is the canonical one for a body without floats or large integers;
    // with them, it is what Synapse verifies (`100.0` stays `100.0`).
    signatures::sign_json_with(&mut object, origin, key, Numbers::Lenient)?;
    let sig = object["signatures"][origin][key.key_id()]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(XMatrix {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: key.key_id().to_owned(),
        sig,
    }
    .to_header())
}

/// Checks the header's signature over the request with the origin's key `verify_key`.
pub fn verify_request(
    header: &XMatrix,
    (method, uri): (&str, &str),
    destination: &str,
    content: Option<&Value>,
    verify_key: &VerifyingKey,
) -> Result<(), SignatureError> {
    let object = request_object(method, uri, &header.origin, destination, content);
    let Value::Object(map) = object else {
        return Err(SignatureError::NotAnObject);
    };
    let map: Map<String, Value> = map;
    let canonical = signatures::verify_signature(&map, &header.sig, verify_key);
    if canonical.is_ok()
        || signatures::signed_bytes(&map).ok()
            == signatures::signed_bytes_with(&map, Numbers::Lenient).ok()
    {
        return canonical;
    }
    signatures::verify_signature_with(&map, &header.sig, verify_key, Numbers::Lenient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_header_parses() {
        // Spec: "Request Authentication", step 2.
        let header = XMatrix::parse(
            r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#,
        )
        .unwrap();
        assert_eq!(header.origin, "origin.hs.example.com");
        assert_eq!(
            header.destination.as_deref(),
            Some("destination.hs.example.com")
        );
        assert_eq!(header.key, "ed25519:key1");
        assert_eq!(header.sig, "ABCDEF...");
    }

    #[test]
    fn names_any_case_and_order_tokens_spaces_escapes_and_unknown_parameters() {
        let header = XMatrix::parse(
            "x-matrix   SIG=abc ,\tKey=\"ed25519:k\" , origin=a.example:8448,extra=\"x\\\"y\",destination=\"b\\.example\"",
        )
        .unwrap();
        assert_eq!(header.origin, "a.example:8448", "a colon without quotes");
        assert_eq!(header.key, "ed25519:k");
        assert_eq!(header.sig, "abc");
        assert_eq!(
            header.destination.as_deref(),
            Some("b.example"),
            "unescaped"
        );
    }

    #[test]
    fn an_old_sender_may_leave_out_the_destination() {
        let header = XMatrix::parse(r#"X-Matrix origin=a,key="ed25519:k",sig=s"#).unwrap();
        assert_eq!(header.destination, None);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "Bearer abc",
            "X-Matrix",
            r#"X-Matrix origin="a",key="ed25519:k""#,
            r#"X-Matrix origin="a,key="ed25519:k",sig="s""#,
            r#"X-Matrix origin="a",origin="b",key="k",sig="s""#,
            r#"X-Matrix origin"a",key="k",sig="s""#,
            r#"X-Matrix origin="a"x,key="k",sig="s""#,
            r#"X-Matrix =a,origin="a",key="k",sig="s""#,
        ] {
            assert!(XMatrix::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    /// A transaction carrying an event of a v5 room with floats: signed over the lenient
    /// form, by us or (with an integral float, which canonical JSON would write as an
    /// integer) as Synapse signs it; verified either way, and still bound to the body.
    #[test]
    fn requests_with_floats_in_the_body_verify() {
        let key = SigningKeyPair::from_seed(&[3; 32], "k1");
        let vk = key.verifying_key();
        let target = ("PUT", "/_matrix/federation/v1/send/2");
        let floats = json!({"pdus": [{"content": {"x": 1.5, "big": 9_007_199_254_740_993u64}}]});
        let header = sign_request(&key, target, ("o.example", "d.example"), Some(&floats)).unwrap();
        let parsed = XMatrix::parse(&header).unwrap();
        verify_request(&parsed, target, "d.example", Some(&floats), &vk).unwrap();
        let other = json!({"pdus": [{"content": {"x": 2.5, "big": 9_007_199_254_740_993u64}}]});
        assert!(verify_request(&parsed, target, "d.example", Some(&other), &vk).is_err());

        let integral: Value =
            serde_json::from_str(r#"{"pdus": [{"content": {"x": 1e10}}]}"#).unwrap();
        let mut object = request_object(
            target.0,
            target.1,
            "o.example",
            "d.example",
            Some(&integral),
        );
        signatures::sign_json_with(&mut object, "o.example", &key, Numbers::Lenient).unwrap();
        let parsed = XMatrix {
            origin: "o.example".into(),
            destination: Some("d.example".into()),
            key: key.key_id().into(),
            sig: object["signatures"]["o.example"][key.key_id()]
                .as_str()
                .unwrap()
                .into(),
        };
        verify_request(&parsed, target, "d.example", Some(&integral), &vk).unwrap();
        // What we sign for such a body is the Python form too (`10000000000.0`).
        let header =
            sign_request(&key, target, ("o.example", "d.example"), Some(&integral)).unwrap();
        let ours = XMatrix::parse(&header).unwrap();
        let object = request_object(
            target.0,
            target.1,
            "o.example",
            "d.example",
            Some(&integral),
        );
        signatures::verify_signature_with(
            object.as_object().unwrap(),
            &ours.sig,
            &vk,
            Numbers::Lenient,
        )
        .unwrap();
        assert!(signatures::verify_signature(object.as_object().unwrap(), &ours.sig, &vk).is_err());
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let key = SigningKeyPair::from_seed(&[3; 32], "k1");
        let body = json!({"a": 1});
        let header = sign_request(
            &key,
            ("PUT", "/_matrix/federation/v1/send/1?x=y"),
            ("origin.example", "dest.example:8448"),
            Some(&body),
        )
        .unwrap();
        let parsed = XMatrix::parse(&header).unwrap();
        assert_eq!(parsed.key, "ed25519:k1");
        assert_eq!(parsed.destination.as_deref(), Some("dest.example:8448"));
        let vk = key.verifying_key();
        let target = ("PUT", "/_matrix/federation/v1/send/1?x=y");
        verify_request(&parsed, target, "dest.example:8448", Some(&body), &vk).unwrap();
        // Another body, target, method, destination or no body: refused.
        let other = json!({"a": 2});
        assert!(verify_request(&parsed, target, "dest.example:8448", Some(&other), &vk).is_err());
        assert!(verify_request(&parsed, target, "dest.example:8448", None, &vk).is_err());
        assert!(verify_request(
            &parsed,
            ("GET", target.1),
            "dest.example:8448",
            Some(&body),
            &vk
        )
        .is_err());
        assert!(verify_request(
            &parsed,
            ("PUT", "/other"),
            "dest.example:8448",
            Some(&body),
            &vk
        )
        .is_err());
        assert!(verify_request(&parsed, target, "else.example", Some(&body), &vk).is_err());
        let other_key = SigningKeyPair::from_seed(&[4; 32], "k1").verifying_key();
        assert!(verify_request(
            &parsed,
            target,
            "dest.example:8448",
            Some(&body),
            &other_key
        )
        .is_err());
    }

    #[test]
    fn the_signature_matches_the_spec_python_over_the_request_object() {
        // The spec's example code signs {method, uri, origin, destination, content} with
        // the JSON signing algorithm: the same bytes as signing that object ourselves.
        let key = SigningKeyPair::from_seed(&[5; 32], "k");
        let header =
            sign_request(&key, ("GET", "/target"), ("o.example", "d.example"), None).unwrap();
        let mut object = json!({"method": "GET", "uri": "/target", "origin": "o.example", "destination": "d.example"});
        signatures::sign_json(&mut object, "o.example", &key).unwrap();
        let expected = object["signatures"]["o.example"]["ed25519:k"]
            .as_str()
            .unwrap();
        assert_eq!(XMatrix::parse(&header).unwrap().sig, expected);
    }
}
